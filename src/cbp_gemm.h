/*
 * cbp_gemm.h -- matrix products for the shapes a row chunk makes, on AVX-512.
 *
 * Row-major C[m, n] = op(A)[m, k] B[k, n] (+ C when ``beta``; or + the row
 * ``bias`` under every row, then optionally relu; or zeroed where ``gate``,
 * a relu layer's activations, is zero), where op(A)
 * is A (stored m x k, lda) or A^T (A stored k x m, lda) and B is stored
 * k x n (ldb).  These are the products of one chunk of a mini-batch: a
 * layer's forward product, the backward product through a transposed
 * weight copy, and a layer's gradient.  BLAS is held to one thread while
 * the kernels run, so a one-thread product of our own gives nothing up;
 * and OpenBLAS picks its kernels by CPU model, so on a CPU it does not know
 * (or under OPENBLAS_CORETYPE=Haswell, which this project's development VM
 * sets) an AVX-512 machine runs AVX2 kernels at half the rate.
 *
 * No packing: B's panel (KC rows of up to four vectors) stays in L1/L2 while
 * every row block of A passes over it; six rows of A (twelve when C's block
 * is at most two vectors wide) are broadcast one element at a time.  Each
 * element of C is the sum over k in order, one fused multiply-add per term,
 * started from zero (or from C when ``beta``) and carried over K blocks in
 * its register, so the result does not depend on how m or n are cut: a
 * product split by rows or by columns (threads, unit blocks) gives the same
 * bits as the whole.
 *
 * cbp_gemm_ready() says whether this CPU (and OS) runs the AVX-512 code;
 * without it, or on compilers without per-function targets (MSVC), the
 * caller uses BLAS.
 */
#ifndef CBP_GEMM_H
#define CBP_GEMM_H

#include <stddef.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && \
    !defined(CBP_NO_GEMM)
#define CBP_GEMM 1
#include <immintrin.h>

#define CBP_GEMM_TARGET __attribute__((target("avx512f,fma")))
#define CBP_GEMM_INLINE static inline __attribute__((always_inline))

/* K rows of B per panel: 256 rows of four double vectors are 64 KB. */
#define CBP_GEMM_KC 256

/* One block of C: MR rows (at most 12, and at most 6 when NV > 2) by NV
 * vectors, the last masked by ``ml``.  MR and NV are constants at every
 * call, so each instance keeps its accumulators in named registers (an
 * array of vectors was spilled to the stack by GCC 12). */
#define CBP_R12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define CBP_GEMM_KERNEL(T, S, VT, MT, W, SFX)                                  \
CBP_GEMM_TARGET CBP_GEMM_INLINE void cbp_mk_##S(                               \
    const int MR, const int NV, ptrdiff_t k, const T *a, ptrdiff_t ars,        \
    ptrdiff_t acs, const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, MT ml,      \
    int load_c, const T *bias, int relu, const T *gate, ptrdiff_t ldg)         \
{                                                                              \
    const MT full = (MT)~(MT)0;                                                \
    CBP_R12(CBP_GEMM_DECL_##S)                                                 \
    if (load_c) {                                                              \
        CBP_R12(CBP_GEMM_LOADC_##S)                                            \
    } else if (bias) {                                                         \
        const VT z0 = _mm512_maskz_loadu_##SFX(NV == 1 ? ml : full, bias);     \
        const VT z1 = NV > 1 ? _mm512_maskz_loadu_##SFX(NV == 2 ? ml : full,   \
                                                        bias + W) : z0;        \
        const VT z2 = NV > 2 ? _mm512_maskz_loadu_##SFX(NV == 3 ? ml : full,   \
                                                        bias + 2 * W) : z0;    \
        const VT z3 = NV > 3 ? _mm512_maskz_loadu_##SFX(ml, bias + 3 * W) : z0;\
        CBP_R12(CBP_GEMM_BIAS)                                                 \
    }                                                                          \
    for (ptrdiff_t p = 0; p < k; p++) {                                        \
        const T *bp = b + p * ldb;                                             \
        const T *ap = a + p * acs;                                             \
        VT b0 = _mm512_maskz_loadu_##SFX(NV == 1 ? ml : full, bp);             \
        VT b1 = NV > 1 ? _mm512_maskz_loadu_##SFX(NV == 2 ? ml : full, bp + W) \
                       : b0;                                                   \
        VT b2 = NV > 2 ? _mm512_maskz_loadu_##SFX(NV == 3 ? ml : full,         \
                                                  bp + 2 * W) : b0;            \
        VT b3 = NV > 3 ? _mm512_maskz_loadu_##SFX(ml, bp + 3 * W) : b0;        \
        CBP_R12(CBP_GEMM_FMA_##S)                                              \
    }                                                                          \
    if (relu) {                                                                \
        const VT zero = _mm512_setzero_##SFX();                                \
        CBP_R12(CBP_GEMM_RELU_##S)                                             \
    }                                                                          \
    if (gate) {                                                                \
        const VT zero = _mm512_setzero_##SFX();                                \
        CBP_R12(CBP_GEMM_GATE_##S)                                             \
    }                                                                          \
    CBP_R12(CBP_GEMM_STORE_##S)                                                \
}

/* Per-row pieces of the kernel above, for row r. */
#define CBP_GEMM_DECL_d(r) __m512d c##r##_0 = _mm512_setzero_pd(),            \
    c##r##_1 = c##r##_0, c##r##_2 = c##r##_0, c##r##_3 = c##r##_0;
#define CBP_GEMM_DECL_f(r) __m512 c##r##_0 = _mm512_setzero_ps(),             \
    c##r##_1 = c##r##_0, c##r##_2 = c##r##_0, c##r##_3 = c##r##_0;

#define CBP_GEMM_LOADC(r, SFX, W)                                              \
    if (r < MR) {                                                              \
        c##r##_0 = _mm512_maskz_loadu_##SFX(NV == 1 ? ml : full, c + r * ldc); \
        if (NV > 1) c##r##_1 = _mm512_maskz_loadu_##SFX(NV == 2 ? ml : full,   \
                                                       c + r * ldc + W);       \
        if (NV > 2) c##r##_2 = _mm512_maskz_loadu_##SFX(NV == 3 ? ml : full,   \
                                                       c + r * ldc + 2 * W);   \
        if (NV > 3) c##r##_3 = _mm512_maskz_loadu_##SFX(ml, c + r * ldc + 3 * W);\
    }
#define CBP_GEMM_LOADC_d(r) CBP_GEMM_LOADC(r, pd, 8)
#define CBP_GEMM_LOADC_f(r) CBP_GEMM_LOADC(r, ps, 16)

/* The bias row as every row's starting sum (then each element is its bias
 * plus its terms in order). */
#define CBP_GEMM_BIAS(r)                                                       \
    if (r < MR) {                                                              \
        c##r##_0 = z0; c##r##_1 = z1; c##r##_2 = z2; c##r##_3 = z3;            \
    }

/* max(x, 0) with x first: NaN and -0 become +0, as (x > 0 ? x : 0) does. */
#define CBP_GEMM_RELU(r, SFX)                                                  \
    if (r < MR) {                                                              \
        c##r##_0 = _mm512_max_##SFX(c##r##_0, zero);                           \
        c##r##_1 = _mm512_max_##SFX(c##r##_1, zero);                           \
        c##r##_2 = _mm512_max_##SFX(c##r##_2, zero);                           \
        c##r##_3 = _mm512_max_##SFX(c##r##_3, zero);                           \
    }
#define CBP_GEMM_RELU_d(r) CBP_GEMM_RELU(r, pd)
#define CBP_GEMM_RELU_f(r) CBP_GEMM_RELU(r, ps)

/* A relu layer's backward step: zero where the activation is zero (a
 * select, as cbp_hidden_backward makes it). */
#define CBP_GEMM_GATE1(r, v, SFX, MASK, W)                                     \
    c##r##_##v = _mm512_maskz_mov_##SFX(                                       \
        _mm512_cmp_##SFX##_mask(_mm512_maskz_loadu_##SFX(MASK,                 \
                                    gate + r * ldg + v * W), zero, _CMP_NEQ_UQ),\
        c##r##_##v);
#define CBP_GEMM_GATE(r, SFX, W)                                               \
    if (r < MR) {                                                              \
        CBP_GEMM_GATE1(r, 0, SFX, NV == 1 ? ml : full, W)                      \
        if (NV > 1) { CBP_GEMM_GATE1(r, 1, SFX, NV == 2 ? ml : full, W) }      \
        if (NV > 2) { CBP_GEMM_GATE1(r, 2, SFX, NV == 3 ? ml : full, W) }      \
        if (NV > 3) { CBP_GEMM_GATE1(r, 3, SFX, ml, W) }                       \
    }
#define CBP_GEMM_GATE_d(r) CBP_GEMM_GATE(r, pd, 8)
#define CBP_GEMM_GATE_f(r) CBP_GEMM_GATE(r, ps, 16)

#define CBP_GEMM_FMA(r, SFX, VT)                                               \
    if (r < MR) {                                                              \
        VT ar = _mm512_set1_##SFX(ap[r * ars]);                                \
        c##r##_0 = _mm512_fmadd_##SFX(ar, b0, c##r##_0);                       \
        if (NV > 1) c##r##_1 = _mm512_fmadd_##SFX(ar, b1, c##r##_1);           \
        if (NV > 2) c##r##_2 = _mm512_fmadd_##SFX(ar, b2, c##r##_2);           \
        if (NV > 3) c##r##_3 = _mm512_fmadd_##SFX(ar, b3, c##r##_3);           \
    }
#define CBP_GEMM_FMA_d(r) CBP_GEMM_FMA(r, pd, __m512d)
#define CBP_GEMM_FMA_f(r) CBP_GEMM_FMA(r, ps, __m512)

#define CBP_GEMM_STORE(r, SFX, W)                                              \
    if (r < MR) {                                                              \
        _mm512_mask_storeu_##SFX(c + r * ldc, NV == 1 ? ml : full, c##r##_0);  \
        if (NV > 1) _mm512_mask_storeu_##SFX(c + r * ldc + W,                  \
                                             NV == 2 ? ml : full, c##r##_1);   \
        if (NV > 2) _mm512_mask_storeu_##SFX(c + r * ldc + 2 * W,              \
                                             NV == 3 ? ml : full, c##r##_2);   \
        if (NV > 3) _mm512_mask_storeu_##SFX(c + r * ldc + 3 * W, ml, c##r##_3);\
    }
#define CBP_GEMM_STORE_d(r) CBP_GEMM_STORE(r, pd, 8)
#define CBP_GEMM_STORE_f(r) CBP_GEMM_STORE(r, ps, 16)

/* The row count of a block, a constant in each branch. */
#define CBP_GEMM_ROWS(S, NV, CASES)                                            \
    switch (mr) { CASES(S, NV) }
#define CBP_GEMM_CASE(S, NV, R)                                                \
    case R: cbp_mk_##S(R, NV, kc, ai, ars, acs, bj, ldb, cij, ldc, ml, load_c, \
                       bj_bias, relu_now, gate_now, ldg);                      \
            break;
#define CBP_GEMM_CASES6(S, NV)                                                 \
    CBP_GEMM_CASE(S, NV, 1) CBP_GEMM_CASE(S, NV, 2) CBP_GEMM_CASE(S, NV, 3)    \
    CBP_GEMM_CASE(S, NV, 4) CBP_GEMM_CASE(S, NV, 5)                            \
    default: cbp_mk_##S(6, NV, kc, ai, ars, acs, bj, ldb, cij, ldc, ml, load_c, \
                        bj_bias, relu_now, gate_now, ldg);
#define CBP_GEMM_CASES12(S, NV)                                                \
    CBP_GEMM_CASE(S, NV, 1) CBP_GEMM_CASE(S, NV, 2) CBP_GEMM_CASE(S, NV, 3)    \
    CBP_GEMM_CASE(S, NV, 4) CBP_GEMM_CASE(S, NV, 5) CBP_GEMM_CASE(S, NV, 6)    \
    CBP_GEMM_CASE(S, NV, 7) CBP_GEMM_CASE(S, NV, 8) CBP_GEMM_CASE(S, NV, 9)    \
    CBP_GEMM_CASE(S, NV, 10) CBP_GEMM_CASE(S, NV, 11)                          \
    default: cbp_mk_##S(12, NV, kc, ai, ars, acs, bj, ldb, cij, ldc, ml,       \
                        load_c, bj_bias, relu_now, gate_now, ldg);

#define CBP_GEMM_DRIVER(T, S, MT, W, VT, SFX)                                   \
CBP_GEMM_KERNEL(T, S, VT, MT, W, SFX)                                          \
                                                                               \
CBP_GEMM_TARGET static void cbp_gemm_avx512_##S(                               \
    int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *a, ptrdiff_t lda,  \
    const T *b, ptrdiff_t ldb, int beta, T *c, ptrdiff_t ldc, const T *bias,   \
    int relu, const T *gate, ptrdiff_t ldg)                                    \
{                                                                              \
    const ptrdiff_t ars = ta ? 1 : lda, acs = ta ? lda : 1;                    \
    if (k == 0) {                                                              \
        for (ptrdiff_t i = 0; i < m; i++)                                      \
            for (ptrdiff_t j = 0; j < n; j++) {                                \
                T x = beta ? c[i * ldc + j] : (T)0;                            \
                if (bias) x = bias[j];                                         \
                if (relu) x = x > (T)0 ? x : (T)0;                             \
                if (gate && gate[i * ldg + j] == (T)0) x = (T)0;               \
                c[i * ldc + j] = x;                                            \
            }                                                                  \
        return;                                                                \
    }                                                                          \
    for (ptrdiff_t p0 = 0; p0 < k; p0 += CBP_GEMM_KC) {                        \
        const ptrdiff_t kc = k - p0 < CBP_GEMM_KC ? k - p0 : CBP_GEMM_KC;      \
        const int load_c = beta || p0 > 0;                                     \
        const int relu_now = relu && p0 + kc == k;                             \
        for (ptrdiff_t j = 0; j < n; j += 4 * W) {                             \
            const ptrdiff_t nj = n - j < 4 * W ? n - j : 4 * W;                \
            const int nv = (int)((nj + W - 1) / W);                            \
            const int last = (int)(nj - W * (nv - 1));                         \
            const MT ml = last == W ? (MT)~(MT)0 : (MT)((1u << last) - 1u);    \
            const T *bj = b + p0 * ldb + j;                                    \
            const T *bj_bias = bias ? bias + j : NULL;                         \
            const ptrdiff_t rows = nv > 2 ? 6 : 12;                            \
            for (ptrdiff_t i = 0; i < m; i += rows) {                          \
                const int mr = (int)(m - i < rows ? m - i : rows);             \
                const T *ai = a + i * ars + p0 * acs;                          \
                T *cij = c + i * ldc + j;                                      \
                const T *gate_now = gate && p0 + kc == k ? gate + i * ldg + j   \
                                                         : NULL;               \
                switch (nv) {                                                  \
                case 1: CBP_GEMM_ROWS(S, 1, CBP_GEMM_CASES12) break;           \
                case 2: CBP_GEMM_ROWS(S, 2, CBP_GEMM_CASES12) break;           \
                case 3: CBP_GEMM_ROWS(S, 3, CBP_GEMM_CASES6) break;            \
                default: CBP_GEMM_ROWS(S, 4, CBP_GEMM_CASES6) break;           \
                }                                                              \
            }                                                                  \
        }                                                                      \
    }                                                                          \
}

CBP_GEMM_DRIVER(double, d, __mmask8, 8, __m512d, pd)
CBP_GEMM_DRIVER(float, f, __mmask16, 16, __m512, ps)

/* 1 when this CPU and OS run AVX-512F (the compiler's check reads XCR0, so
 * an OS that does not save the ZMM state says no). */
static inline int cbp_gemm_ready(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

#else /* no AVX-512 code in this build: the caller always uses BLAS */

static inline int cbp_gemm_ready(void) { return 0; }

#endif

/* The entry points, one per type; without AVX-512 code (callers check
 * cbp_gemm_ready() first) they do nothing. */
#ifdef CBP_GEMM
#define CBP_GEMM_CALL(S)                                                       \
    cbp_gemm_avx512_##S(ta, m, n, k, a, lda, b, ldb, beta, c, ldc, bias, relu, \
                        gate, ldg);
#else
#define CBP_GEMM_CALL(S)                                                       \
    (void)ta; (void)m; (void)n; (void)k; (void)a; (void)lda; (void)b;          \
    (void)ldb; (void)beta; (void)c; (void)ldc; (void)bias; (void)relu;         \
    (void)gate; (void)ldg;
#endif
#define CBP_GEMM_ENTRY(T, S)                                                   \
static inline void cbp_gemm_##S(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, \
                                const T *a, ptrdiff_t lda, const T *b,         \
                                ptrdiff_t ldb, int beta, T *c, ptrdiff_t ldc,  \
                                const T *bias, int relu, const T *gate,        \
                                ptrdiff_t ldg)                                 \
{                                                                              \
    CBP_GEMM_CALL(S)                                                           \
}
CBP_GEMM_ENTRY(double, d)
CBP_GEMM_ENTRY(float, f)

#endif /* CBP_GEMM_H */
