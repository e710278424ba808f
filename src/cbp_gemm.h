/*
 * cbp_gemm.h -- matrix products for the shapes a row chunk makes, on AVX-512.
 *
 * Row-major C[m, n] = op(A)[m, k] B[k, n] (+ C when ``beta``; or + the row
 * ``bias`` under every row, then optionally relu; or zeroed where ``gate``,
 * a relu layer's activations, is zero), where op(A)
 * is A (stored m x k, lda) or A^T (A stored k x m, lda) and B is stored
 * k x n (ldb).  Optionally B's row p is row ``bidx[p]`` of the stored B, and
 * C's row i is row ``cidx[i]`` of the stored C (the first layer's products
 * on a chunk whose all-zero columns were left out, see cbp_gather_cols).
 * With ``csum``, the column sums of B are also made (or, with ``beta``,
 * added) there, each over the rows in order, as the first row block passes
 * over them: a layer's bias gradient beside its weight gradient, on the FP
 * adders the FMAs leave idle, without a second pass over the deltas.
 * These are the products of one chunk of a mini-batch: a
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
#include <stdint.h>

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
    const int MR, const int NV, const int MD, ptrdiff_t k, const T *a,         \
    ptrdiff_t ars, ptrdiff_t acs, const T *b, ptrdiff_t ldb, const int *bidx,  \
    T *c, ptrdiff_t ldc, const int *cidx, MT ml, int load_c, const T *bias,    \
    int relu, const T *gate, ptrdiff_t ldg, T *csum)                           \
{                                                                              \
    typedef T cbp_gemm_t;                                                      \
    const MT full = (MT)~(MT)0;                                                \
    const MT m0 = NV == 1 ? ml : full, m1 = NV == 2 ? ml : full;               \
    const MT m2 = NV == 3 ? ml : full;                                         \
    VT s0 = _mm512_setzero_##SFX(), s1 = s0, s2 = s0, s3 = s0;                 \
    CBP_R12(CBP_GEMM_DECL_##S)                                                 \
    if (MD == 2) {                                                             \
        s0 = _mm512_maskz_loadu_##SFX(m0, csum);                               \
        s1 = NV > 1 ? _mm512_maskz_loadu_##SFX(m1, csum + W) : s0;             \
        s2 = NV > 2 ? _mm512_maskz_loadu_##SFX(m2, csum + 2 * W) : s0;         \
        s3 = NV > 3 ? _mm512_maskz_loadu_##SFX(ml, csum + 3 * W) : s0;         \
    }                                                                          \
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
        const T *bp = MD == 1 ? b + (ptrdiff_t)bidx[p] * ldb : b + p * ldb;    \
        const T *ap = a + p * acs;                                             \
        VT b0 = _mm512_maskz_loadu_##SFX(NV == 1 ? ml : full, bp);             \
        VT b1 = NV > 1 ? _mm512_maskz_loadu_##SFX(NV == 2 ? ml : full, bp + W) \
                       : b0;                                                   \
        VT b2 = NV > 2 ? _mm512_maskz_loadu_##SFX(NV == 3 ? ml : full,         \
                                                  bp + 2 * W) : b0;            \
        VT b3 = NV > 3 ? _mm512_maskz_loadu_##SFX(ml, bp + 3 * W) : b0;        \
        CBP_R12(CBP_GEMM_FMA_##S)                                              \
        if (MD == 2) {                                                         \
            s0 = _mm512_add_##SFX(s0, b0);                                     \
            if (NV > 1) s1 = _mm512_add_##SFX(s1, b1);                         \
            if (NV > 2) s2 = _mm512_add_##SFX(s2, b2);                         \
            if (NV > 3) s3 = _mm512_add_##SFX(s3, b3);                         \
        }                                                                      \
    }                                                                          \
    if (MD == 2) {                                                             \
        _mm512_mask_storeu_##SFX(csum, m0, s0);                                \
        if (NV > 1) _mm512_mask_storeu_##SFX(csum + W, m1, s1);                \
        if (NV > 2) _mm512_mask_storeu_##SFX(csum + 2 * W, m2, s2);            \
        if (NV > 3) _mm512_mask_storeu_##SFX(csum + 3 * W, ml, s3);            \
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

/* Row r of the block of C: the next row, or row ``cidx[r]`` of C when the
 * caller gave the rows' indices (a gradient of the columns that are not
 * all zero, see cbp_gather_cols). */
#define CBP_GEMM_CROW(r) (cidx ? c + (ptrdiff_t)cidx[r] * ldc : c + (r) * ldc)

#define CBP_GEMM_LOADC(r, SFX, W)                                              \
    if (r < MR) {                                                              \
        const cbp_gemm_t *cr = CBP_GEMM_CROW(r);                                        \
        c##r##_0 = _mm512_maskz_loadu_##SFX(NV == 1 ? ml : full, cr);          \
        if (NV > 1) c##r##_1 = _mm512_maskz_loadu_##SFX(NV == 2 ? ml : full,   \
                                                       cr + W);                \
        if (NV > 2) c##r##_2 = _mm512_maskz_loadu_##SFX(NV == 3 ? ml : full,   \
                                                       cr + 2 * W);            \
        if (NV > 3) c##r##_3 = _mm512_maskz_loadu_##SFX(ml, cr + 3 * W);       \
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
        cbp_gemm_t *cr = CBP_GEMM_CROW(r);                                            \
        _mm512_mask_storeu_##SFX(cr, NV == 1 ? ml : full, c##r##_0);           \
        if (NV > 1) _mm512_mask_storeu_##SFX(cr + W, NV == 2 ? ml : full,      \
                                             c##r##_1);                        \
        if (NV > 2) _mm512_mask_storeu_##SFX(cr + 2 * W, NV == 3 ? ml : full,  \
                                             c##r##_2);                        \
        if (NV > 3) _mm512_mask_storeu_##SFX(cr + 3 * W, ml, c##r##_3);        \
    }
#define CBP_GEMM_STORE_d(r) CBP_GEMM_STORE(r, pd, 8)
#define CBP_GEMM_STORE_f(r) CBP_GEMM_STORE(r, ps, 16)

/* The row count of a block, a constant in each branch (as are NV and MD:
 * 0, or 1 when B's rows come by index, or 2 when the block also sums B's
 * rows into csum). */
#define CBP_GEMM_ROWS(S, NV, MD, CASES)                                        \
    switch (mr) { CASES(S, NV, MD) }
#define CBP_GEMM_CASE(S, NV, MD, R)                                            \
    case R: cbp_mk_##S(R, NV, MD, kc, ai, ars, acs, bj, ldb, bi, cij, ldc, ci, \
                       ml, load_c, bj_bias, relu_now, gate_now, ldg, cs);          \
            break;
#define CBP_GEMM_CASES6(S, NV, MD)                                             \
    CBP_GEMM_CASE(S, NV, MD, 1) CBP_GEMM_CASE(S, NV, MD, 2)                    \
    CBP_GEMM_CASE(S, NV, MD, 3) CBP_GEMM_CASE(S, NV, MD, 4)                    \
    CBP_GEMM_CASE(S, NV, MD, 5)                                                \
    default: cbp_mk_##S(6, NV, MD, kc, ai, ars, acs, bj, ldb, bi, cij, ldc,    \
                        ci, ml, load_c, bj_bias, relu_now, gate_now, ldg, cs);
#define CBP_GEMM_CASES12(S, NV, MD)                                            \
    CBP_GEMM_CASE(S, NV, MD, 1) CBP_GEMM_CASE(S, NV, MD, 2)                    \
    CBP_GEMM_CASE(S, NV, MD, 3) CBP_GEMM_CASE(S, NV, MD, 4)                    \
    CBP_GEMM_CASE(S, NV, MD, 5) CBP_GEMM_CASE(S, NV, MD, 6)                    \
    CBP_GEMM_CASE(S, NV, MD, 7) CBP_GEMM_CASE(S, NV, MD, 8)                    \
    CBP_GEMM_CASE(S, NV, MD, 9) CBP_GEMM_CASE(S, NV, MD, 10)                   \
    CBP_GEMM_CASE(S, NV, MD, 11)                                               \
    default: cbp_mk_##S(12, NV, MD, kc, ai, ars, acs, bj, ldb, bi, cij, ldc,   \
                        ci, ml, load_c, bj_bias, relu_now, gate_now, ldg, cs);
#define CBP_GEMM_WIDTHS(S, MD)                                                 \
    switch (nv) {                                                              \
    case 1: CBP_GEMM_ROWS(S, 1, MD, CBP_GEMM_CASES12) break;                   \
    case 2: CBP_GEMM_ROWS(S, 2, MD, CBP_GEMM_CASES12) break;                   \
    case 3: CBP_GEMM_ROWS(S, 3, MD, CBP_GEMM_CASES6) break;                    \
    default: CBP_GEMM_ROWS(S, 4, MD, CBP_GEMM_CASES6) break;                   \
    }

#define CBP_GEMM_DRIVER(T, S, MT, W, VT, SFX)                                   \
CBP_GEMM_KERNEL(T, S, VT, MT, W, SFX)                                          \
                                                                               \
CBP_GEMM_TARGET static void cbp_gemm_avx512_##S(                               \
    int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *a, ptrdiff_t lda,  \
    const T *b, ptrdiff_t ldb, const int *bidx, int beta, T *c, ptrdiff_t ldc, \
    const int *cidx, const T *bias, int relu, const T *gate, ptrdiff_t ldg,    \
    T *csum)                                                                   \
{                                                                              \
    const ptrdiff_t ars = ta ? 1 : lda, acs = ta ? lda : 1;                    \
    if (csum && !beta)                                                         \
        for (ptrdiff_t j = 0; j < n; j++) csum[j] = (T)0;                      \
    if (csum && m == 0) {                                                      \
        /* No row block to sum them in. */                                     \
        for (ptrdiff_t p = 0; p < k; p++)                                      \
            for (ptrdiff_t j = 0; j < n; j++) csum[j] += b[p * ldb + j];       \
    }                                                                          \
    if (k == 0) {                                                              \
        for (ptrdiff_t i = 0; i < m; i++) {                                    \
            T *crow = c + (cidx ? (ptrdiff_t)cidx[i] : i) * ldc;               \
            for (ptrdiff_t j = 0; j < n; j++) {                                \
                T x = beta ? crow[j] : (T)0;                                   \
                if (bias) x = bias[j];                                         \
                if (relu) x = x > (T)0 ? x : (T)0;                             \
                if (gate && gate[i * ldg + j] == (T)0) x = (T)0;               \
                crow[j] = x;                                                   \
            }                                                                  \
        }                                                                      \
        return;                                                                \
    }                                                                          \
    for (ptrdiff_t p0 = 0; p0 < k; p0 += CBP_GEMM_KC) {                        \
        const ptrdiff_t kc = k - p0 < CBP_GEMM_KC ? k - p0 : CBP_GEMM_KC;      \
        const int load_c = beta || p0 > 0;                                     \
        const int relu_now = relu && p0 + kc == k;                             \
        const int *bi = bidx ? bidx + p0 : NULL;                               \
        for (ptrdiff_t j = 0; j < n; j += 4 * W) {                             \
            const ptrdiff_t nj = n - j < 4 * W ? n - j : 4 * W;                \
            const int nv = (int)((nj + W - 1) / W);                            \
            const int last = (int)(nj - W * (nv - 1));                         \
            const MT ml = last == W ? (MT)~(MT)0 : (MT)((1u << last) - 1u);    \
            const T *bj = b + (bidx ? 0 : p0 * ldb) + j;                       \
            const T *bj_bias = bias ? bias + j : NULL;                         \
            const ptrdiff_t rows = nv > 2 ? 6 : 12;                            \
            for (ptrdiff_t i = 0; i < m; i += rows) {                          \
                const int mr = (int)(m - i < rows ? m - i : rows);             \
                const T *ai = a + i * ars + p0 * acs;                          \
                const int *ci = cidx ? cidx + i : NULL;                        \
                T *cij = c + (cidx ? 0 : i * ldc) + j;                         \
                const T *gate_now = gate && p0 + kc == k ? gate + i * ldg + j   \
                                                         : NULL;               \
                T *cs = csum ? csum + j : NULL;                                \
                if (bi) {                                                      \
                    CBP_GEMM_WIDTHS(S, 1)                                      \
                } else if (cs && i == 0) {                                     \
                    CBP_GEMM_WIDTHS(S, 2)                                      \
                } else {                                                       \
                    CBP_GEMM_WIDTHS(S, 0)                                      \
                }                                                              \
            }                                                                  \
        }                                                                      \
    }                                                                          \
}

CBP_GEMM_DRIVER(double, d, __mmask8, 8, __m512d, pd)
CBP_GEMM_DRIVER(float, f, __mmask16, 16, __m512, ps)

/* Which columns of each row of X (n x nf) are not zero: bit j of word w
 * of a row's w64 = (nf + 63) / 64 words is column 64 w + j.  NaN counts
 * as non-zero, -0 as zero.  Made once a fit; a chunk's columns in use are
 * then the OR of its rows' words (see cbp_gather_cols). */
#define CBP_ROW_MASKS(T, S, MT, W, SFX)                                        \
CBP_GEMM_TARGET static void cbp_row_masks_avx512_##S(                          \
    ptrdiff_t n, const T *X, ptrdiff_t nf, uint64_t *out)                      \
{                                                                              \
    const ptrdiff_t w64 = (nf + 63) / 64, ng = (nf + W - 1) / W;               \
    const MT full = (MT)~(MT)0;                                                \
    const MT tail = nf % W ? (MT)((1u << (nf % W)) - 1u) : full;               \
    for (ptrdiff_t i = 0; i < n; i++) {                                        \
        const T *x = X + i * nf;                                               \
        uint64_t *o = out + i * w64;                                           \
        for (ptrdiff_t w = 0; w < w64; w++) o[w] = 0;                          \
        for (ptrdiff_t g = 0; g < ng; g++) {                                   \
            const MT lm = g == ng - 1 ? tail : full;                           \
            const MT m = _mm512_mask_cmp_##SFX##_mask(                         \
                lm, _mm512_maskz_loadu_##SFX(lm, x + g * W),                   \
                _mm512_setzero_##SFX(), _CMP_NEQ_UQ);                          \
            o[g * W / 64] |= (uint64_t)m << (g * W % 64);                      \
        }                                                                      \
    }                                                                          \
}

/* Rows rows[0:nr] of X (nf columns) gathered for a chunk's products, with
 * the columns that are zero in every one of those rows left out when there
 * are at least min_drop of them: each gathered row (nf apart in xbuf) then
 * holds only the other columns' values, in order, and idx their indices.
 * The first layer's forward product reads W0's rows by those indices and
 * its gradient writes dW0's rows by them (the caller zeroes the others):
 * a term with a zero input adds a signed zero to a sum, which changes
 * nothing but the sign of a zero, so the products give the same values
 * with fewer terms.  Returns the columns kept, or nf, having gathered
 * nothing, when too few are left out (the caller gathers the whole rows).
 * masks: the rows' words of cbp_row_masks;
 * words: room for w64 words; perms: for (nf + 7) / 8 vectors. */
#define CBP_GATHER_AHEAD 8
#define CBP_GATHER_COLS(T, S, MT, W, SFX, EPI, IOTA)                           \
CBP_GEMM_TARGET static ptrdiff_t cbp_gather_cols_avx512_##S(                   \
    ptrdiff_t nr, const ptrdiff_t *rows, const T *X, ptrdiff_t nf,             \
    const uint64_t *masks, T *xbuf, int *idx, uint64_t *words, __m512i *perms, \
    ptrdiff_t min_drop)                                                        \
{                                                                              \
    const ptrdiff_t w64 = (nf + 63) / 64, ng = (nf + W - 1) / W;               \
    ptrdiff_t kept = 0;                                                        \
    for (ptrdiff_t r = 0; r < nr && r < CBP_GATHER_AHEAD; r++)                 \
        for (ptrdiff_t b = 0; b < nf * (ptrdiff_t)sizeof(T); b += 64)          \
            _mm_prefetch((const char *)(X + rows[r] * nf) + b, _MM_HINT_T0);   \
    for (ptrdiff_t w = 0; w < w64; w++) {                                      \
        uint64_t any = 0;                                                      \
        for (ptrdiff_t r = 0; r < nr; r++) any |= masks[rows[r] * w64 + w];    \
        words[w] = any;                                                        \
        kept += __builtin_popcountll(any);                                     \
    }                                                                          \
    if (nf - kept < min_drop || kept == nf) return nf;                         \
    kept = 0;                                                                  \
    for (ptrdiff_t g = 0; g < ng; g++) {                                       \
        const MT m = (MT)(words[g * W / 64] >> (g * W % 64));                  \
        for (int bit = 0; bit < W; bit++)                                      \
            if (m >> bit & 1u) idx[kept++] = (int)(g * W + bit);               \
        /* A group's mask is the same in every row: one compress of the     \
         * lane numbers gives the permutation that every row then uses (a   \
         * permute is much cheaper than a compress on AMD's cores). */      \
        perms[g] = _mm512_maskz_compress_##EPI(m, IOTA);                       \
    }                                                                          \
    for (ptrdiff_t r = 0; r < nr; r++) {                                       \
        const T *x = X + rows[r] * nf;                                         \
        T *o = xbuf + r * nf;                                                  \
        /* The rows are scattered over X: ask for a later row's lines now.   \
         * (masked loads of lines not yet in cache were the loop's cost.) */ \
        if (r + CBP_GATHER_AHEAD < nr) {                                       \
            const char *ahead = (const char *)(X + rows[r + CBP_GATHER_AHEAD] * nf);\
            for (ptrdiff_t b = 0; b < nf * (ptrdiff_t)sizeof(T); b += 64)      \
                _mm_prefetch(ahead + b, _MM_HINT_T0);                          \
        }                                                                      \
        for (ptrdiff_t g = 0; g < ng; g++) {                                   \
            const MT m = (MT)(words[g * W / 64] >> (g * W % 64));              \
            const int cnt = __builtin_popcount((unsigned)m);                   \
            _mm512_mask_storeu_##SFX(o, (MT)((1u << cnt) - 1u),                \
                _mm512_permutexvar_##SFX(perms[g],                             \
                                         _mm512_maskz_loadu_##SFX(m, x + g * W)));\
            o += cnt;                                                          \
        }                                                                      \
    }                                                                          \
    return kept;                                                               \
}

CBP_ROW_MASKS(double, d, __mmask8, 8, pd)
CBP_ROW_MASKS(float, f, __mmask16, 16, ps)
CBP_GATHER_COLS(double, d, __mmask8, 8, pd, epi64,
                _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0))
CBP_GATHER_COLS(float, f, __mmask16, 16, ps, epi32,
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                 1, 0))

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
    cbp_gemm_avx512_##S(ta, m, n, k, a, lda, b, ldb, bidx, beta, c, ldc, cidx, \
                        bias, relu, gate, ldg, csum);
#else
#define CBP_GEMM_CALL(S)                                                       \
    (void)ta; (void)m; (void)n; (void)k; (void)a; (void)lda; (void)b;          \
    (void)ldb; (void)bidx; (void)beta; (void)c; (void)ldc; (void)cidx;         \
    (void)bias; (void)relu; (void)gate; (void)ldg; (void)csum;
#endif
#define CBP_GEMM_ENTRY(T, S)                                                   \
static inline void cbp_gemm_##S(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, \
                                const T *a, ptrdiff_t lda, const T *b,         \
                                ptrdiff_t ldb, const int *bidx, int beta,      \
                                T *c, ptrdiff_t ldc, const int *cidx,          \
                                const T *bias, int relu, const T *gate,        \
                                ptrdiff_t ldg, T *csum)                        \
{                                                                              \
    CBP_GEMM_CALL(S)                                                           \
}
CBP_GEMM_ENTRY(double, d)
CBP_GEMM_ENTRY(float, f)

/* cbp_row_masks and cbp_gather_cols (see above) where the AVX-512 code is
 * built; elsewhere (callers check cbp_gemm_ready() first) the masks are
 * made in plain C and the gather leaves nothing out (nf returned). */
#ifdef CBP_GEMM
#define CBP_MASKS_CALL(S) cbp_row_masks_avx512_##S(n, X, nf, out);
#define CBP_GATHER_CALL(S)                                                     \
    return cbp_gather_cols_avx512_##S(nr, rows, X, nf, masks, xbuf, idx,       \
                                      words, (__m512i *)perms, min_drop);
#else
#define CBP_MASKS_CALL(S)                                                      \
    const ptrdiff_t w64 = (nf + 63) / 64;                                      \
    for (ptrdiff_t i = 0; i < n; i++)                                          \
        for (ptrdiff_t w = 0; w < w64; w++) {                                  \
            uint64_t bits = 0;                                                 \
            for (ptrdiff_t j = 64 * w; j < nf && j < 64 * w + 64; j++)         \
                if (X[i * nf + j] != 0 || X[i * nf + j] != X[i * nf + j])      \
                    bits |= (uint64_t)1 << (j - 64 * w);                       \
            out[i * w64 + w] = bits;                                           \
        }
#define CBP_GATHER_CALL(S)                                                     \
    (void)nr; (void)rows; (void)X; (void)masks; (void)xbuf; (void)idx;         \
    (void)words; (void)perms; (void)min_drop;                                  \
    return nf;
#endif
#define CBP_GATHER_ENTRY(T, S)                                                 \
static inline void cbp_row_masks_##S(ptrdiff_t n, const T *X, ptrdiff_t nf,    \
                                     uint64_t *out)                            \
{                                                                              \
    CBP_MASKS_CALL(S)                                                          \
}                                                                              \
static inline ptrdiff_t cbp_gather_cols_##S(ptrdiff_t nr, const ptrdiff_t *rows,\
                                            const T *X, ptrdiff_t nf,          \
                                            const uint64_t *masks, T *xbuf,    \
                                            int *idx, uint64_t *words,         \
                                            void *perms, ptrdiff_t min_drop)   \
{                                                                              \
    CBP_GATHER_CALL(S)                                                         \
}
CBP_GATHER_ENTRY(double, d)
CBP_GATHER_ENTRY(float, f)

#endif /* CBP_GEMM_H */
