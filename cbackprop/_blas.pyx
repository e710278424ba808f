# cython: language_level=3
"""The one door to matrix products: fused float/double wrappers over
scipy.linalg.cython_blas, or our own AVX-512 products.

Every array in cbackprop is C-ordered (row-major) while BLAS is column-major.
A row-major ``C = op(A) op(B)`` is the column-major product
``C^T = op(B)^T op(A)^T``, so :func:`mm_rowmajor` swaps the operands and hands
the same buffers to ``?gemm`` without copying anything.

On a CPU with AVX-512, products whose B is not transposed (every product of
a row chunk: the backward ones read transposed weight copies, see
_kernels.WT_OWN_MAX) run our own one-thread kernels instead
(``src/cbp_gemm.h``), which can also add a bias and apply relu, or relu's
derivative, as they store (:func:`mm_own`).
BLAS is held to one thread while the kernels run anyway, and OpenBLAS
picks its kernels by CPU model, so where it does not know the CPU, or is
told another (``OPENBLAS_CORETYPE``), it runs AVX2 code at half the rate.
The choice depends on the CPU and the call, never on the thread count, so
results stay bitwise reproducible for any number of threads.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm

import os
import time

import numpy as np


cdef extern from "cbp_gemm.h" nogil:
    int cbp_gemm_ready()
    void cbp_gemm_d(int ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double* a,
                    Py_ssize_t lda, const double* b, Py_ssize_t ldb, const int* bidx,
                    int beta, double* c, Py_ssize_t ldc, const int* cidx,
                    const double* bias, int relu, const double* gate, Py_ssize_t ldg,
                    double* csum)
    void cbp_gemm_f(int ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* a,
                    Py_ssize_t lda, const float* b, Py_ssize_t ldb, const int* bidx,
                    int beta, float* c, Py_ssize_t ldc, const int* cidx,
                    const float* bias, int relu, const float* gate, Py_ssize_t ldg,
                    float* csum)


cdef bint OWN_READY = cbp_gemm_ready() != 0
# CBACKPROP_OWN_GEMM=0 keeps every product on BLAS (CI runs the suite both
# ways; a user may compare or fall back).
cdef bint OWN_GEMM = OWN_READY and os.environ.get("CBACKPROP_OWN_GEMM", "1") != "0"


cdef bint own_gemm_on() noexcept nogil:
    """Whether mm_rowmajor runs B-not-transposed products on our own kernels
    (the kernels then give every backward product a transposed weight copy
    to run on them, see _kernels.WT_OWN_MAX)."""
    return OWN_GEMM


def own_gemm_enabled():
    """True when products run on cbackprop's own AVX-512 kernels now (the
    CPU has them and neither CBACKPROP_OWN_GEMM=0 nor a test turned them
    off)."""
    return bool(OWN_GEMM)


def own_gemm_ready():
    """True when this build and CPU can run cbackprop's AVX-512 products."""
    return bool(OWN_READY)


def _set_own_gemm(bint on):
    """Use the AVX-512 products where they apply (``on``, the default when
    the CPU has them) or always BLAS; returns the previous setting.  For
    tests and benchmarks: switch only between fits."""
    global OWN_GEMM
    cdef bint before = OWN_GEMM
    OWN_GEMM = on and OWN_READY
    return before


cdef void mm_rowmajor(BlasTrans ta, BlasTrans tb, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C."""
    cdef char cta = <char>ta
    cdef char ctb = <char>tb
    if m == 0 or n == 0:
        return
    if OWN_GEMM and tb == NoTrans and alpha == 1 and (beta == 0 or beta == 1):
        if floating is float:
            cbp_gemm_f(ta == Trans, m, n, k, a, lda, b, ldb, NULL, beta == 1, c, ldc,
                       NULL, NULL, 0, NULL, 0, NULL)
        else:
            cbp_gemm_d(ta == Trans, m, n, k, a, lda, b, ldb, NULL, beta == 1, c, ldc,
                       NULL, NULL, 0, NULL, 0, NULL)
        return
    if floating is float:
        sgemm(&ctb, &cta, &n, &m, &k, &alpha, <float*>b, &ldb,
              <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ctb, &cta, &n, &m, &k, &alpha, <double*>b, &ldb,
              <double*>a, &lda, &beta, c, &ldc)


cdef void mm_own(int m, int n, int k, const floating* a, int lda, const floating* b,
                 int ldb, const floating* bias, bint relu, const floating* gate,
                 int ldg, floating* c, int ldc, bint ta=False, const int* bidx=NULL,
                 const int* cidx=NULL, floating* csum=NULL) noexcept nogil:
    """Row-major ``C[m, n] = op(A)[m, k] @ B[k, n]`` on our own products only
    (``own_gemm_on()``), finished as it is stored: with ``bias`` (or NULL)
    each element starts from its column's bias and ``relu`` then applies
    relu, a layer's forward product; with ``gate`` (or NULL; a relu layer's
    activations, ``ldg`` apart) elements whose activation is zero become
    zero, a relu layer's backward product.  With BLAS the caller makes
    those a second pass.  ``ta``: op(A) is A^T (A stored k x m).  ``bidx``
    (or NULL): B's row p is row ``bidx[p]`` of ``b``; ``cidx`` (or NULL):
    C's row i is row ``cidx[i]`` of ``c`` (the first layer's products on a
    chunk whose all-zero columns were left out, see cbp_gather_cols).
    ``csum`` (or NULL): also B's column sums, each over the rows in order (a
    layer's bias gradient beside its weight gradient)."""
    if n == 0 or (m == 0 and csum == NULL):
        return
    if floating is float:
        cbp_gemm_f(ta, m, n, k, a, lda, b, ldb, bidx, 0, c, ldc, cidx, bias, relu, gate,
                   ldg, csum)
    else:
        cbp_gemm_d(ta, m, n, k, a, lda, b, ldb, bidx, 0, c, ldc, cidx, bias, relu, gate,
                   ldg, csum)


def _py_mm_rowmajor(floating[:, :] a, floating[:, :] b, bint trans_a=False,
                    bint trans_b=False, c=None, Py_ssize_t pad=0):
    """Python twin of :func:`mm_rowmajor` so tests can compare it with NumPy.

    ``a`` and ``b`` may be views whose rows are spaced wider than they are
    long (their leading dimension).  ``c``: accumulate into a copy of it
    (beta = 1) instead of overwriting zeros.  The result is the first
    columns of an array ``pad`` columns wider, whose other columns start as
    NaN, so a test can check that nothing was written past each row.
    Returns ``(result, padded)``, or the result alone when ``pad`` is 0.
    """
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    cdef Py_ssize_t item = sizeof(floating)
    if k != kb:
        raise ValueError(f"inner dimensions differ: {k} != {kb}")
    if a.strides[1] != item or b.strides[1] != item:
        raise ValueError("rows of a and b must be contiguous")
    dtype = np.float32 if floating is float else np.float64
    padded = np.full((m, n + pad), np.nan, dtype=dtype)
    padded[:, :n] = 0 if c is None else c
    cdef floating[:, ::1] cv = padded
    cdef int lda = <int>max(a.strides[0] // item, a.shape[1], 1)
    cdef int ldb = <int>max(b.strides[0] // item, b.shape[1], 1)
    if m > 0 and n > 0 and k > 0:
        mm_rowmajor(Trans if trans_a else NoTrans, Trans if trans_b else NoTrans,
                    m, n, k, <floating>1, &a[0, 0], lda, &b[0, 0], ldb,
                    <floating>(0 if c is None else 1), &cv[0, 0], <int>(n + pad))
    if pad:
        return padded[:, :n], padded
    return padded[:, :n].copy()


def _py_mm_own(floating[:, ::1] a, floating[:, ::1] b, bias=None, bint relu=False,
               gate=None, bint trans_a=False, bidx=None, cidx=None, c_rows=None,
               bint colsum=False):
    """Python twin of :func:`mm_own` for tests; our own products only.

    ``bias`` and ``relu``, or ``gate``, or neither (the plain product).
    ``trans_a``: multiply by ``a.T``.  ``bidx`` (int32): B's rows are those
    rows of ``b``.  ``cidx`` (int32): the result's rows go to those rows of
    a ``c_rows``-row output whose other rows stay NaN.  ``colsum``: return
    ``(product, column sums of B)``.
    """
    if not OWN_GEMM:
        raise RuntimeError("our own products are off or not available here")
    dtype = np.float32 if floating is float else np.float64
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int n = b.shape[1]
    cdef const int[::1] bi
    cdef const int[::1] ci
    cdef const int* bp = NULL
    cdef const int* cp = NULL
    cdef const floating* biasp = NULL
    cdef const floating* gatep = NULL
    cdef floating[::1] bv
    cdef floating[:, ::1] gv
    cdef int ldg = 0
    if bidx is not None:
        bi = np.ascontiguousarray(bidx, dtype=np.int32)
        if bi.shape[0] != k or (k and (np.min(bi) < 0 or np.max(bi) >= b.shape[0])):
            raise ValueError("bidx needs one row of b for each column of op(a)")
        if k:
            bp = &bi[0]
    elif b.shape[0] != k:
        raise ValueError("shapes do not match")
    rows_out = m
    if cidx is not None:
        ci = np.ascontiguousarray(cidx, dtype=np.int32)
        rows_out = m if c_rows is None else int(c_rows)
        if ci.shape[0] != m or (m and (np.min(ci) < 0 or np.max(ci) >= rows_out)):
            raise ValueError("cidx needs one row of the output for each row of op(a)")
        if m:
            cp = &ci[0]
    if bias is not None and gate is not None:
        raise ValueError("give bias or gate, not both")
    if bias is not None:
        bv = bias
        if bv.shape[0] != n:
            raise ValueError("shapes do not match")
        biasp = &bv[0]
    if gate is not None:
        gv = gate
        if gv.shape[0] != m or gv.shape[1] != n:
            raise ValueError("shapes do not match")
        gatep = &gv[0, 0]
        ldg = gv.shape[1]
    out = np.full((rows_out, n), np.nan, dtype=dtype)
    sums = np.full(n, np.nan, dtype=dtype)
    cdef floating[:, ::1] c = out
    cdef floating[::1] sv = sums
    if n:
        mm_own(m, n, k, &a[0, 0] if a.size else NULL, a.shape[1],
               &b[0, 0] if b.size else NULL, n, biasp, relu, gatep, ldg,
               &c[0, 0] if out.size else NULL, n, trans_a, bp, cp,
               &sv[0] if colsum else NULL)
    return (out, sums) if colsum else out


def _py_time_mm(floating[:, ::1] a, floating[:, ::1] b, bint trans_a=False,
                Py_ssize_t reps=1000):
    """Seconds per call of :func:`mm_rowmajor` (beta 0) on these operands,
    over ``reps`` calls made without the GIL and without Python between
    them: what a kernel's product of these shapes costs (benches only)."""
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int n = b.shape[1]
    cdef Py_ssize_t _r
    if k != b.shape[0] or m == 0 or n == 0 or k == 0 or reps < 1:
        raise ValueError("non-empty operands with matching inner dimensions")
    dtype = np.float32 if floating is float else np.float64
    out = np.empty((m, n), dtype=dtype)
    cdef floating[:, ::1] c = out
    t0 = time.perf_counter()
    with nogil:
        for _r in range(reps):
            mm_rowmajor(Trans if trans_a else NoTrans, NoTrans, m, n, k, <floating>1,
                        &a[0, 0], a.shape[1], &b[0, 0], n, <floating>0, &c[0, 0], n)
    return (time.perf_counter() - t0) / reps
