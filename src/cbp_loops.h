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


#define CBP_DEFINE_SPARSE(T, S)                                                \
                                                                               \
/* Branch-free compaction of the non-zeros of x: indices and values;       */  \
/* returns their number.                                                    */ \
CBP_CLONES static ptrdiff_t cbp_compact_##S(ptrdiff_t n, const T *CBP_RESTRICT x,\
                                            ptrdiff_t *CBP_RESTRICT idx,       \
                                            T *CBP_RESTRICT val)               \
{                                                                              \
    ptrdiff_t c = 0;                                                           \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        idx[c] = i;                                                            \
        val[c] = x[i];                                                         \
        c += (x[i] != (T)0);                                                   \
    }                                                                          \
    return c;                                                                  \
}                                                                              \
                                                                               \
/* z[r, :] = b + sum_{p in rs[r]..re[r]} val[p] * W[idx[p], :], r < nr.    */  \
CBP_CLONES static void cbp_sprows_##S(ptrdiff_t nr, const ptrdiff_t *rs,       \
                                      const ptrdiff_t *re, const ptrdiff_t *idx,\
                                      const T *val, const T *W, ptrdiff_t m,   \
                                      const T *b, T *CBP_RESTRICT z)           \
{                                                                              \
    for (ptrdiff_t r = 0; r < nr; r++) {                                       \
        T *CBP_RESTRICT zr = z + r * m;                                        \
        for (ptrdiff_t j = 0; j < m; j++) zr[j] = b[j];                        \
        for (ptrdiff_t p = rs[r]; p < re[r]; p++) {                            \
            const T a = val[p];                                                \
            const T *CBP_RESTRICT w = W + idx[p] * m;                          \
            for (ptrdiff_t j = 0; j < m; j++) zr[j] += a * w[j];               \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \
/* G[i, :] (+)= sum_{e in fptr[i]..fptr[i+1]} fval[e] * D[frow[e], :] for  */  \
/* i0 <= i < i1: the rows of X^T D, entries of each feature in row order.  */  \
CBP_CLONES static void cbp_spgrad_##S(ptrdiff_t i0, ptrdiff_t i1,              \
                                      const ptrdiff_t *fptr,                   \
                                      const ptrdiff_t *frow, const T *fval,    \
                                      const T *D, ptrdiff_t m,                 \
                                      T *CBP_RESTRICT G, int accumulate)       \
{                                                                              \
    for (ptrdiff_t i = i0; i < i1; i++) {                                      \
        T *CBP_RESTRICT g = G + i * m;                                         \
        if (!accumulate)                                                       \
            for (ptrdiff_t j = 0; j < m; j++) g[j] = (T)0;                     \
        for (ptrdiff_t e = fptr[i]; e < fptr[i + 1]; e++) {                    \
            const T a = fval[e];                                               \
            const T *CBP_RESTRICT d = D + frow[e] * m;                         \
            for (ptrdiff_t j = 0; j < m; j++) g[j] += a * d[j];                \
        }                                                                      \
    }                                                                          \
}                                                                              \
                                                                               \

#define CBP_DEFINE_ONLINE(T, S, SQRT)                                          \
                                                                               \
/* z = b + sum_{i : a_i != 0} a_i W[i, :]  (one sample, zeros skipped).    */  \
CBP_CLONES static void cbp_gemv_skip_##S(ptrdiff_t n, const T *a, const T *W,  \
                                         ptrdiff_t m, const T *b,              \
                                         T *CBP_RESTRICT z)                    \
{                                                                              \
    for (ptrdiff_t j = 0; j < m; j++) z[j] = b[j];                             \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        const T ai = a[i];                                                     \
        if (ai == (T)0) continue;                                              \
        const T *CBP_RESTRICT w = W + i * m;                                   \
        for (ptrdiff_t j = 0; j < m; j++) z[j] += ai * w[j];                   \
    }                                                                          \
}                                                                              \
                                                                               \
/* out[i] = W[i, :] . d, each with eight partial sums in fixed order.      */  \
CBP_CLONES static void cbp_gemv_t_##S(ptrdiff_t n, ptrdiff_t m, const T *W,    \
                                      const T *d, T *CBP_RESTRICT out)         \
{                                                                              \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        const T *CBP_RESTRICT w = W + i * m;                                   \
        T s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                     \
        ptrdiff_t j = 0;                                                       \
        for (; j + 8 <= m; j += 8)                                             \
            for (int k = 0; k < 8; k++) s[k] += w[j + k] * d[j + k];           \
        for (; j < m; j++) s[0] += w[j] * d[j];                                \
        out[i] = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));\
    }                                                                          \
}                                                                              \
                                                                               \
/* Sum of squares of a row, eight partial sums in double (fixed order).    */  \
static inline double cbp_rowsq_##S(ptrdiff_t m, const T *CBP_RESTRICT w)       \
{                                                                              \
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                    \
    ptrdiff_t j = 0;                                                           \
    for (; j + 8 <= m; j += 8)                                                 \
        for (int k = 0; k < 8; k++) s[k] += (double)w[j + k] * (double)w[j + k];\
    for (; j < m; j++) s[0] += (double)w[j] * (double)w[j];                    \
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));  \
}                                                                              \
                                                                               \
/* SGD step of a whole (n x m) layer for one sample: row i has gradient    */  \
/* (a_i d + alpha W[i]) / sw.  Returns sum W^2 before the step.            */  \
CBP_CLONES static double cbp_sgd_outer_##S(ptrdiff_t n, ptrdiff_t m,           \
                                           const T *a, const T *d, T *W, T *V, \
                                           T alpha, T sw, T lr, T mom,         \
                                           int nesterov)                       \
{                                                                              \
    double ssq = 0.0;                                                          \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT v = V + i * m;                                         \
        const T ai = a[i];                                                     \
        ssq += cbp_rowsq_##S(m, w);                                            \
        if (sw == (T)1) {                                                      \
            for (ptrdiff_t j = 0; j < m; j++) {                                \
                T g = ai * d[j] + alpha * w[j];                                \
                T u = mom * v[j] - lr * g;                                     \
                v[j] = u;                                                      \
                w[j] += nesterov ? mom * u - lr * g : u;                       \
            }                                                                  \
        } else {                                                               \
            for (ptrdiff_t j = 0; j < m; j++) {                                \
                T g = (ai * d[j] + alpha * w[j]) / sw;                         \
                T u = mom * v[j] - lr * g;                                     \
                v[j] = u;                                                      \
                w[j] += nesterov ? mom * u - lr * g : u;                       \
            }                                                                  \
        }                                                                      \
    }                                                                          \
    return ssq;                                                                \
}                                                                              \
                                                                               \
/* Adam step of a whole (n x m) layer for one sample (see cbp_sgd_outer).  */  \
CBP_CLONES static double cbp_adam_outer_##S(ptrdiff_t n, ptrdiff_t m,          \
                                            const T *a, const T *d, T *W,      \
                                            T *M1, T *M2, T alpha, T sw,       \
                                            T lr_t, T b1, T b2, T eps)         \
{                                                                              \
    double ssq = 0.0;                                                          \
    const T c1 = (T)1 - b1, c2 = (T)1 - b2;                                    \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT m1 = M1 + i * m;                                       \
        T *CBP_RESTRICT m2 = M2 + i * m;                                       \
        const T ai = a[i];                                                     \
        ssq += cbp_rowsq_##S(m, w);                                            \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            T g = (ai * d[j] + alpha * w[j]) / sw;                             \
            T mj = b1 * m1[j] + c1 * g;                                        \
            T vj = b2 * m2[j] + c2 * (g * g);                                  \
            m1[j] = mj;                                                        \
            m2[j] = vj;                                                        \
            w[j] += (-lr_t * mj) / (SQRT(vj) + eps);                           \
        }                                                                      \
    }                                                                          \
    return ssq;                                                                \
}                                                                              \
                                                                               \
/* Lazy online SGD, before the forward pass: bring rows[0..n) of W (with   */  \
/* velocities V) from time last[i] to time t with M^(t - last[i]), and     */  \
/* return the L2 mass sum_{s = last}^{t-1} ||W_i(s)||^2 of the skipped     */  \
/* steps, from the row statistics kept at time last[i].                    */  \
CBP_CLONES static double cbp_lazy_catchup_##S(ptrdiff_t n, const ptrdiff_t *rows,\
                                              ptrdiff_t *last, ptrdiff_t t,    \
                                              const double *powers,            \
                                              const double *prefix,            \
                                              const double *stats, T *W, T *V, \
                                              ptrdiff_t m)                     \
{                                                                              \
    double l2 = 0.0;                                                           \
    for (ptrdiff_t p = 0; p < n; p++) {                                        \
        const ptrdiff_t i = rows[p], k = t - last[i];                          \
        if (k <= 0) continue;                                                  \
        const double *P = powers + 4 * k, *Q = prefix + 3 * k;                 \
        const double *St = stats + 3 * i;                                      \
        l2 += St[0] * Q[0] + 2.0 * St[1] * Q[1] + St[2] * Q[2];                \
        const T a = (T)P[0], b = (T)P[1], c = (T)P[2], e = (T)P[3];            \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT v = V + i * m;                                         \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            T wj = w[j], vj = v[j];                                            \
            w[j] = a * wj + b * vj;                                            \
            v[j] = c * wj + e * vj;                                            \
        }                                                                      \
        last[i] = t;                                                           \
    }                                                                          \
    return l2;                                                                 \
}                                                                              \
                                                                               \
/* Lazy online SGD, after the backward pass: the data step of the rows     */  \
/* with a non-zero input (no sample weights, so sw = 1), their new row     */  \
/* statistics, last = t + 1.  Returns sum ||W_i(t)||^2 before the step.    */  \
CBP_CLONES static double cbp_lazy_step_##S(ptrdiff_t n, const ptrdiff_t *rows,  \
                                           const T *vals, ptrdiff_t *last,     \
                                           ptrdiff_t t, double *stats, T *W,   \
                                           T *V, ptrdiff_t m, const T *d,      \
                                           T alpha, T lr, T mom, int nesterov) \
{                                                                              \
    double ssq = 0.0;                                                          \
    for (ptrdiff_t p = 0; p < n; p++) {                                        \
        const ptrdiff_t i = rows[p];                                           \
        T *CBP_RESTRICT w = W + i * m;                                         \
        T *CBP_RESTRICT v = V + i * m;                                         \
        const T ai = vals[p];                                                  \
        double sw2 = 0.0, swv = 0.0, sv2 = 0.0;                                \
        ssq += cbp_rowsq_##S(m, w);                                            \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            T g = ai * d[j] + alpha * w[j];                                    \
            T u = mom * v[j] - lr * g;                                         \
            v[j] = u;                                                          \
            w[j] += nesterov ? mom * u - lr * g : u;                           \
        }                                                                      \
        for (ptrdiff_t j = 0; j < m; j++) {                                    \
            sw2 += (double)w[j] * (double)w[j];                                \
            swv += (double)w[j] * (double)v[j];                                \
            sv2 += (double)v[j] * (double)v[j];                                \
        }                                                                      \
        stats[3 * i] = sw2;                                                    \
        stats[3 * i + 1] = swv;                                                \
        stats[3 * i + 2] = sv2;                                                \
        last[i] = t + 1;                                                       \
    }                                                                          \
    return ssq;                                                                \
}

CBP_DEFINE_LOOPS(double, d, sqrt)
CBP_DEFINE_LOOPS(float, f, sqrtf)
CBP_DEFINE_SPARSE(double, d)
CBP_DEFINE_SPARSE(float, f)
CBP_DEFINE_ONLINE(double, d, sqrt)
CBP_DEFINE_ONLINE(float, f, sqrtf)

#undef CBP_DEFINE_LOOPS
#undef CBP_DEFINE_SPARSE
#undef CBP_DEFINE_ONLINE

#endif /* CBP_LOOPS_H */
