/*
 * cbp_loops.h -- the element-wise inner loops of the kernels.
 *
 * Kept in plain C so the compiler sees simple restrict-qualified loops it can
 * vectorise, and so that on x86-64 Linux with GCC each one is compiled for
 * several instruction sets (AVX-512, AVX2+FMA, baseline) and picked at load
 * time: wheels stay portable (no -march=native) but run wide vectors where
 * the CPU has them.
 *
 * Reductions (dot products, sums of squares) are written as OpenMP SIMD
 * reductions: that grants the compiler leave to keep vector partial sums for
 * those loops only (no -ffast-math anywhere).  Their summation order depends
 * on the vector width of the CPU the code runs on, never on the number of
 * threads, so results stay bitwise reproducible for any thread count.
 */
#ifndef CBP_LOOPS_H
#define CBP_LOOPS_H

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include "cbp_rng.h"
#include "cbp_target.h"

/* Column (feature) indices of sparse rows: 32 bits, as scipy stores them;
 * a first layer of 2^31 inputs would not fit in memory anyway. */
typedef int32_t cbp_idx;

#if defined(__GNUC__) || defined(__clang__)
#define CBP_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define CBP_SIMD_SUM(...) CBP_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define CBP_SIMD_SUM(...)
#endif

/* Helpers that must be inlined into their (cloned) callers, so they run
 * with the caller's vector width instead of as baseline-ISA calls. */
#if defined(__GNUC__) || defined(__clang__)
#define CBP_INLINE static inline __attribute__((always_inline))
#else
#define CBP_INLINE static inline
#endif

#if defined(_MSC_VER)
#define CBP_RESTRICT __restrict
#else
#define CBP_RESTRICT restrict
#endif

/* A hint to bring up to CBP_PREFETCH_MAX bytes from p into cache: online
 * training visits rows in shuffled order, so without it every sample
 * starts with a cache miss on its input row.  On x86-64 the instruction is
 * written as volatile asm: GCC 12 deleted __builtin_prefetch calls inlined
 * into the epoch loop, judging them free of side effects. */
#define CBP_PREFETCH_MAX 4096
static inline void cbp_prefetch(const void *p, ptrdiff_t bytes)
{
    const char *c = (const char *)p;
    if (bytes > CBP_PREFETCH_MAX) bytes = CBP_PREFETCH_MAX;
    for (ptrdiff_t o = 0; o < bytes; o += 64) {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
        __asm__ __volatile__("prefetcht0 %0" : : "m"(*(c + o)));
#elif defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(c + o, 0, 3);
#else
        (void)c;
#endif
    }
}

/* Ask for the cache lines of p[0:bytes) in the state that allows writing,
 * all at once, before a loop writes them.  A mini-batch step writes
 * weights that every thread has just read in the forward pass, so each
 * store waits for the other core's copy to be invalidated.  In a
 * 784-512-256-10 fit on two threads, rewriting each thread's half of the
 * weights took as long as rewriting all of them on one thread (moments,
 * which only the step touches, scaled 2.1x), and the separate step took
 * 20-37 ms a fit against 25-27 on one thread; with the lines claimed
 * first, 16.6-17.8 ms (Intel Xeon VM).  PREFETCHW only where CPUID
 * reports it; a no-op on other x86 and under MSVC. */
#if (defined(__GNUC__) || defined(__clang__)) &&                               \
    (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
/* 1 when the CPU has PREFETCHW (CPUID 0x80000001, ECX bit 8). */
static int cbp_has_prefetchw(void)
{
    static int known = -1;
    if (known < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0;
        known = __get_cpuid(0x80000001u, &a, &b, &c, &d) && ((c >> 8) & 1u);
    }
    return known;
}
#else
static int cbp_has_prefetchw(void) { return 0; }
#endif

static inline void cbp_claim(void *p, ptrdiff_t bytes)
{
    char *c = (char *)p;
#if (defined(__GNUC__) || defined(__clang__)) &&                               \
    (defined(__x86_64__) || defined(__i386__))
    if (!cbp_has_prefetchw()) return;
    for (ptrdiff_t o = 0; o < bytes; o += 64)
        __asm__ __volatile__("prefetchw %0" : : "m"(*(c + o)));
#elif defined(__GNUC__) || defined(__clang__)
    for (ptrdiff_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 1, 3);
#else
    (void)c;
    (void)bytes;
#endif
}

/* sign(x) as -1, 0 or 1 of type T, branch-free. */
#define CBP_SIGN(T, x) ((T)(((x) > (T)0) - ((x) < (T)0)))

#if defined(__GNUC__) || defined(__clang__)
typedef double cbp_vd8 __attribute__((vector_size(64)));
typedef double cbp_vd8u __attribute__((vector_size(64), aligned(8)));
typedef float cbp_vf8u __attribute__((vector_size(32), aligned(4)));
/* x[0..8) as 8 doubles. */
#define CBP_LOAD8D(T, p)                                                       \
    (sizeof(T) == 8 ? (cbp_vd8) * (const cbp_vd8u *)(const void *)(p)          \
                    : __builtin_convertvector(                                 \
                          *(const cbp_vf8u *)(const void *)(p), cbp_vd8))
#define CBP_SUMSQ_BODY(T, n, x)                                                \
    cbp_vd8 q0 = {0}, q1 = {0}, q2 = {0}, q3 = {0};                            \
    ptrdiff_t j = 0;                                                           \
    for (; j + 32 <= (n); j += 32) {                                           \
        cbp_vd8 v0 = CBP_LOAD8D(T, (x) + j), v1 = CBP_LOAD8D(T, (x) + j + 8);  \
        cbp_vd8 v2 = CBP_LOAD8D(T, (x) + j + 16);                              \
        cbp_vd8 v3 = CBP_LOAD8D(T, (x) + j + 24);                              \
        q0 += v0 * v0;                                                         \
        q1 += v1 * v1;                                                         \
        q2 += v2 * v2;                                                         \
        q3 += v3 * v3;                                                         \
    }                                                                          \
    q0 = (q0 + q1) + (q2 + q3);                                                \
    double s = 0.0;                                                            \
    for (int k = 0; k < 8; k++) s += q0[k];                                    \
    for (; j < (n); j++) s += (double)(x)[j] * (double)(x)[j];                 \
    return s;
#else
#define CBP_SUMSQ_BODY(T, n, x)                                                \
    double s = 0.0;                                                            \
    for (ptrdiff_t j = 0; j < (n); j++) s += (double)(x)[j] * (double)(x)[j];  \
    return s;
#endif

/* Elements per block of the one-sample layer steps: the block's penalty
 * is summed right before its update, while it sits in L1. */
#define CBP_PEN_BLOCK 512

/* The update loops below come in two copies: without the L1 term (the
 * common case, kept as lean as before L1 existed: the tiny online networks
 * are bound by these loops) and with it. */
#define CBP_SGD_LOOP(T, N, GEXPR)                                              \
    for (ptrdiff_t j = 0; j < (N); j++) {                                      \
        T g = GEXPR;                                                           \
        T u = mom * v[j] - lr * g;                                             \
        v[j] = u;                                                              \
        w[j] += cu * u + (mn * u - cg * g);                                    \
    }

#define CBP_ADAM_LOOP(T, N, SQRT, GEXPR)                                       \
    for (ptrdiff_t j = 0; j < (N); j++) {                                      \
        T g = GEXPR;                                                           \
        T mj = b1 * m[j] + c1 * g;                                             \
        T vj = b2 * v[j] + c2 * (g * g);                                       \
        m[j] = mj;                                                             \
        v[j] = vj;                                                             \
        w[j] += (-lr_t * mj) / (SQRT(vj) + eps);                               \
    }

/* cbp_adam_ssq's loop: the chunks' gradient sum is XEXPR, which SAVE
 * stores back (or not); q gets sum w^2 before the step. */
#define CBP_ADAM_SSQ_LOOP(T, N, SQRT, XEXPR, SAVE)                             \
    CBP_SIMD_SUM(q)                                                            \
    for (ptrdiff_t j = 0; j < (N); j++) {                                      \
        const T wj = w[j], xs = XEXPR;                                         \
        q += (double)wj * (double)wj;                                          \
        SAVE                                                                   \
        T g = (a * xs + alpha * wj) * isw;                                     \
        T mj = b1 * m[j] + c1 * g;                                             \
        T vj = b2 * v[j] + c2 * (g * g);                                       \
        m[j] = mj;                                                             \
        v[j] = vj;                                                             \
        w[j] = wj + (-lr_t * mj) / (SQRT(vj) + eps);                           \
    }

#define CBP_DEFINE_LOOPS(T, S, SQRT)                                           \
                                                                               \
/* y += a * x */                                                               \
CBP_CLONES static void cbp_axpy_##S(ptrdiff_t n, T a, const T *CBP_RESTRICT x, \
                                    T *CBP_RESTRICT y)                         \
{                                                                              \
    for (ptrdiff_t j = 0; j < n; j++) y[j] += a * x[j];                        \
}                                                                              \
                                                                               \
/* z[r, :m] += b for each of nr rows ldz apart: one call for a block      */ \
/* rather than one a row (a dispatched call costs as much as a short row's */ \
/* adds).  relu: z = relu(z + b), a hidden layer's bias and relu in one    */ \
/* pass over its block, bit for bit the two passes.                        */ \
CBP_CLONES static void cbp_add_rows_##S(ptrdiff_t nr, ptrdiff_t m,             \
                                        const T *CBP_RESTRICT b,               \
                                        T *CBP_RESTRICT z, ptrdiff_t ldz,      \
                                        int relu)                              \
{                                                                              \
    if (!relu) {                                                               \
        for (ptrdiff_t r = 0; r < nr; r++)                                     \
            for (ptrdiff_t j = 0; j < m; j++) z[r * ldz + j] += b[j];          \
        return;                                                                \
    }                                                                          \
    for (ptrdiff_t r = 0; r < nr; r++)                                         \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            const T v = z[r * ldz + j] + b[j];                                 \
            z[r * ldz + j] = v > (T)0 ? v : (T)0;                              \
        }                                                                      \
}                                                                              \
                                                                               \
/* g (+)= the sum of nr rows of d (ldd apart), added in row order. */          \
CBP_CLONES static void cbp_sum_rows_##S(ptrdiff_t nr, ptrdiff_t m,             \
                                        const T *CBP_RESTRICT d, ptrdiff_t ldd,\
                                        T *CBP_RESTRICT g, int accumulate)     \
{                                                                              \
    if (!accumulate)                                                           \
        for (ptrdiff_t j = 0; j < m; j++) g[j] = 0;                            \
    for (ptrdiff_t r = 0; r < nr; r++)                                         \
        for (ptrdiff_t j = 0; j < m; j++) g[j] += d[r * ldd + j];              \
}                                                                              \
                                                                               \
/* x . y */                                                                    \
CBP_INLINE T cbp_dot_inl_##S(ptrdiff_t n, const T *CBP_RESTRICT x,          \
                                const T *CBP_RESTRICT y)                       \
{                                                                              \
    T s = 0;                                                                   \
    CBP_SIMD_SUM(s)                                                            \
    for (ptrdiff_t j = 0; j < n; j++) s += x[j] * y[j];                        \
    return s;                                                                  \
}                                                                              \
                                                                               \
CBP_CLONES static T cbp_dot_##S(ptrdiff_t n, const T *CBP_RESTRICT x,          \
                                const T *CBP_RESTRICT y)                       \
{                                                                              \
    return cbp_dot_inl_##S(n, x, y);                                           \
}                                                                              \
                                                                               \
/* sum of x^2, accumulated in double (CBP_SUMSQ_BODY: four independent   */  \
/* vector partial sums where the compiler has vector types, so the         */  \
/* reduction is not bound by the latency of one add chain).                */  \
CBP_INLINE double cbp_sumsq_inl_##S(ptrdiff_t n, const T *CBP_RESTRICT x)   \
{                                                                              \
    CBP_SUMSQ_BODY(T, n, x)                                                    \
}                                                                              \
                                                                               \
CBP_CLONES static double cbp_sumsq_##S(ptrdiff_t n, const T *CBP_RESTRICT x)   \
{                                                                              \
    return cbp_sumsq_inl_##S(n, x);                                            \
}                                                                              \
                                                                               \
/* The weight penalty 0.5 alpha sum w^2 + l1 sum |w|, in double. */            \
CBP_INLINE double cbp_penalty_inl_##S(ptrdiff_t n, const T *CBP_RESTRICT w, \
                                         double alpha, double l1)             \
{                                                                              \
    double q = 0.0, b = 0.0;                                                   \
    if (l1 == 0.0) return 0.5 * alpha * cbp_sumsq_inl_##S(n, w);               \
    CBP_SIMD_SUM(q, b)                                                         \
    for (ptrdiff_t j = 0; j < n; j++) {                                        \
        q += (double)w[j] * (double)w[j];                                      \
        b += fabs((double)w[j]);                                               \
    }                                                                          \
    return 0.5 * alpha * q + l1 * b;                                           \
}                                                                              \
                                                                               \
CBP_CLONES static double cbp_penalty_##S(ptrdiff_t n, const T *CBP_RESTRICT w, \
                                         double alpha, double l1)             \
{                                                                              \
    return cbp_penalty_inl_##S(n, w, alpha, l1);                               \
}                                                                              \
                                                                               \
/* sum_j (c x_j + alpha w_j + l1 sign(w_j))^2 in double: the squared norm */   \
/* of a gradient block before normalisation, for clipping.                 */  \
CBP_CLONES static double cbp_gradsq_##S(ptrdiff_t n, T c,                      \
                                        const T *CBP_RESTRICT x,               \
                                        const T *CBP_RESTRICT w, T alpha, T l1) \
{                                                                              \
    double s = 0.0;                                                            \
    CBP_SIMD_SUM(s)                                                            \
    for (ptrdiff_t j = 0; j < n; j++) {                                        \
        T g = c * x[j] + alpha * w[j] + l1 * CBP_SIGN(T, w[j]);                \
        s += (double)g * (double)g;                                            \
    }                                                                          \
    return s;                                                                  \
}                                                                              \
                                                                               \
/* The same for the rank-1 gradient a d^T + alpha W + l1 sign(W) of one    */  \
/* sample's (n x m) layer.                                                  */ \
CBP_CLONES static double cbp_outer_gradsq_##S(ptrdiff_t n, ptrdiff_t m,        \
                                              const T *a, const T *d,          \
                                              const T *W, T alpha, T l1)       \
{                                                                              \
    double s = 0.0;                                                            \
    for (ptrdiff_t i = 0; i < n; i++) s += cbp_gradsq_##S(m, a[i], d,          \
                                                          W + i * m, alpha, l1);\
    return s;                                                                  \
}                                                                              \
                                                                               \
/* The unit-weight, L1-free SGD step (every online step) with gradient   */  \
/* a x + alpha w; returns the sum of w^2 before it (the penalty), read in */  \
/* the same pass.  The step t = -lr g is formed as (-lr a) x + (-lr alpha) */ \
/* w, and both momentum rules share one body, w += k u + c t with (k, c) */   \
/* = (mom, 1) for Nesterov and (1, 0) otherwise (0 t is exact): six vector */ \
/* operations per weight instead of nine, in loops that bound the tiny     */ \
/* online networks by the floating-point pipes.                            */ \
CBP_INLINE double cbp_sgd_ssq_inl_##S(ptrdiff_t n, T *CBP_RESTRICT w,          \
                                      T *CBP_RESTRICT v, T a,                  \
                                      const T *CBP_RESTRICT x, T alpha,        \
                                      T lr, T mom, int nesterov)               \
{                                                                              \
    const T s_ = -lr * a, b_ = -lr * alpha;                                    \
    const T k_ = nesterov ? mom : (T)1, c_ = nesterov ? (T)1 : (T)0;           \
    double q = 0.0;                                                            \
    CBP_SIMD_SUM(q)                                                            \
    for (ptrdiff_t j = 0; j < n; j++) {                                        \
        const T wj = w[j];                                                     \
        q += (double)wj * (double)wj;                                          \
        T t = s_ * x[j] + b_ * wj;                                             \
        T u = mom * v[j] + t;                                                  \
        v[j] = u;                                                              \
        w[j] = k_ * u + (c_ * t + wj);                                         \
    }                                                                          \
    return q;                                                                  \
}                                                                              \
                                                                               \
/* SGD with (Nesterov) momentum on n parameters whose gradient is          */  \
/* g = (a x + alpha w + l1 sign(w)) / sw, in scikit-learn's order of       */  \
/* operations.                                                              */ \
CBP_INLINE void cbp_sgd_inl_##S(ptrdiff_t n, T *CBP_RESTRICT w,             \
                                   T *CBP_RESTRICT v, T a,                     \
                                   const T *CBP_RESTRICT x, T alpha, T l1,     \
                                   T sw, T lr, T mom, int nesterov)            \
{                                                                              \
    /* nesterov: w += mom u - lr g; plain: w += u (branch-free, exact). */     \
    const T mn = nesterov ? mom : (T)0, cg = nesterov ? lr : (T)0;             \
    const T cu = nesterov ? (T)0 : (T)1;                                       \
    if (l1 != (T)0) {                                                          \
        CBP_SGD_LOOP(T, n, (a * x[j] + alpha * w[j] + l1 * CBP_SIGN(T, w[j])) / sw)\
    } else if (sw == (T)1) {                                                   \
        (void)cbp_sgd_ssq_inl_##S(n, w, v, a, x, alpha, lr, mom, nesterov);    \
    } else {                                                                   \
        CBP_SGD_LOOP(T, n, (a * x[j] + alpha * w[j]) / sw)                     \
    }                                                                          \
}                                                                              \
                                                                               \
/* cbp_sgd_inl that also returns the weight penalty before the step (read  */ \
/* in the same pass when there is no L1 and the sample weight is 1).       */  \
CBP_INLINE double cbp_sgd_pen_inl_##S(ptrdiff_t n, T *CBP_RESTRICT w,          \
                                      T *CBP_RESTRICT v, T a,                  \
                                      const T *CBP_RESTRICT x, T alpha, T l1,  \
                                      T sw, T lr, T mom, int nesterov)         \
{                                                                              \
    if (l1 == (T)0 && sw == (T)1)                                              \
        return 0.5 * alpha * cbp_sgd_ssq_inl_##S(n, w, v, a, x, alpha, lr, mom,\
                                                 nesterov);                    \
    const double pen = cbp_penalty_inl_##S(n, w, alpha, l1);                   \
    cbp_sgd_inl_##S(n, w, v, a, x, alpha, l1, sw, lr, mom, nesterov);          \
    return pen;                                                                \
}                                                                              \
                                                                               \
CBP_CLONES static double cbp_sgd_ssq_##S(ptrdiff_t n, T *CBP_RESTRICT w,       \
                                         T *CBP_RESTRICT v, T a,               \
                                         const T *CBP_RESTRICT x, T alpha,     \
                                         T lr, T mom, int nesterov)            \
{                                                                              \
    return cbp_sgd_ssq_inl_##S(n, w, v, a, x, alpha, lr, mom, nesterov);       \
}                                                                              \
                                                                               \
CBP_CLONES static void cbp_sgd_##S(ptrdiff_t n, T *CBP_RESTRICT w,             \
                                   T *CBP_RESTRICT v, T a,                     \
                                   const T *CBP_RESTRICT x, T alpha, T l1,     \
                                   T sw, T lr, T mom, int nesterov)            \
{                                                                              \
    cbp_sgd_inl_##S(n, w, v, a, x, alpha, l1, sw, lr, mom, nesterov);          \
}                                                                              \
                                                                               \
/* Adam on n parameters with g = (a x + alpha w + l1 sign(w)) / sw and    */  \
/* the bias-corrected rate lr_t.                                            */ \
CBP_INLINE void cbp_adam_inl_##S(ptrdiff_t n, T *CBP_RESTRICT w,            \
                                    T *CBP_RESTRICT m, T *CBP_RESTRICT v, T a, \
                                    const T *CBP_RESTRICT x, T alpha, T l1,    \
                                    T sw, T lr_t, T b1, T b2, T eps)           \
{                                                                              \
    /* One division a batch, not one a parameter: the loop is bound by   */  \
    /* the divider and the square root (1.4x faster, float64, 7510 params).*/ \
    const T c1 = (T)1 - b1, c2 = (T)1 - b2, isw = (T)1 / sw;                   \
    if (l1 != (T)0) {                                                          \
        CBP_ADAM_LOOP(T, n, SQRT,                                              \
                      (a * x[j] + alpha * w[j] + l1 * CBP_SIGN(T, w[j])) * isw)\
    } else {                                                                   \
        CBP_ADAM_LOOP(T, n, SQRT, (a * x[j] + alpha * w[j]) * isw)             \
    }                                                                          \
}                                                                              \
                                                                               \
CBP_CLONES static void cbp_adam_##S(ptrdiff_t n, T *CBP_RESTRICT w,            \
                                    T *CBP_RESTRICT m, T *CBP_RESTRICT v, T a, \
                                    const T *CBP_RESTRICT x, T alpha, T l1,    \
                                    T sw, T lr_t, T b1, T b2, T eps)           \
{                                                                              \
    cbp_adam_inl_##S(n, w, m, v, a, x, alpha, l1, sw, lr_t, b1, b2, eps);      \
}                                                                              \
                                                                               \
/* Adam without L1 that also returns sum w^2 before the step, read in the  */ \
/* same pass (as cbp_sgd_ssq does for SGD).  x2 (or NULL): a second row    */ \
/* chunk's gradient, added into x first, so x ends holding the sum just as */ \
/* a separate pass adding the chunks leaves it: one pass over the block    */ \
/* instead of three (sum the chunks, the penalty, the step).               */ \
CBP_CLONES static double cbp_adam_ssq_##S(ptrdiff_t n, T *CBP_RESTRICT w,       \
                                          T *CBP_RESTRICT m, T *CBP_RESTRICT v, \
                                          T a, T *CBP_RESTRICT x,              \
                                          const T *CBP_RESTRICT x2, T alpha,   \
                                          T sw, T lr_t, T b1, T b2, T eps)     \
{                                                                              \
    const T c1 = (T)1 - b1, c2 = (T)1 - b2, isw = (T)1 / sw;                   \
    double q = 0.0;                                                            \
    if (x2 != NULL) {                                                          \
        CBP_ADAM_SSQ_LOOP(T, n, SQRT, x[j] + x2[j], x[j] = xs;)                \
    } else {                                                                   \
        CBP_ADAM_SSQ_LOOP(T, n, SQRT, x[j], (void)0;)                          \
    }                                                                          \
    return q;                                                                  \
}                                                                              \
                                                                               \
/* Branch-free compaction of the non-zeros of x[i0:n] after the c already */  \
/* found: indices and values; returns the new count.                       */  \
CBP_INLINE ptrdiff_t cbp_compact_from_##S(ptrdiff_t i0, ptrdiff_t n,           \
                                          const T *CBP_RESTRICT x,             \
                                          cbp_idx *CBP_RESTRICT idx,         \
                                          T *CBP_RESTRICT val, ptrdiff_t c)    \
{                                                                              \
    for (ptrdiff_t i = i0; i < n; i++) {                                       \
        idx[c] = (cbp_idx)i;                                                   \
        val[c] = x[i];                                                         \
        c += (x[i] != (T)0);                                                   \
    }                                                                          \
    return c;                                                                  \
}                                                                              \
                                                                               \
/* The portable compaction; cbp_compact_##S (below) picks AVX-512 when it  */  \
/* can.                                                                     */ \
CBP_CLONES static ptrdiff_t cbp_compact_plain_##S(ptrdiff_t n,                  \
                                                  const T *CBP_RESTRICT x,      \
                                                  cbp_idx *CBP_RESTRICT idx,  \
                                                  T *CBP_RESTRICT val)          \
{                                                                              \
    return cbp_compact_from_##S(0, n, x, idx, val, 0);                         \
}                                                                              \
                                                                               \
/* z = b + sum_{i : a_i != 0} a_i W[i, :]  (one sample, zeros skipped).    */  \
CBP_CLONES static void cbp_gemv_skip_##S(ptrdiff_t n, const T *a, const T *W,  \
                                         ptrdiff_t m, const T *b,              \
                                         T *CBP_RESTRICT z)                    \
{                                                                              \
    if (m == 1) {                                                              \
        z[0] = b[0] + cbp_dot_inl_##S(n, a, W);                                \
        return;                                                                \
    }                                                                          \
    for (ptrdiff_t j = 0; j < m; j++) z[j] = b[j];                             \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        const T ai = a[i];                                                     \
        if (ai == (T)0) continue;                                              \
        const T *CBP_RESTRICT w = W + i * m;                                   \
        for (ptrdiff_t j = 0; j < m; j++) z[j] += ai * w[j];                   \
    }                                                                          \
}                                                                              \
                                                                               \
/* out[i] = W[i, :] . d */                                                     \
CBP_CLONES static void cbp_gemv_t_##S(ptrdiff_t n, ptrdiff_t m, const T *W,    \
                                      const T *d, T *CBP_RESTRICT out)         \
{                                                                              \
    if (m == 1) {                                                              \
        const T d0 = d[0];                                                     \
        for (ptrdiff_t i = 0; i < n; i++) out[i] = W[i] * d0;                  \
        return;                                                                \
    }                                                                          \
    for (ptrdiff_t i = 0; i < n; i++) out[i] = cbp_dot_inl_##S(m, W + i * m, d);\
}                                                                              \
                                                                               \
/* SGD step of a whole (n x m) layer for one sample: row i has gradient    */  \
/* (a_i d + alpha W[i] + l1 sign(W[i])) / sw.  Returns the penalty of W    */  \
/* before the step.  A layer with one output is one flat loop.             */  \
CBP_CLONES static double cbp_sgd_outer_##S(ptrdiff_t n, ptrdiff_t m,           \
                                           const T *a, const T *d, T *W, T *V, \
                                           T alpha, T l1, T sw, T lr, T mom,   \
                                           int nesterov)                       \
{                                                                              \
    /* The penalty is summed block by block just before the block's step, */  \
    /* so W is read from beyond L1 once, not twice.                        */  \
    double ssq = 0.0;                                                          \
    if (m == 1) {                                                              \
        for (ptrdiff_t k0 = 0; k0 < n; k0 += CBP_PEN_BLOCK) {                  \
            const ptrdiff_t nb = n - k0 < CBP_PEN_BLOCK ? n - k0 : CBP_PEN_BLOCK;\
            ssq += cbp_sgd_pen_inl_##S(nb, W + k0, V + k0, d[0], a + k0, alpha,\
                                       l1, sw, lr, mom, nesterov);             \
        }                                                                      \
        return ssq;                                                            \
    }                                                                          \
    for (ptrdiff_t i = 0; i < n; i++)                                          \
        ssq += cbp_sgd_pen_inl_##S(m, W + i * m, V + i * m, a[i], d, alpha, l1,\
                                   sw, lr, mom, nesterov);                     \
    return ssq;                                                                \
}                                                                              \
                                                                               \
/* Adam step of a whole (n x m) layer for one sample (see cbp_sgd_outer).  */  \
CBP_CLONES static double cbp_adam_outer_##S(ptrdiff_t n, ptrdiff_t m,          \
                                            const T *a, const T *d, T *W,      \
                                            T *M1, T *M2, T alpha, T l1, T sw, \
                                            T lr_t, T b1, T b2, T eps)         \
{                                                                              \
    double ssq = 0.0;                                                          \
    if (m == 1) {                                                              \
        const T c1 = (T)1 - b1, c2 = (T)1 - b2, d0 = d[0], isw = (T)1 / sw;    \
        for (ptrdiff_t k0 = 0; k0 < n; k0 += CBP_PEN_BLOCK) {                  \
            const ptrdiff_t nb = n - k0 < CBP_PEN_BLOCK ? n - k0 : CBP_PEN_BLOCK;\
            T *CBP_RESTRICT w = W + k0;                                        \
            T *CBP_RESTRICT m = M1 + k0;                                       \
            T *CBP_RESTRICT v = M2 + k0;                                       \
            const T *CBP_RESTRICT ak = a + k0;                                 \
            ssq += cbp_penalty_inl_##S(nb, w, alpha, l1);                      \
            if (l1 != (T)0) {                                                  \
                CBP_ADAM_LOOP(T, nb, SQRT, (ak[j] * d0 + alpha * w[j] +        \
                                            l1 * CBP_SIGN(T, w[j])) * isw)     \
            } else {                                                           \
                CBP_ADAM_LOOP(T, nb, SQRT, (ak[j] * d0 + alpha * w[j]) * isw)  \
            }                                                                  \
        }                                                                      \
        return ssq;                                                            \
    }                                                                          \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        ssq += cbp_penalty_inl_##S(m, W + i * m, alpha, l1);                   \
        cbp_adam_inl_##S(m, W + i * m, M1 + i * m, M2 + i * m, a[i], d, alpha, \
                         l1, sw, lr_t, b1, b2, eps);                           \
    }                                                                          \
    return ssq;                                                                \
}                                                                              \
                                                                               \
/* Inverted dropout of one row of n units keyed by ``prefix`` (see        */  \
/* cbp_rng_prefix): unit j is kept when its draw is >= rate; kept units  */  \
/* are scaled by ``scale`` = 1 / (1 - rate) in ``a`` and their ``gate``  */  \
/* (which holds f'(z) on entry) is multiplied by the same factor.        */  \
CBP_CLONES static void cbp_dropout_row_##S(ptrdiff_t n, uint64_t prefix,       \
                                           double rate, T scale,               \
                                           T *CBP_RESTRICT a,                  \
                                           T *CBP_RESTRICT gate)               \
{                                                                              \
    for (ptrdiff_t j = 0; j < n; j++) {                                        \
        T s = cbp_rng_unit(prefix, (uint64_t)j) >= rate ? scale : (T)0;        \
        a[j] *= s;                                                             \
        gate[j] *= s;                                                          \
    }                                                                          \
}                                                                              \
                                                                               \
/* Maxout of nr rows: a[r, j] = max_p z[r, j k + p] (first maximum). */       \
CBP_CLONES static void cbp_maxout_forward_##S(ptrdiff_t nr, ptrdiff_t u,        \
                                              ptrdiff_t k, const T *z,         \
                                              ptrdiff_t ldz, T *a, ptrdiff_t lda)\
{                                                                              \
    for (ptrdiff_t r = 0; r < nr; r++) {                                       \
        const T *zr = z + r * ldz;                                             \
        T *ar = a + r * lda;                                                   \
        for (ptrdiff_t j = 0; j < u; j++) {                                    \
            T m = zr[j * k];                                                   \
            for (ptrdiff_t p = 1; p < k; p++)                                  \
                m = zr[j * k + p] > m ? zr[j * k + p] : m;                     \
            ar[j] = m;                                                         \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \
/* Maxout backward: the delta g[r, j] of each unit goes to the piece that  */  \
/* won the forward pass, dz of the other pieces is zero.                    */ \
CBP_CLONES static void cbp_maxout_backward_##S(ptrdiff_t nr, ptrdiff_t u,       \
                                               ptrdiff_t k, const T *z,        \
                                               ptrdiff_t ldz, const T *g,      \
                                               ptrdiff_t ldg, T *dz)           \
{                                                                              \
    for (ptrdiff_t r = 0; r < nr; r++) {                                       \
        const T *zr = z + r * ldz;                                             \
        const T *gr = g + r * ldg;                                             \
        T *dr = dz + r * ldz;                                                  \
        for (ptrdiff_t j = 0; j < u; j++) {                                    \
            ptrdiff_t w = 0;                                                   \
            for (ptrdiff_t p = 1; p < k; p++)                                  \
                if (zr[j * k + p] > zr[j * k + w]) w = p;                      \
            for (ptrdiff_t p = 0; p < k; p++) dr[j * k + p] = (T)0;            \
            dr[j * k + w] = gr[j];                                             \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \
/* Lazy online SGD (no sample weights, so sw = 1).  A row of W0 whose     */  \
/* input is zero only decays: k such steps map its (w, v) to M^k (w, v).   */  \
/* Row i is valid at time last[i].  The L2 mass sum_s ||w(s)||^2 of its    */  \
/* skipped times is Q0 ||w||^2 + 2 Q1 w.v + Q2 ||v||^2 of the state at     */  \
/* last[i], with Q the prefix sums of M^k's first row (cbp_lazy_forward   */  \
/* and cbp_lazy_flush fold it into the pass that decays the row).          */  \
/*                                                                          */ \
/* After the backward pass of sample t: the data step of the rows with a   */  \
/* non-zero input; last = t + 1.                                            */ \
CBP_CLONES static void cbp_lazy_step_##S(ptrdiff_t n, const cbp_idx *rows,    \
                                         const T *vals, ptrdiff_t *last,       \
                                         ptrdiff_t t, T *W, T *V, ptrdiff_t m, \
                                         const T *d, T alpha, T lr, T mom,     \
                                         int nesterov)                         \
{                                                                              \
    const T mn = nesterov ? mom : (T)0, cg = nesterov ? lr : (T)0;             \
    const T cu = nesterov ? (T)0 : (T)1;                                       \
    for (ptrdiff_t p = 0; p < n; p++) {                                        \
        const ptrdiff_t i = rows[p];                                           \
        const T x = vals[p];                                                   \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT v = V + i * m;                                         \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            T g = x * d[j] + alpha * w[j];                                     \
            T u = mom * v[j] - lr * g;                                         \
            v[j] = u;                                                          \
            w[j] += cu * u + (mn * u - cg * g);                                \
        }                                                                      \
        last[i] = t + 1;                                                       \
    }                                                                          \
}                                                                              \
                                                                               \
/* End of an epoch of n_rows rows: bring every row to time t (no forward); */  \
/* returns the L2 mass of the skipped times.                                */ \
CBP_CLONES static double cbp_lazy_flush_##S(ptrdiff_t n_rows, ptrdiff_t *last, \
                                            ptrdiff_t t, const double *powers, \
                                            const double *prefix, T *W, T *V,  \
                                            ptrdiff_t m)                       \
{                                                                              \
    double l2 = 0.0;                                                           \
    for (ptrdiff_t i = 0; i < n_rows; i++) {                                   \
        const ptrdiff_t k = t - last[i];                                       \
        if (k <= 0) continue;                                                  \
        const double *Q = prefix + 3 * k, *P = powers + 4 * k;                 \
        const double q0 = Q[0], q1 = 2.0 * Q[1], q2 = Q[2];                    \
        const T a = (T)P[0], b = (T)P[1], c = (T)P[2], e = (T)P[3];            \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT v = V + i * m;                                         \
        double s = 0.0;                                                        \
        CBP_SIMD_SUM(s)                                                        \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            const double wj = (double)w[j], vj = (double)v[j];                 \
            s += (q0 * wj + q1 * vj) * wj + q2 * vj * vj;                      \
            w[j] = a * w[j] + b * v[j];                                        \
            v[j] = c * (T)wj + e * v[j];                                       \
        }                                                                      \
        l2 += s;                                                               \
        last[i] = t;                                                           \
    }                                                                          \
    return l2;                                                                 \
}

CBP_DEFINE_LOOPS(double, d, sqrt)
CBP_DEFINE_LOOPS(float, f, sqrtf)

#undef CBP_DEFINE_LOOPS

/* 1 when no value of x[0..n) is NaN or infinite.  Such values are the ones
 * whose magnitude bits reach the infinity pattern, so the check is an
 * unsigned maximum over those bits: integer arithmetic, which the compiler
 * vectorises without leave to reorder floating-point sums. */
#define CBP_DEFINE_FINITE(T, S, U, MAGNITUDE, INF_BITS)                         \
CBP_CLONES static int cbp_all_finite_##S(ptrdiff_t n, const T *CBP_RESTRICT x)  \
{                                                                              \
    U top = 0;                                                                 \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        U b;                                                                   \
        memcpy(&b, x + i, sizeof b);                                           \
        b &= (U)(MAGNITUDE);                                                   \
        top = b > top ? b : top;                                               \
    }                                                                          \
    return top < (U)(INF_BITS);                                                \
}

CBP_DEFINE_FINITE(double, d, uint64_t, 0x7fffffffffffffffULL, 0x7ff0000000000000ULL)
CBP_DEFINE_FINITE(float, f, uint32_t, 0x7fffffffUL, 0x7f800000UL)

#undef CBP_DEFINE_FINITE

/* ------------------------------------------------------------------------
 * Compaction with AVX-512 compress (x86-64, GCC or Clang): a zero-heavy
 * dense X becomes CSR once per fit, and the scalar loop above spends about
 * four cycles per element on it -- more than the first epoch's sort.  The
 * register form of vcompress is used and stored whole (the memory form is
 * microcoded on AMD Zen 4); every store stays below index n, since a block
 * starting at i writes from c <= i.  Same output as cbp_compact_plain_*.
 * ------------------------------------------------------------------------ */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && \
    !defined(CBP_NO_CLONES)
#include <immintrin.h>
#define CBP_AVX512_COMPACT 1

#define CBP_AVX512_TARGET __attribute__((target("avx512f,popcnt")))

CBP_AVX512_TARGET static ptrdiff_t cbp_compact_avx512_f(ptrdiff_t n, const float *x,
                                                        cbp_idx *idx, float *val)
{
    ptrdiff_t c = 0, i = 0;
    const __m512 zero = _mm512_setzero_ps();
    const __m512i sixteen = _mm512_set1_epi32(16);
    __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        /* Unordered compare: NaN counts as non-zero, as in x != 0. */
        const __mmask16 k = _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
        if (k) {
            _mm512_storeu_ps(val + c, _mm512_maskz_compress_ps(k, v));
            _mm512_storeu_si512((void *)(idx + c), _mm512_maskz_compress_epi32(k, lanes));
            c += __builtin_popcount(k);
        }
        lanes = _mm512_add_epi32(lanes, sixteen);
    }
    return cbp_compact_from_f(i, n, x, idx, val, c);
}

CBP_AVX512_TARGET static ptrdiff_t cbp_compact_avx512_d(ptrdiff_t n, const double *x,
                                                        cbp_idx *idx, double *val)
{
    ptrdiff_t c = 0, i = 0;
    const __m512d zero = _mm512_setzero_pd();
    const __m256i eight = _mm256_set1_epi32(8);
    __m256i lanes = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    for (; i + 8 <= n; i += 8) {
        const __m512d v = _mm512_loadu_pd(x + i);
        const __mmask8 k = _mm512_cmp_pd_mask(v, zero, _CMP_NEQ_UQ);
        if (k) {
            /* Eight 32-bit lanes: the store stays within the 8 entries. */
            const __m512i packed = _mm512_maskz_compress_epi32(
                (__mmask16)k, _mm512_castsi256_si512(lanes));
            _mm512_storeu_pd(val + c, _mm512_maskz_compress_pd(k, v));
            _mm256_storeu_si256((__m256i *)(void *)(idx + c),
                                _mm512_castsi512_si256(packed));
            c += __builtin_popcount(k);
        }
        lanes = _mm256_add_epi32(lanes, eight);
    }
    return cbp_compact_from_d(i, n, x, idx, val, c);
}

/* 1 when the CPU and the OS run AVX-512F (GCC and Clang check both). */
static int cbp_has_avx512(void)
{
    static int known = -1;
    if (known < 0)
        known = __builtin_cpu_supports("avx512f") ? 1 : 0;
    return known;
}
#else
#define CBP_AVX512_COMPACT 0
static int cbp_has_avx512(void) { return 0; }
#endif

/* Non-zeros of x[0:n] in order: indices to idx, values to val (both of
 * room n); returns their number. */
static ptrdiff_t cbp_compact_f(ptrdiff_t n, const float *x, cbp_idx *idx, float *val)
{
#if CBP_AVX512_COMPACT
    if (cbp_has_avx512())
        return cbp_compact_avx512_f(n, x, idx, val);
#endif
    return cbp_compact_plain_f(n, x, idx, val);
}

static ptrdiff_t cbp_compact_d(ptrdiff_t n, const double *x, cbp_idx *idx,
                               double *val)
{
#if CBP_AVX512_COMPACT
    if (cbp_has_avx512())
        return cbp_compact_avx512_d(n, x, idx, val);
#endif
    return cbp_compact_plain_d(n, x, idx, val);
}

/* ------------------------------------------------------------------------
 * Sparse products of layer 0: only the non-zero inputs are read.
 *
 *   sprows:  z[r, :] = b + sum_p val[p] * W[idx[p], :]       (forward)
 *   spgrad:  G[i, :] (+)= sum_e fe[e].val * D[fe[e].row, :]   (X^T delta)
 *
 * spgrad's list holds a block's non-zeros sorted by feature (fptr[i] ..
 * fptr[i + 1] for feature i, rows in increasing order) as (row, value)
 * pairs: the counting sort that makes it writes one stream per feature,
 * and with the pair in one 8-byte record (float32) instead of two arrays
 * those streams fit in L1 (sorting MNIST batches of 200 rows took 35% less
 * time; sgd 784-100-10 fits 1.08-1.10x faster on one and two threads).
 *
 * Both accumulate a row of up to CBP_NV vectors of 64 bytes in registers across
 * the whole list of non-zeros, so the output row is written once and the
 * independent vector accumulators hide the FMA latency.  The last vector of
 * a row may be partial: it is loaded whole when that stays inside the
 * source buffer (``len`` readable elements; the extra lanes are never
 * stored), otherwise through a zero-padded copy.  Every output element is
 * summed over the list in list order, exactly as the scalar fallback does.
 * ------------------------------------------------------------------------ */
#define CBP_VBYTES 64

typedef struct { cbp_idx row; float val; } cbp_fent_f;
typedef struct { cbp_idx row; double val; } cbp_fent_d;

/* One row of sprows streamed through memory (the portable fallback):      */
/* zr = b + sum_p val[p] W[idx[p]], W's rows ldw apart.  The vector path   */
/* keeps the row in registers for any number of non-zeros: even with 2 to  */
/* 4 of them it beat streaming z by 4-5% (4-500-1 online, min of 18 runs). */
#define CBP_DEFINE_SPROW_STREAM(T, S)                                          \
CBP_INLINE void cbp_sprow_stream_##S(ptrdiff_t p0, ptrdiff_t p1,               \
                                     const cbp_idx *idx, const T *val,       \
                                     const T *W, ptrdiff_t m, ptrdiff_t ldw,   \
                                     const T *b, T *CBP_RESTRICT zr)           \
{                                                                              \
    for (ptrdiff_t j = 0; j < m; j++) zr[j] = (T)0;                            \
    for (ptrdiff_t p = p0; p < p1; p++) {                                      \
        const T a = val[p];                                                    \
        const T *CBP_RESTRICT wr = W + idx[p] * ldw;                           \
        for (ptrdiff_t j = 0; j < m; j++) zr[j] += a * wr[j];                  \
    }                                                                          \
    for (ptrdiff_t j = 0; j < m; j++) zr[j] = b[j] + zr[j];                    \
}
CBP_DEFINE_SPROW_STREAM(double, d)
CBP_DEFINE_SPROW_STREAM(float, f)
#undef CBP_DEFINE_SPROW_STREAM

#if defined(__GNUC__) || defined(__clang__)
/* Up to CBP_NV vectors of a row chunk are accumulated in registers: eight
 * independent FMA chains cover the FMA latency of CPUs with two 512-bit FMA
 * units, and a 784-512 layer takes 4 passes over its non-zeros instead of
 * 8.  Callers pass nv as a literal, so the loops below unroll into straight
 * code. */
#define CBP_NV 8
/* a[0..nv) += a * (nv vectors at src); then out = a[0..nv). */
#define CBP_VACC(S, nv, x, src)                                                \
    do {                                                                       \
        const cbp_v##S av_ = (cbp_v##S){0} + (x);                              \
        _Pragma("GCC unroll 8")                                                \
        for (int k_ = 0; k_ < (nv); k_++)                                      \
            a[k_] += av_ * cbp_vld_##S((src) + k_ * CBP_VL_##S);               \
    } while (0)
#define CBP_VOUT(S, nv, out)                                                   \
    do {                                                                       \
        _Pragma("GCC unroll 8")                                                \
        for (int k_ = 0; k_ < (nv); k_++)                                      \
            memcpy((out) + k_ * CBP_VL_##S, &a[k_], sizeof a[k_]);             \
    } while (0)
/* The pass function of nv vectors, for nv = CBP_NV .. 1. */
#define CBP_NV_SWITCH(nv, PASS, ...)                                           \
    switch (nv) {                                                              \
    case 8: PASS(8, __VA_ARGS__); break;                                       \
    case 7: PASS(7, __VA_ARGS__); break;                                       \
    case 6: PASS(6, __VA_ARGS__); break;                                       \
    case 5: PASS(5, __VA_ARGS__); break;                                       \
    case 4: PASS(4, __VA_ARGS__); break;                                       \
    case 3: PASS(3, __VA_ARGS__); break;                                       \
    case 2: PASS(2, __VA_ARGS__); break;                                       \
    default: PASS(1, __VA_ARGS__); break;                                      \
    }

#define CBP_DEFINE_SPARSE(T, S)                                                \
typedef T cbp_v##S __attribute__((vector_size(CBP_VBYTES)));                   \
enum { CBP_VL_##S = CBP_VBYTES / sizeof(T) };                                  \
                                                                               \
CBP_INLINE cbp_v##S cbp_vld_##S(const T *p)                                    \
{                                                                              \
    cbp_v##S v;                                                                \
    memcpy(&v, p, sizeof v);                                                   \
    return v;                                                                  \
}                                                                              \
                                                                               \
/* Pointer to nv whole vectors at src: src itself when ``ok``, otherwise   */  \
/* a zero-padded copy of its first w elements.                              */ \
CBP_INLINE const T *cbp_vsrc_##S(const T *src, int ok, ptrdiff_t w, T *pad)    \
{                                                                              \
    if (ok)                                                                    \
        return src;                                                            \
    memset(pad, 0, CBP_NV * CBP_VL_##S * sizeof(T));                           \
    memcpy(pad, src, (size_t)w * sizeof(T));                                   \
    return pad;                                                                \
}                                                                              \
                                                                               \
/* Columns j0.. of an m-wide row processed as one chunk of up to CBP_NV  */  \
/* vectors: sets its width *w and the last row *safe (rows ld apart, len   */  \
/* readable elements) whose whole vectors may be loaded in place; returns  */  \
/* the number of vectors.                                                   */ \
CBP_INLINE int cbp_chunk_##S(ptrdiff_t m, ptrdiff_t j0, ptrdiff_t len,         \
                             ptrdiff_t ld, ptrdiff_t *w, ptrdiff_t *safe)      \
{                                                                              \
    *w = m - j0 < CBP_NV * CBP_VL_##S ? m - j0 : CBP_NV * CBP_VL_##S;          \
    const int nv = (int)((*w + CBP_VL_##S - 1) / CBP_VL_##S);                  \
    const ptrdiff_t lim = len - j0 - nv * CBP_VL_##S;                          \
    *safe = lim < 0 ? -1 : lim / ld;                                           \
    return nv;                                                                 \
}                                                                              \
                                                                               \
CBP_INLINE void cbp_sprows_pass_##S(int nv, ptrdiff_t p0, ptrdiff_t p1,         \
                                    const cbp_idx *idx, const T *val,        \
                                    const T *W, ptrdiff_t ldw, ptrdiff_t j0,   \
                                    ptrdiff_t w, ptrdiff_t safe, const T *b,   \
                                    T *CBP_RESTRICT zr)                        \
{                                                                              \
    cbp_v##S a[CBP_NV] = {{0}};                                                \
    T pad[CBP_NV * CBP_VL_##S], out[CBP_NV * CBP_VL_##S];                      \
    for (ptrdiff_t p = p0; p < p1; p++) {                                      \
        const T *src = cbp_vsrc_##S(W + idx[p] * ldw + j0, idx[p] <= safe, w,  \
                                    pad);                                      \
        CBP_VACC(S, nv, val[p], src);                                          \
    }                                                                          \
    CBP_VOUT(S, nv, out);                                                      \
    for (ptrdiff_t j = 0; j < w; j++) zr[j0 + j] = b[j0 + j] + out[j];         \
}                                                                              \
                                                                               \
/* W has m columns, rows ldw apart, and wlen readable elements from W[0].  */  \
CBP_CLONES static void cbp_sprows_##S(ptrdiff_t nr, const ptrdiff_t *rs,       \
                                      const ptrdiff_t *re, const cbp_idx *idx,\
                                      const T *val, const T *W, ptrdiff_t m,   \
                                      ptrdiff_t ldw, ptrdiff_t wlen,           \
                                      const T *b, T *CBP_RESTRICT z,           \
                                      ptrdiff_t ldz)                           \
{                                                                              \
    for (ptrdiff_t r = 0; r < nr; r++) {                                       \
        T *CBP_RESTRICT zr = z + r * ldz;                                      \
        for (ptrdiff_t j0 = 0; j0 < m; j0 += CBP_NV * CBP_VL_##S) {            \
            ptrdiff_t w, safe;                                                 \
            int nv = cbp_chunk_##S(m, j0, wlen, ldw, &w, &safe);               \
            CBP_NV_SWITCH(nv, cbp_sprows_pass_##S, rs[r], re[r], idx, val, W,  \
                          ldw, j0, w, safe, b, zr)                             \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \
CBP_INLINE void cbp_spgrad_pass_##S(int nv, ptrdiff_t i0, ptrdiff_t i1,        \
                                    const ptrdiff_t *fptr,                     \
                                    const cbp_fent_##S *fe,                    \
                                    const T *D, ptrdiff_t ldd, ptrdiff_t j0,   \
                                    ptrdiff_t w, ptrdiff_t safe, ptrdiff_t m,  \
                                    T *CBP_RESTRICT G, int accumulate)         \
{                                                                              \
    for (ptrdiff_t i = i0; i < i1; i++) {                                      \
        cbp_v##S a[CBP_NV] = {{0}};                                            \
        T pad[CBP_NV * CBP_VL_##S], out[CBP_NV * CBP_VL_##S];                  \
        T *CBP_RESTRICT g = G + i * m + j0;                                    \
        if (accumulate) {                                                      \
            const T *src = cbp_vsrc_##S(g, 0, w, pad);                         \
            CBP_VACC(S, nv, (T)1, src);                                        \
        }                                                                      \
        for (ptrdiff_t e = fptr[i]; e < fptr[i + 1]; e++) {                    \
            const ptrdiff_t row = fe[e].row;                                   \
            const T *src = cbp_vsrc_##S(D + row * ldd + j0, row <= safe, w,    \
                                        pad);                                  \
            CBP_VACC(S, nv, fe[e].val, src);                                   \
        }                                                                      \
        CBP_VOUT(S, nv, out);                                                  \
        memcpy(g, out, (size_t)w * sizeof(T));                                 \
    }                                                                          \
}                                                                              \
                                                                               \
/* Rows i0:i1, columns jb:je of G (m columns); D has rows ldd apart and  */  \
/* dlen readable elements.                                                 */  \
CBP_CLONES static void cbp_spgrad_##S(ptrdiff_t i0, ptrdiff_t i1,              \
                                      ptrdiff_t jb, ptrdiff_t je,              \
                                      const ptrdiff_t *fptr,                   \
                                      const cbp_fent_##S *fe,                  \
                                      const T *D, ptrdiff_t m, ptrdiff_t ldd,  \
                                      ptrdiff_t dlen, T *CBP_RESTRICT G,       \
                                      int accumulate)                          \
{                                                                              \
    for (ptrdiff_t j0 = jb; j0 < je; j0 += CBP_NV * CBP_VL_##S) {              \
        ptrdiff_t w, safe;                                                     \
        int nv = cbp_chunk_##S(je, j0, dlen, ldd, &w, &safe);                  \
        CBP_NV_SWITCH(nv, cbp_spgrad_pass_##S, i0, i1, fptr, fe, D, ldd, j0,   \
                      w, safe, m, G, accumulate)                               \
    }                                                                          \
}
#else
/* Portable fallback (MSVC): the same sums in the same order. */
#define CBP_DEFINE_SPARSE(T, S)                                                \
static void cbp_sprows_##S(ptrdiff_t nr, const ptrdiff_t *rs,                  \
                           const ptrdiff_t *re, const cbp_idx *idx,          \
                           const T *val, const T *W, ptrdiff_t m,              \
                           ptrdiff_t ldw, ptrdiff_t wlen, const T *b,          \
                           T *CBP_RESTRICT z, ptrdiff_t ldz)                   \
{                                                                              \
    (void)wlen;                                                                \
    for (ptrdiff_t r = 0; r < nr; r++)                                         \
        cbp_sprow_stream_##S(rs[r], re[r], idx, val, W, m, ldw, b,             \
                             z + r * ldz);                                     \
}                                                                              \
                                                                               \
static void cbp_spgrad_##S(ptrdiff_t i0, ptrdiff_t i1, ptrdiff_t jb,           \
                           ptrdiff_t je, const ptrdiff_t *fptr,                \
                           const cbp_fent_##S *fe, const T *D,                 \
                           ptrdiff_t m, ptrdiff_t ldd, ptrdiff_t dlen,         \
                           T *CBP_RESTRICT G, int accumulate)                  \
{                                                                              \
    (void)dlen;                                                                \
    for (ptrdiff_t i = i0; i < i1; i++) {                                      \
        T *CBP_RESTRICT g = G + i * m;                                         \
        if (!accumulate)                                                       \
            for (ptrdiff_t j = jb; j < je; j++) g[j] = (T)0;                   \
        for (ptrdiff_t e = fptr[i]; e < fptr[i + 1]; e++) {                    \
            const T a = fe[e].val;                                             \
            const T *d = D + (ptrdiff_t)fe[e].row * ldd;                       \
            for (ptrdiff_t j = jb; j < je; j++) g[j] += a * d[j];              \
        }                                                                      \
    }                                                                          \
}
#endif

CBP_DEFINE_SPARSE(double, d)
CBP_DEFINE_SPARSE(float, f)

#undef CBP_DEFINE_SPARSE

/* ------------------------------------------------------------------------
 * Lazy online forward of layer 0 (see cbp_lazy_step): bring the rows with a
 * non-zero input up to time t and accumulate z = b + sum_p vals[p] W[rows[p]]
 * in the same pass.  Returns the L2 mass of the skipped times last[i] .. t-1
 * and sets *ssq = sum ||W_i(t)||^2 over those rows (their part of sample
 * t's penalty).  Both sums are kept in vector lanes across all the rows and
 * reduced once per call: a horizontal sum per row cost as much as the
 * row's arithmetic.
 * ------------------------------------------------------------------------ */

/* One element (scalar T or vector) of a deferred row: decay, z, sums. */
#define CBP_LAZY_DECAY(wj, vj, zj, L2, SS, wout, vout)                         \
    do {                                                                       \
        wout = a * (wj) + bb * (vj);                                           \
        vout = c * (wj) + e * (vj);                                            \
        zj += x * wout;                                                        \
        L2 += (q0 * (wj) + q1 * (vj)) * (wj) + q2 * (vj) * (vj);               \
        SS += wout * wout;                                                     \
    } while (0)

/* The whole-vector part of the loops below (GCC/Clang vector types);     */
/* without them mv is 0 and the scalar loops do every element.            */
#if defined(__GNUC__) || defined(__clang__)
#define CBP_LAZY_VECTORS(S)                                                    \
    const ptrdiff_t mv = m - m % CBP_VL_##S;                                   \
    cbp_v##S l2v = {0}, ssv = {0}, wv, vv, zv, wo, vo;
#define CBP_LAZY_VEC_READ(S)                                                   \
    for (; j < mv; j += CBP_VL_##S) {                                          \
        wv = cbp_vld_##S(w + j);                                               \
        zv = cbp_vld_##S(z + j) + x * wv;                                      \
        ssv += wv * wv;                                                        \
        memcpy(z + j, &zv, sizeof zv);                                         \
    }
#define CBP_LAZY_VEC_DECAY(S)                                                  \
    for (; j < mv; j += CBP_VL_##S) {                                          \
        wv = cbp_vld_##S(w + j);                                               \
        vv = cbp_vld_##S(v + j);                                               \
        zv = cbp_vld_##S(z + j);                                               \
        CBP_LAZY_DECAY(wv, vv, zv, l2v, ssv, wo, vo);                          \
        memcpy(w + j, &wo, sizeof wo);                                         \
        memcpy(v + j, &vo, sizeof vo);                                         \
        memcpy(z + j, &zv, sizeof zv);                                         \
    }
#define CBP_LAZY_VEC_SUM(S)                                                    \
    for (ptrdiff_t l = 0; l < CBP_VL_##S; l++) {                               \
        l2 += l2v[l];                                                          \
        ss += ssv[l];                                                          \
    }
#else
#define CBP_LAZY_VECTORS(S) const ptrdiff_t mv = 0;
#define CBP_LAZY_VEC_READ(S)
#define CBP_LAZY_VEC_DECAY(S)
#define CBP_LAZY_VEC_SUM(S)
#endif

#define CBP_DEFINE_LAZY_FORWARD(T, S)                                          \
CBP_CLONES static double cbp_lazy_forward_##S(ptrdiff_t n, const cbp_idx *rows,\
                                              const T *vals, ptrdiff_t *last,  \
                                              ptrdiff_t t, const double *powers,\
                                              const double *prefix, T *W, T *V,\
                                              ptrdiff_t m, const T *b,         \
                                              T *CBP_RESTRICT z, double *ssq)  \
{                                                                              \
    CBP_LAZY_VECTORS(S)                                                        \
    T l2 = 0, ss = 0, wt, vt;                                                  \
    (void)mv;                                                                  \
    for (ptrdiff_t j = 0; j < m; j++) z[j] = b[j];                             \
    for (ptrdiff_t p = 0; p < n; p++) {                                        \
        const ptrdiff_t i = rows[p], k = t - last[i];                          \
        const T x = vals[p];                                                   \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT v = V + i * m;                                         \
        ptrdiff_t j = 0;                                                       \
        if (k <= 0) {                                                          \
            CBP_LAZY_VEC_READ(S)                                               \
            for (; j < m; j++) {                                               \
                z[j] += x * w[j];                                              \
                ss += w[j] * w[j];                                             \
            }                                                                  \
            continue;                                                          \
        }                                                                      \
        const double *Q = prefix + 3 * k, *P = powers + 4 * k;                 \
        const T q0 = (T)Q[0], q1 = (T)(2.0 * Q[1]), q2 = (T)Q[2];              \
        const T a = (T)P[0], bb = (T)P[1], c = (T)P[2], e = (T)P[3];           \
        CBP_LAZY_VEC_DECAY(S)                                                  \
        for (; j < m; j++) {                                                   \
            CBP_LAZY_DECAY(w[j], v[j], z[j], l2, ss, wt, vt);                  \
            w[j] = wt;                                                         \
            v[j] = vt;                                                         \
        }                                                                      \
        last[i] = t;                                                           \
    }                                                                          \
    CBP_LAZY_VEC_SUM(S)                                                        \
    *ssq = (double)ss;                                                         \
    return (double)l2;                                                         \
}
CBP_DEFINE_LAZY_FORWARD(double, d)
CBP_DEFINE_LAZY_FORWARD(float, f)
#undef CBP_DEFINE_LAZY_FORWARD
#undef CBP_LAZY_VECTORS
#undef CBP_LAZY_VEC_READ
#undef CBP_LAZY_VEC_DECAY
#undef CBP_LAZY_VEC_SUM

#endif /* CBP_LOOPS_H */
