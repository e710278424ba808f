# cython: language_level=3
"""The one door to BLAS: fused float/double wrappers over scipy.linalg.cython_blas.

Every array in cbackprop is C-ordered (row-major) while BLAS is column-major.
A row-major ``C = op(A) op(B)`` is the column-major product
``C^T = op(B)^T op(A)^T``, so :func:`mm_rowmajor` swaps the operands and hands
the same buffers to ``?gemm`` without copying anything.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm

import numpy as np


cdef void mm_rowmajor(BlasTrans ta, BlasTrans tb, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C."""
    cdef char cta = <char>ta
    cdef char ctb = <char>tb
    if m == 0 or n == 0:
        return
    if floating is float:
        sgemm(&ctb, &cta, &n, &m, &k, &alpha, <float*>b, &ldb,
              <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&ctb, &cta, &n, &m, &k, &alpha, <double*>b, &ldb,
              <double*>a, &lda, &beta, c, &ldc)


def _py_mm_rowmajor(floating[:, ::1] a, floating[:, ::1] b, bint trans_a=False,
                    bint trans_b=False):
    """Python twin of :func:`mm_rowmajor` so tests can compare it with NumPy."""
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    if k != kb:
        raise ValueError(f"inner dimensions differ: {k} != {kb}")
    dtype = np.float32 if floating is float else np.float64
    out = np.zeros((m, n), dtype=dtype)
    cdef floating[:, ::1] c = out
    if m == 0 or n == 0 or k == 0:
        return out
    mm_rowmajor(Trans if trans_a else NoTrans, Trans if trans_b else NoTrans,
                m, n, k, <floating>1, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1],
                <floating>0, &c[0, 0], n)
    return out
