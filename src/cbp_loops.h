/*
 * cbp_loops.h -- the element-wise inner loops of the kernels.
 *
 * Kept in plain C so the compiler sees simple restrict-qualified loops it can
 * vectorise, and so that on x86-64 Linux with GCC each one is compiled for
 * several instruction sets (AVX-512, AVX2+FMA, baseline) and picked at load
 * time: wheels stay portable (no -march=native) but run wide vectors where
 * the CPU has them.
 *
 * Reductions (dot, sum of squares) use a fixed number of partial sums in a
 * fixed order, so a result never depends on the thread that computes it.
 */
#ifndef CBP_LOOPS_H
#define CBP_LOOPS_H

#include <stddef.h>
#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && (__GNUC__ >= 11) && !defined(CBP_NO_CLONES)
#define CBP_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CBP_CLONES
#endif

#if defined(_MSC_VER)
#define CBP_RESTRICT __restrict
#else
#define CBP_RESTRICT restrict
#endif

#define CBP_DEFINE_LOOPS(T, S, SQRT)                                           \
                                                                               \
/* y += a * x */                                                               \
CBP_CLONES static void cbp_axpy_##S(ptrdiff_t n, T a, const T *CBP_RESTRICT x, \
                                    T *CBP_RESTRICT y)                         \
{                                                                              \
    for (ptrdiff_t j = 0; j < n; j++) y[j] += a * x[j];                        \
}                                                                              \
                                                                               \
/* x . y with eight interleaved partial sums (fixed order). */                 \
CBP_CLONES static T cbp_dot_##S(ptrdiff_t n, const T *CBP_RESTRICT x,          \
                                const T *CBP_RESTRICT y)                       \
{                                                                              \
    T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                         \
    ptrdiff_t j = 0;                                                           \
    for (; j + 8 <= n; j += 8)                                                 \
        for (int k = 0; k < 8; k++) s[k] += x[j + k] * y[j + k];               \
    for (; j < n; j++) s[0] += x[j] * y[j];                                    \
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));  \
}                                                                              \
                                                                               \
/* sum of x^2, accumulated in double with eight partial sums. */               \
CBP_CLONES static double cbp_sumsq_##S(ptrdiff_t n, const T *CBP_RESTRICT x)   \
{                                                                              \
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                    \
    ptrdiff_t j = 0;                                                           \
    for (; j + 8 <= n; j += 8)                                                 \
        for (int k = 0; k < 8; k++) s[k] += (double)x[j + k] * (double)x[j + k];\
    for (; j < n; j++) s[0] += (double)x[j] * (double)x[j];                    \
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));  \
}                                                                              \
                                                                               \
/* SGD with (Nesterov) momentum on n parameters whose gradient is          */  \
/* g = (a * x + alpha * w) / sw, in scikit-learn's order of operations.     */ \
CBP_CLONES static void cbp_sgd_##S(ptrdiff_t n, T *CBP_RESTRICT w,             \
                                   T *CBP_RESTRICT v, T a,                     \
                                   const T *CBP_RESTRICT x, T alpha, T sw,     \
                                   T lr, T mom, int nesterov)                  \
{                                                                              \
    if (sw == (T)1) {                                                          \
        if (nesterov) {                                                        \
            for (ptrdiff_t j = 0; j < n; j++) {                                \
                T g = a * x[j] + alpha * w[j];                                 \
                T u = mom * v[j] - lr * g;                                     \
                v[j] = u;                                                      \
                w[j] += mom * u - lr * g;                                      \
            }                                                                  \
        } else {                                                               \
            for (ptrdiff_t j = 0; j < n; j++) {                                \
                T g = a * x[j] + alpha * w[j];                                 \
                T u = mom * v[j] - lr * g;                                     \
                v[j] = u;                                                      \
                w[j] += u;                                                     \
            }                                                                  \
        }                                                                      \
        return;                                                                \
    }                                                                          \
    if (nesterov) {                                                            \
        for (ptrdiff_t j = 0; j < n; j++) {                                    \
            T g = (a * x[j] + alpha * w[j]) / sw;                              \
            T u = mom * v[j] - lr * g;                                         \
            v[j] = u;                                                          \
            w[j] += mom * u - lr * g;                                          \
        }                                                                      \
    } else {                                                                   \
        for (ptrdiff_t j = 0; j < n; j++) {                                    \
            T g = (a * x[j] + alpha * w[j]) / sw;                              \
            T u = mom * v[j] - lr * g;                                         \
            v[j] = u;                                                          \
            w[j] += u;                                                         \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \
/* Adam on n parameters with g = (a * x + alpha * w) / sw and the bias-    */  \
/* corrected rate lr_t.                                                     */ \
CBP_CLONES static void cbp_adam_##S(ptrdiff_t n, T *CBP_RESTRICT w,            \
                                    T *CBP_RESTRICT m, T *CBP_RESTRICT v, T a, \
                                    const T *CBP_RESTRICT x, T alpha, T sw,    \
                                    T lr_t, T b1, T b2, T eps)                 \
{                                                                              \
    const T c1 = (T)1 - b1, c2 = (T)1 - b2;                                    \
    for (ptrdiff_t j = 0; j < n; j++) {                                        \
        T g = (a * x[j] + alpha * w[j]) / sw;                                  \
        T mj = b1 * m[j] + c1 * g;                                             \
        T vj = b2 * v[j] + c2 * (g * g);                                       \
        m[j] = mj;                                                             \
        v[j] = vj;                                                             \
        w[j] += (-lr_t * mj) / (SQRT(vj) + eps);                               \
    }                                                                          \
}                                                                              \
                                                                               \
/* (w, v) <- (ma w + mb v, mc w + md v): k data-free SGD steps at once.    */  \
CBP_CLONES static void cbp_lazy_##S(ptrdiff_t n, T *CBP_RESTRICT w,            \
                                    T *CBP_RESTRICT v, double ma, double mb,   \
                                    double mc, double md)                      \
{                                                                              \
    const T a = (T)ma, b = (T)mb, c = (T)mc, d = (T)md;                        \
    for (ptrdiff_t j = 0; j < n; j++) {                                        \
        T wj = w[j], vj = v[j];                                                \
        w[j] = a * wj + b * vj;                                                \
        v[j] = c * wj + d * vj;                                                \
    }                                                                          \
}                                                                              \
                                                                               \
/* out = (sum w^2, sum w v, sum v^2) in double. */                             \
CBP_CLONES static void cbp_rowstats_##S(ptrdiff_t n, const T *CBP_RESTRICT w,  \
                                        const T *CBP_RESTRICT v, double *out)  \
{                                                                              \
    double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0}, c[4] = {0, 0, 0, 0};     \
    ptrdiff_t j = 0;                                                           \
    for (; j + 4 <= n; j += 4)                                                 \
        for (int k = 0; k < 4; k++) {                                          \
            double wj = (double)w[j + k], vj = (double)v[j + k];               \
            a[k] += wj * wj;                                                   \
            b[k] += wj * vj;                                                   \
            c[k] += vj * vj;                                                   \
        }                                                                      \
    for (; j < n; j++) {                                                       \
        double wj = (double)w[j], vj = (double)v[j];                           \
        a[0] += wj * wj;                                                       \
        b[0] += wj * vj;                                                       \
        c[0] += vj * vj;                                                       \
    }                                                                          \
    out[0] = (a[0] + a[2]) + (a[1] + a[3]);                                    \
    out[1] = (b[0] + b[2]) + (b[1] + b[3]);                                    \
    out[2] = (c[0] + c[2]) + (c[1] + c[3]);                                    \
}

CBP_DEFINE_LOOPS(double, d, sqrt)
CBP_DEFINE_LOOPS(float, f, sqrtf)

#undef CBP_DEFINE_LOOPS

#endif /* CBP_LOOPS_H */
