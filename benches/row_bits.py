"""Does the BLAS give a row the same bits whatever rows share its product?

Usage::

    python benches/row_bits.py

For row-major products ``A @ B`` of 200 rows (through scipy's BLAS, the one
cbackprop's kernels call, held to one thread), counts the cuts of ``A`` into
two row blocks ``A[:r]``, ``A[r:]`` (r = 1..199) for which the two products
do not reproduce the rows of the whole product bit for bit.  Zero for
every shape would let a multithreaded fit cut its row chunks by the cores'
measured speed without changing a weight; OpenBLAS 0.3.30 gives non-zero
counts for many shapes, so cbackprop's chunks depend on the batch size
only (see the README, "Threads").
"""

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

SHAPES = [(200, 64, 100), (200, 100, 10), (200, 784, 512), (200, 512, 256),
          (200, 256, 10), (200, 256, 512), (200, 10, 256)]


def _product(gemm, A, B):
    # Row-major A @ B as the Fortran product B^T A^T of the transposed views.
    return gemm(1.0, B.T, A.T).T


def _changed_cuts(m, k, n, dtype, rng):
    A = rng.standard_normal((m, k)).astype(dtype)
    B = rng.standard_normal((k, n)).astype(dtype)
    gemm = blas.sgemm if dtype == np.float32 else blas.dgemm
    whole = _product(gemm, A, B)
    changed = 0
    for r in range(1, m):
        top, bottom = _product(gemm, A[:r], B), _product(gemm, A[r:], B)
        if not (np.array_equal(top, whole[:r]) and np.array_equal(bottom, whole[r:])):
            changed += 1
    return changed


def main():
    rng = np.random.default_rng(0)
    print("rows x inner x columns, dtype: cuts (of 199) that change some row")
    with threadpool_limits(1):
        for dtype in (np.float32, np.float64):
            for m, k, n in SHAPES:
                print(f"{m} x {k} x {n}, {np.dtype(dtype).name}: "
                      f"{_changed_cuts(m, k, n, dtype, rng)}")


if __name__ == "__main__":
    main()
