/*
 * cbp_math.h -- numerically stable activations, their derivatives, softmax
 * and the per-row losses used by the cbackprop kernels.
 *
 * Plain C99, no Python.h.  Every routine exists in a float ("_f") and a
 * double ("_d") flavour generated from one macro body so that the two can
 * never drift apart.  Loss sums are returned in double whatever the data
 * type, because float32 accumulators lose digits over large batches.
 */
#ifndef CBP_MATH_H
#define CBP_MATH_H

#include <math.h>
#include <stddef.h>
#include <float.h>
#include <stdint.h>

#include "cbp_target.h"

/* Hidden-layer activation codes (mirrored in cbackprop/_codes.py). */
enum {
    CBP_ACT_IDENTITY = 0,
    CBP_ACT_LOGISTIC = 1,
    CBP_ACT_TANH = 2,
    CBP_ACT_RELU = 3,
    CBP_ACT_LEAKY_RELU = 4, /* param: slope for z < 0 */
    CBP_ACT_ELU = 5,        /* alpha 1 */
    CBP_ACT_LECUN_TANH = 6, /* 1.7159 tanh(2 z / 3) */
    CBP_ACT_SOFTPLUS = 7,   /* log(1 + exp(z)) */
    CBP_ACT_MAXOUT = 8      /* max over k pieces: handled by the kernels */
};

/* Output activation codes. */
enum {
    CBP_OUT_IDENTITY = 0,
    CBP_OUT_LOGISTIC = 1,
    CBP_OUT_SOFTMAX = 2,
    CBP_OUT_EXP = 3
};

/* Loss codes. */
enum {
    CBP_LOSS_SQUARED = 0,
    CBP_LOSS_LOG = 1,        /* categorical cross-entropy on softmax */
    CBP_LOSS_BINARY_LOG = 2, /* per-output cross-entropy on logistic */
    CBP_LOSS_POISSON = 3,
    CBP_LOSS_ABSOLUTE = 4,   /* sum |p - y|, identity output */
    CBP_LOSS_HUBER = 5,      /* param: delta, identity output */
    CBP_LOSS_HINGE = 6,      /* per output max(0, 1 - t s), t = 2y - 1 */
    CBP_LOSS_MULTI_HINGE = 7 /* sum_{j != y} max(0, s_j - s_y + 1) */
};

/* exp(x) for x <= 0 without a table or a branch, so that loops over it
 * vectorise (glibc's scalar exp was 7% of a load_digits fit, in the
 * softmax).  x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite: k ln2_hi is
 * exact), exp(r) by its Taylor polynomial (degree 13 in double, 7 in float:
 * the truncation error is below half an ulp), times 2^k built in the
 * exponent bits.  Within 1 ulp of glibc's exp on [-708, 0] (20 million
 * points, float and double).  Below -708 (-87 in float), where the result
 * would be subnormal, it returns 0; NaN stays NaN. */
#define CBP_DEFINE_EXP_NONPOS(T, S, I, FABS, LOWEST, SHIFT, SHIFT_BITS, BIAS,   \
                              MANT, LOG2E, LN2_HI, LN2_LO)                   \
static inline T cbp_exp_nonpos_##S(T x)                                       \
{                                                                             \
    union { T f; I i; } u, s;                                                 \
    const T xc = x < LOWEST ? LOWEST : x;                                     \
    u.f = xc * LOG2E + SHIFT;                                                 \
    const T k = u.f - SHIFT;                                                  \
    const T r = (xc - k * LN2_HI) - k * LN2_LO;                               \
    CBP_EXP_POLY_HEAD_##S(p, r)                                               \
    p = p * r + (T)1 / (T)720;                                                \
    p = p * r + (T)1 / (T)120;                                                \
    p = p * r + (T)1 / (T)24;                                                 \
    p = p * r + (T)1 / (T)6;                                                  \
    p = p * r + (T)0.5;                                                       \
    p = p * r + (T)1;                                                         \
    p = p * r + (T)1;                                                         \
    s.i = (u.i - (I)SHIFT_BITS + BIAS) << MANT;                               \
    return x < LOWEST ? (T)0 : p * s.f;                                       \
}                                                                             \
                                                                              \
/* Logistic function that never evaluates exp of a positive number:      */  \
/* e = exp(-|x|), then 1 / (1 + e) or the algebraically equal e / (1 + e). */\
static inline T cbp_sigmoid_##S(T x)                                          \
{                                                                             \
    const T e = cbp_exp_nonpos_##S(-FABS(x));                                 \
    return (x >= (T)0 ? (T)1 : e) / ((T)1 + e);                               \
}

/* The Taylor terms 1/13! .. 1/7! in double, 1/7! alone in float. */
#define CBP_EXP_POLY_HEAD_d(p, r)                                             \
    double p = 1.0 / 6227020800.0;                                            \
    p = p * r + 1.0 / 479001600.0;                                            \
    p = p * r + 1.0 / 39916800.0;                                             \
    p = p * r + 1.0 / 3628800.0;                                              \
    p = p * r + 1.0 / 362880.0;                                               \
    p = p * r + 1.0 / 40320.0;                                                \
    p = p * r + 1.0 / 5040.0;
#define CBP_EXP_POLY_HEAD_f(p, r) float p = 1.0f / 5040.0f;

/* ln 2 split as in fdlibm (double) and Cephes (float); shift 1.5 * 2^52
 * (2^23) rounds x log2(e) to the integer k held in the low bits. */
CBP_DEFINE_EXP_NONPOS(double, d, int64_t, fabs, -708.0, 0x1.8p52,
                      0x4338000000000000LL, 1023, 52, 0x1.71547652b82fep0,
                      0x1.62e42feep-1, 0x1.a39ef35793c76p-33)
CBP_DEFINE_EXP_NONPOS(float, f, int32_t, fabsf, -87.0f, 0x1.8p23f, 0x4B400000,
                      127, 23, 0x1.715476p0f, 0.693359375f, -2.12194440e-4f)

#undef CBP_DEFINE_EXP_NONPOS

/* Clamp of the exp output's argument: a Poisson mean of e^300 (e^60 in
 * float32) is far beyond any meaningful model, and below it the loss and the
 * batch sums of its gradient stay finite. */
#define CBP_MAXLOG_d 300.0
#define CBP_MAXLOG_f 60.0f

#define CBP_DEFINE_MATH(T, S, EXP, EXPNP, TANH, LOG, SIGMOID, EPS)            \
                                                                              \
/* In-place hidden activation of n contiguous values; ``param`` is the    */ \
/* leaky-relu slope (unused by the others).                               */ \
CBP_CLONES static void cbp_hidden_forward_##S(int code, double param, T *z,   \
                                              ptrdiff_t n)                    \
{                                                                             \
    ptrdiff_t i;                                                              \
    const T slope = (T)param;                                                 \
    switch (code) {                                                           \
    case CBP_ACT_LEAKY_RELU:                                                  \
        for (i = 0; i < n; i++) z[i] = z[i] > (T)0 ? z[i] : slope * z[i];     \
        break;                                                                \
    case CBP_ACT_ELU:                                                         \
        /* expm1 keeps the small negative values exact. */                    \
        for (i = 0; i < n; i++)                                               \
            z[i] = z[i] > (T)0 ? z[i] : (T)expm1((double)z[i]);               \
        break;                                                                \
    case CBP_ACT_LECUN_TANH:                                                  \
        for (i = 0; i < n; i++)                                               \
            z[i] = (T)1.7159 * TANH(z[i] * ((T)2 / (T)3));                    \
        break;                                                                \
    case CBP_ACT_SOFTPLUS:                                                    \
        /* log(1 + e^z) = max(z, 0) + log1p(e^-|z|): never overflows. */      \
        for (i = 0; i < n; i++) {                                             \
            double x = (double)z[i];                                          \
            z[i] = (T)((x > 0.0 ? x : 0.0) + log1p(exp(-fabs(x))));           \
        }                                                                     \
        break;                                                                \
    case CBP_ACT_LOGISTIC:                                                    \
        for (i = 0; i < n; i++) z[i] = SIGMOID(z[i]);                         \
        break;                                                                \
    case CBP_ACT_TANH:                                                        \
        for (i = 0; i < n; i++) z[i] = TANH(z[i]);                            \
        break;                                                                \
    case CBP_ACT_RELU:                                                        \
        for (i = 0; i < n; i++) z[i] = z[i] > (T)0 ? z[i] : (T)0;             \
        break;                                                                \
    default:                                                                  \
        break;                                                                \
    }                                                                         \
}                                                                             \
                                                                              \
/* delta *= f'(z), with f' written in terms of the activation a = f(z), */    \
/* which is what the forward pass keeps. */                                   \
CBP_CLONES static void cbp_hidden_backward_##S(int code, double param,        \
                                               const T *a, T *delta,          \
                                               ptrdiff_t n)                   \
{                                                                             \
    ptrdiff_t i;                                                              \
    const T slope = (T)param;                                                 \
    switch (code) {                                                           \
    case CBP_ACT_LEAKY_RELU:                                                  \
        for (i = 0; i < n; i++) delta[i] *= a[i] > (T)0 ? (T)1 : slope;       \
        break;                                                                \
    case CBP_ACT_ELU:                                                         \
        /* z <= 0: f' = e^z = a + 1 */                                        \
        for (i = 0; i < n; i++) delta[i] *= a[i] > (T)0 ? (T)1 : a[i] + (T)1; \
        break;                                                                \
    case CBP_ACT_LECUN_TANH:                                                  \
        /* f' = 1.7159 (2/3) (1 - (a / 1.7159)^2) */                          \
        for (i = 0; i < n; i++) {                                             \
            T u = a[i] * (T)(1.0 / 1.7159);                                   \
            delta[i] *= (T)(1.7159 * 2.0 / 3.0) * ((T)1 - u * u);             \
        }                                                                     \
        break;                                                                \
    case CBP_ACT_SOFTPLUS:                                                    \
        /* f' = sigmoid(z) = 1 - e^-a, as -expm1(-a) for small a */           \
        for (i = 0; i < n; i++) delta[i] *= (T)(-expm1(-(double)a[i]));       \
        break;                                                                \
    case CBP_ACT_LOGISTIC:                                                    \
        for (i = 0; i < n; i++) {                                             \
            delta[i] *= a[i];                                                 \
            delta[i] *= (T)1 - a[i];                                          \
        }                                                                     \
        break;                                                                \
    case CBP_ACT_TANH:                                                        \
        for (i = 0; i < n; i++) delta[i] *= (T)1 - a[i] * a[i];               \
        break;                                                                \
    case CBP_ACT_RELU:                                                        \
        /* A select, not a branch: relu patterns are random and a      */  \
        /* mispredicted branch per unit cost more than the arithmetic. */  \
        for (i = 0; i < n; i++) delta[i] = a[i] == (T)0 ? (T)0 : delta[i];   \
        break;                                                                \
    default:                                                                  \
        break;                                                                \
    }                                                                         \
}                                                                             \
                                                                              \
/* Softmax of each row of a rows x cols block, shifted by the row's        */ \
/* maximum so exp never overflows; the exps run over the whole block in   */ \
/* one loop (a row of 10 outputs is too short to vectorise alone).  The   */ \
/* maxima and sums take four rows at a time: each row's is still made in  */ \
/* column order, but four chains of dependent adds overlap instead of     */ \
/* one waiting on the last (softmax 1.6x as fast on 100 x 10 blocks).     */ \
static inline void cbp_softmax_rows_##S(T *z, ptrdiff_t rows, ptrdiff_t n)    \
{                                                                             \
    ptrdiff_t i = 0, j, q;                                                    \
    for (; i + 4 <= rows; i += 4) {                                           \
        T *z0 = z + i * n, m[4];                                              \
        for (q = 0; q < 4; q++) m[q] = z0[q * n];                             \
        for (j = 1; j < n; j++)                                               \
            for (q = 0; q < 4; q++)                                           \
                if (z0[q * n + j] > m[q]) m[q] = z0[q * n + j];               \
        for (q = 0; q < 4; q++)                                               \
            for (j = 0; j < n; j++) z0[q * n + j] -= m[q];                    \
    }                                                                         \
    for (; i < rows; i++) {                                                   \
        T *zi = z + i * n, m = zi[0];                                         \
        for (j = 1; j < n; j++) if (zi[j] > m) m = zi[j];                     \
        for (j = 0; j < n; j++) zi[j] -= m;                                   \
    }                                                                         \
    for (j = 0; j < rows * n; j++) z[j] = EXPNP(z[j]);                        \
    for (i = 0; i + 4 <= rows; i += 4) {                                      \
        T *z0 = z + i * n, s[4] = {(T)0, (T)0, (T)0, (T)0};                   \
        for (j = 0; j < n; j++)                                               \
            for (q = 0; q < 4; q++) s[q] += z0[q * n + j];                    \
        /* One division a row: a division per value cost a third of the */   \
        /* softmax (within an ulp of it).                                */   \
        for (q = 0; q < 4; q++) {                                             \
            const T inv = (T)1 / s[q];                                        \
            for (j = 0; j < n; j++) z0[q * n + j] *= inv;                     \
        }                                                                     \
    }                                                                         \
    for (; i < rows; i++) {                                                   \
        T *zi = z + i * n, s = (T)0;                                          \
        for (j = 0; j < n; j++) s += zi[j];                                   \
        const T inv = (T)1 / s;                                               \
        for (j = 0; j < n; j++) zi[j] *= inv;                                 \
    }                                                                         \
}                                                                             \
                                                                              \
/* log(sum(exp(z))) of one row, stable for any magnitude. */                  \
static inline double cbp_logsumexp_##S(const T *z, ptrdiff_t n)               \
{                                                                             \
    ptrdiff_t j;                                                              \
    double m = (double)z[0], s = 0.0;                                         \
    for (j = 1; j < n; j++) if ((double)z[j] > m) m = (double)z[j];           \
    for (j = 0; j < n; j++) s += exp((double)z[j] - m);                       \
    return m + log(s);                                                        \
}                                                                             \
                                                                              \
/* Index of the first largest value. */                                      \
static inline ptrdiff_t cbp_argmax_##S(const T *x, ptrdiff_t n)               \
{                                                                             \
    ptrdiff_t j, k = 0;                                                       \
    for (j = 1; j < n; j++) if (x[j] > x[k]) k = j;                           \
    return k;                                                                 \
}                                                                             \
                                                                              \
/* In-place output activation of a rows x cols block. */                      \
CBP_CLONES static void cbp_output_forward_##S(int code, T *z, ptrdiff_t rows, \
                                              ptrdiff_t cols)                 \
{                                                                             \
    ptrdiff_t i, n = rows * cols;                                             \
    switch (code) {                                                           \
    case CBP_OUT_LOGISTIC:                                                    \
        for (i = 0; i < n; i++) z[i] = SIGMOID(z[i]);                         \
        break;                                                                \
    case CBP_OUT_SOFTMAX:                                                     \
        cbp_softmax_rows_##S(z, rows, cols);                                  \
        break;                                                                \
    case CBP_OUT_EXP:                                                         \
        /* Clamped so the Poisson mean and loss stay finite. */               \
        for (i = 0; i < n; i++) {                                             \
            T e = z[i] > CBP_MAXLOG_##S ? CBP_MAXLOG_##S                       \
                  : (z[i] < -CBP_MAXLOG_##S ? -CBP_MAXLOG_##S : z[i]);         \
            z[i] = EXP(e);                                                    \
        }                                                                     \
        break;                                                                \
    default:                                                                  \
        break;                                                                \
    }                                                                         \
}                                                                             \
                                                                              \
/* Loss of one sample (one row of outputs p against targets y), unweighted. */\
/* Probabilities are clipped to [eps, 1 - eps] of the data type so the */     \
/* loss is always finite; squared error is summed over outputs. */            \
static inline double cbp_row_loss_##S(int loss, double param, const T *p,    \
                                      const T *y, ptrdiff_t cols)             \
{                                                                             \
    ptrdiff_t j;                                                              \
    double s = 0.0;                                                           \
    const T eps = EPS;                                                        \
    switch (loss) {                                                           \
    case CBP_LOSS_SQUARED:                                                    \
        for (j = 0; j < cols; j++) {                                          \
            double d = (double)y[j] - (double)p[j];                           \
            s += d * d;                                                       \
        }                                                                     \
        return 0.5 * s;                                                       \
    case CBP_LOSS_LOG: {                                                      \
        /* A one-hot row (every classifier's) has one term, -log(p_k), and */ \
        /* sum_j y_j p_j is p_k exactly: found without a branch on each y  */ \
        /* (its class is random, so that branch was mispredicted once a    */ \
        /* row; load_digits, 10 classes).                                  */ \
        T c = (T)0, ys = (T)0;                                                \
        int ny = 0;                                                           \
        for (j = 0; j < cols; j++) {                                          \
            c += y[j] * p[j];                                                 \
            ys += y[j];                                                       \
            ny += y[j] != (T)0;                                               \
        }                                                                     \
        if (ny == 1 && ys == (T)1) {                                          \
            T q = c < eps ? eps : (c > (T)1 - eps ? (T)1 - eps : c);          \
            return -LOG((double)q);                                           \
        }                                                                     \
    }                                                                         \
        for (j = 0; j < cols; j++) {                                          \
            if (y[j] != (T)0) {                                               \
                T q = p[j] < eps ? eps : (p[j] > (T)1 - eps ? (T)1 - eps      \
                                                           : p[j]);           \
                s -= (double)y[j] * LOG((double)q);                           \
            }                                                                 \
        }                                                                     \
        return s;                                                             \
    case CBP_LOSS_BINARY_LOG:                                                 \
        for (j = 0; j < cols; j++) {                                          \
            T q = p[j] < eps ? eps : (p[j] > (T)1 - eps ? (T)1 - eps : p[j]); \
            T r = (T)1 - q;                                                   \
            if (y[j] != (T)0) s -= (double)y[j] * LOG((double)q);             \
            if ((T)1 - y[j] != (T)0)                                          \
                s -= (double)((T)1 - y[j]) * LOG((double)r);                  \
        }                                                                     \
        return s;                                                             \
    case CBP_LOSS_POISSON:                                                    \
        for (j = 0; j < cols; j++) {                                          \
            double yj = (double)y[j], pj = (double)p[j];                      \
            if (yj != 0.0) s += yj * LOG(yj / pj);                            \
            s += pj - yj;                                                     \
        }                                                                     \
        return s;                                                             \
    case CBP_LOSS_ABSOLUTE:                                                   \
        for (j = 0; j < cols; j++) s += fabs((double)p[j] - (double)y[j]);    \
        return s;                                                             \
    case CBP_LOSS_HUBER:                                                      \
        for (j = 0; j < cols; j++) {                                          \
            double r = fabs((double)p[j] - (double)y[j]);                     \
            s += r <= param ? 0.5 * r * r : param * (r - 0.5 * param);        \
        }                                                                     \
        return s;                                                             \
    case CBP_LOSS_HINGE:                                                      \
        for (j = 0; j < cols; j++) {                                          \
            double t = y[j] != (T)0 ? 1.0 : -1.0, m = 1.0 - t * (double)p[j]; \
            s += m > 0.0 ? m : 0.0;                                           \
        }                                                                     \
        return s;                                                             \
    case CBP_LOSS_MULTI_HINGE: {                                              \
        ptrdiff_t c = cbp_argmax_##S(y, cols);                                \
        for (j = 0; j < cols; j++) {                                          \
            double m = (double)p[j] - (double)p[c] + 1.0;                     \
            if (j != c && m > 0.0) s += m;                                    \
        }                                                                     \
        return s;                                                             \
    }                                                                         \
    default:                                                                  \
        return NAN;                                                           \
    }                                                                         \
}                                                                             \
                                                                              \
/* d = dloss/dz of one row (unweighted): p is the output activation of z.  */ \
/* Each loss paired with its canonical output gives p - y; squared error  */ \
/* on logistic or softmax outputs goes through their Jacobian, and the    */ \
/* kinks of the absolute, Huber and hinge losses take the subgradient 0.  */ \
static inline void cbp_output_delta_##S(int loss, int out, double param,      \
                                        const T *p, const T *y, T *d,         \
                                        ptrdiff_t cols)                       \
{                                                                             \
    ptrdiff_t j;                                                              \
    switch (loss) {                                                           \
    case CBP_LOSS_SQUARED:                                                    \
        if (out == CBP_OUT_LOGISTIC) {                                        \
            for (j = 0; j < cols; j++)                                        \
                d[j] = (p[j] - y[j]) * (p[j] * ((T)1 - p[j]));                \
        } else if (out == CBP_OUT_SOFTMAX) {                                  \
            T s = (T)0;                                                       \
            for (j = 0; j < cols; j++) s += (p[j] - y[j]) * p[j];             \
            for (j = 0; j < cols; j++) d[j] = p[j] * ((p[j] - y[j]) - s);     \
        } else {                                                              \
            for (j = 0; j < cols; j++) d[j] = p[j] - y[j];                    \
        }                                                                     \
        return;                                                               \
    case CBP_LOSS_ABSOLUTE:                                                   \
        for (j = 0; j < cols; j++)                                            \
            d[j] = (T)((p[j] > y[j]) - (p[j] < y[j]));                        \
        return;                                                               \
    case CBP_LOSS_HUBER: {                                                    \
        const T h = (T)param;                                                 \
        for (j = 0; j < cols; j++) {                                          \
            T r = p[j] - y[j];                                                \
            d[j] = r > h ? h : (r < -h ? -h : r);                             \
        }                                                                     \
        return;                                                               \
    }                                                                         \
    case CBP_LOSS_HINGE:                                                      \
        for (j = 0; j < cols; j++) {                                          \
            T t = y[j] != (T)0 ? (T)1 : (T)-1;                                \
            d[j] = t * p[j] < (T)1 ? -t : (T)0;                               \
        }                                                                     \
        return;                                                               \
    case CBP_LOSS_MULTI_HINGE: {                                              \
        ptrdiff_t c = cbp_argmax_##S(y, cols);                                \
        T n = (T)0;                                                           \
        for (j = 0; j < cols; j++) {                                          \
            T on = (T)(j != c && p[j] - p[c] + (T)1 > (T)0);                  \
            d[j] = on;                                                        \
            n += on;                                                          \
        }                                                                     \
        d[c] = -n;                                                            \
        return;                                                               \
    }                                                                         \
    default:                                                                  \
        for (j = 0; j < cols; j++) d[j] = p[j] - y[j];                        \
        return;                                                               \
    }                                                                         \
}

/* Cross-entropy loss and deltas of softmax rows whose targets are one-hot, */
/* given as each sample's class: the rows of the generic path's values    */
/* (-log p_k clipped, and p - y), bit for bit, without reading the target */
/* rows (scattered over Y) or looking for their one non-zero.  p: nr rows */
/* of n outputs; sample rows[r]'s class is cls[rows[r]], its weight       */
/* sw[rows[r]] (sw NULL: 1).  d (or NULL): the weighted deltas.  Returns  */
/* the weighted loss. */
#define CBP_DEFINE_ONEHOT(T, S, LOG, EPS)                                     \
static inline double cbp_onehot_loss_delta_##S(                               \
    ptrdiff_t nr, ptrdiff_t n, const T *p, const int32_t *cls,                \
    const ptrdiff_t *rows, const T *sw, T *d)                                 \
{                                                                             \
    double loss = 0.0;                                                        \
    const T eps = EPS;                                                        \
    for (ptrdiff_t r = 0; r < nr; r++) {                                      \
        const T *pr = p + r * n;                                              \
        const ptrdiff_t k = cls[rows[r]];                                     \
        const T w = sw ? sw[rows[r]] : (T)1;                                  \
        const T c = pr[k];                                                    \
        const T q = c < eps ? eps : (c > (T)1 - eps ? (T)1 - eps : c);        \
        loss += (double)w * -LOG((double)q);                                  \
        if (d) {                                                              \
            T *dr = d + r * n;                                                \
            for (ptrdiff_t j = 0; j < n; j++) dr[j] = pr[j];                  \
            dr[k] = pr[k] - (T)1;                                             \
            if (sw)                                                           \
                for (ptrdiff_t j = 0; j < n; j++) dr[j] *= w;                 \
        }                                                                     \
    }                                                                         \
    return loss;                                                              \
}

CBP_DEFINE_ONEHOT(double, d, log, DBL_EPSILON)
CBP_DEFINE_ONEHOT(float, f, log, FLT_EPSILON)

CBP_DEFINE_MATH(double, d, exp, cbp_exp_nonpos_d, tanh, log, cbp_sigmoid_d,
                DBL_EPSILON)
CBP_DEFINE_MATH(float, f, expf, cbp_exp_nonpos_f, tanhf, log, cbp_sigmoid_f,
                FLT_EPSILON)

#undef CBP_DEFINE_MATH

#endif /* CBP_MATH_H */
