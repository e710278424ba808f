"""The C helpers and BLAS wrappers, each against NumPy."""

import contextlib
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import expit, logsumexp, softmax

from cbackprop import _blas, _kernels, _openmp_helpers
from cbackprop._mlp import LOSSES

_needs_own = pytest.mark.skipif(not _blas.own_gemm_ready(),
                                reason="no AVX-512 on this CPU")


@contextlib.contextmanager
def _own_products():
    """Our own AVX-512 products on, whatever CBACKPROP_OWN_GEMM says (the
    tests using it are skipped where the CPU has none)."""
    before = _blas._set_own_gemm(True)
    try:
        yield
    finally:
        _blas._set_own_gemm(before)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_mm_rowmajor_matches_numpy(dtype, rtol, ta, tb):
    rng = np.random.RandomState(0)
    a = rng.normal(size=(7, 5) if not ta else (5, 7)).astype(dtype)
    b = rng.normal(size=(5, 3) if not tb else (3, 5)).astype(dtype)
    expected = (a.T if ta else a) @ (b.T if tb else b)
    got = _blas._py_mm_rowmajor(a, b, ta, tb)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol)


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]))
def test_mm_rowmajor_shapes(m, k, n, dtype):
    rng = np.random.RandomState(m * 100 + k * 10 + n)
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(_blas._py_mm_rowmajor(a, b), a @ b, rtol=tol, atol=tol)


@settings(deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 30), n=st.integers(1, 70), k=st.integers(1, 300),
       dtype=st.sampled_from([np.float32, np.float64]), ta=st.booleans(),
       tb=st.booleans(), accumulate=st.booleans(), pad=st.integers(0, 3),
       wide=st.integers(0, 5))
def test_mm_rowmajor_paths_match_numpy(products, m, n, k, dtype, ta, tb, accumulate,
                                       pad, wide):
    # Shapes across the kernels' row blocks (6 and 12), vector widths (8 and
    # 16 lanes, four vectors a block), masked last vectors and the 256-deep K
    # panels; operands as views with a wider leading dimension; C with
    # columns past its end that must stay untouched.
    rng = np.random.RandomState(m * 10007 + n * 101 + k)
    a_full = rng.normal(size=(k, m + wide) if ta else (m, k + wide)).astype(dtype)
    b_full = rng.normal(size=(n, k + wide) if tb else (k, n + wide)).astype(dtype)
    a = a_full[:, :m] if ta else a_full[:, :k]
    b = b_full[:, :k] if tb else b_full[:, :n]
    c = rng.normal(size=(m, n)).astype(dtype) if accumulate else None
    expected = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    if accumulate:
        expected += c
    got, padded = _blas._py_mm_rowmajor(a, b, ta, tb, c=c, pad=pad + 1)
    assert got.dtype == dtype
    tol = 1e-4 * math.sqrt(k) if dtype == np.float32 else 1e-12 * math.sqrt(k)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
    assert np.isnan(padded[:, n:]).all()


@_needs_own
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
def test_own_products_do_not_depend_on_how_they_are_cut(dtype, ta):
    # Each element is its terms summed in order, so a product cut into row
    # blocks, column blocks or two K halves (the second accumulated onto the
    # first) gives the same bits as the whole: unit blocks and thread chunks
    # cannot change a result.
    rng = np.random.RandomState(1)
    m, n, k = 37, 75, 300
    a = rng.normal(size=(k, m) if ta else (m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    with _own_products():
        whole = _blas._py_mm_rowmajor(a, b, ta)
        rows = np.vstack([_blas._py_mm_rowmajor(a[:, r0:r0 + 7] if ta else a[r0:r0 + 7], b,
                                                ta) for r0 in range(0, m, 7)])
        cols = np.hstack([_blas._py_mm_rowmajor(a, b[:, j0:j0 + 19], ta)
                          for j0 in range(0, n, 19)])
        h = 123
        first = _blas._py_mm_rowmajor(a[:h] if ta else a[:, :h], b[:h], ta)
        halves = _blas._py_mm_rowmajor(a[h:] if ta else a[:, h:], b[h:], ta, c=first)
    np.testing.assert_array_equal(rows, whole)
    np.testing.assert_array_equal(cols, whole)
    np.testing.assert_array_equal(halves, whole)


@_needs_own
@settings(deadline=None, max_examples=40)
@given(m=st.integers(1, 20), n=st.integers(1, 70), k=st.integers(1, 300),
       dtype=st.sampled_from([np.float32, np.float64]), relu=st.booleans())
def test_own_product_with_bias_and_relu(m, n, k, dtype, relu):
    # A layer's forward product in one pass: each element starts from its
    # bias; relu as it is stored, with add_rows' rule (NaN and -0 become +0).
    rng = np.random.RandomState(m * 10007 + n * 101 + k)
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype)
    if n > 2:
        a[0, 0], b[0, 1] = np.inf, 0.0  # inf * 0: NaN in row 0, column 1
    with _own_products():
        got = _blas._py_mm_own(a, b, bias=bias, relu=relu)
    with np.errstate(invalid="ignore"):
        expected = a.astype(np.float64) @ b.astype(np.float64) + bias
    if relu:
        expected = np.where(expected > 0, expected, 0.0)
        assert not np.isnan(got).any() and not np.signbit(got).any()
    tol = 1e-4 * math.sqrt(k) if dtype == np.float32 else 1e-12 * math.sqrt(k)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@_needs_own
@settings(deadline=None, max_examples=40)
@given(m=st.integers(1, 20), n=st.integers(1, 70), k=st.integers(1, 300),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_own_product_gated_by_relu_activations(m, n, k, dtype):
    # A relu layer's backward product and derivative in one pass: zero where
    # the activation is zero, the product elsewhere (NaN activations keep
    # it, as cbp_hidden_backward's select does); K past one 256-deep panel.
    rng = np.random.RandomState(m * 10007 + n * 101 + k)
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    gate = np.maximum(rng.normal(size=(m, n)), 0).astype(dtype)
    gate[0, 0] = np.nan
    with _own_products():
        got = _blas._py_mm_own(a, b, gate=gate)
    expected = np.where(gate == 0, 0.0, a.astype(np.float64) @ b.astype(np.float64))
    assert np.all(got[gate == 0] == 0)
    tol = 1e-4 * math.sqrt(k) if dtype == np.float32 else 1e-12 * math.sqrt(k)
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@_needs_own
@settings(deadline=None, max_examples=40)
@given(m=st.integers(1, 30), n=st.integers(1, 70), k=st.integers(1, 300),
       drop=st.floats(0.0, 1.0), dtype=st.sampled_from([np.float32, np.float64]),
       relu=st.booleans())
def test_own_products_over_the_columns_in_use(m, n, k, drop, dtype, relu):
    # A first layer's products on rows whose all-zero columns were left out
    # (see _kernels._gather_cols): the forward product reads W0's rows by
    # index, the gradient writes dW0's rows by index.  Both give the bits of
    # the same products over the whole rows (a zero input only adds a
    # signed zero), here with K past one 256-deep panel.
    rng = np.random.RandomState(m * 10007 + n * 101 + k)
    x = rng.normal(size=(m, k)).astype(dtype)
    keep = np.flatnonzero(rng.uniform(size=k) >= drop).astype(np.int32)
    x[:, np.setdiff1d(np.arange(k), keep)] = 0
    w = rng.normal(size=(k, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype)
    d = rng.normal(size=(m, n)).astype(dtype)
    xc = np.ascontiguousarray(x[:, keep])
    with _own_products():
        full = _blas._py_mm_own(x, w, bias=bias, relu=relu)
        got = _blas._py_mm_own(xc, w, bias=bias, relu=relu, bidx=keep)
        grad_full = _blas._py_mm_own(x, d, trans_a=True)
        grad = _blas._py_mm_own(xc, d, trans_a=True, cidx=keep, c_rows=k)
    np.testing.assert_array_equal(got, full)
    np.testing.assert_array_equal(grad[keep], grad_full[keep])
    # Nothing but the listed rows was written.
    assert np.isnan(np.delete(grad, keep, axis=0)).all()
    tol = 1e-4 * math.sqrt(k) if dtype == np.float32 else 1e-12 * math.sqrt(k)
    ref = x.astype(np.float64) @ w + bias
    np.testing.assert_allclose(got, np.maximum(ref, 0) if relu else ref, rtol=tol,
                               atol=tol)
    np.testing.assert_allclose(grad[keep], (x.T.astype(np.float64) @ d)[keep],
                               rtol=tol, atol=tol)


@_needs_own
@settings(deadline=None, max_examples=40)
@given(nr=st.integers(1, 40), nf=st.integers(1, 200), zero=st.floats(0.0, 1.0),
       min_drop=st.integers(1, 12), dtype=st.sampled_from([np.float32, np.float64]))
def test_gather_without_all_zero_columns(nr, nf, zero, min_drop, dtype):
    # A chunk's gather: the columns in use are those with a non-zero (or
    # NaN) in some gathered row; -0 counts as zero.  Left out only when at
    # least min_drop of them are all zero; the rows then hold the other
    # columns' values, in order.
    rng = np.random.RandomState(nr * 1009 + nf * 7 + min_drop)
    X = rng.normal(size=(60, nf)).astype(dtype)
    X[rng.uniform(size=X.shape) < zero] = 0
    X[:, rng.uniform(size=nf) < zero] = 0
    if nf > 3:
        X[:, 1] = -0.0
        X[5, 2] = np.nan
    rows = rng.randint(0, 60, size=nr).astype(np.intp)
    with _own_products():
        kept, idx, got = _kernels._py_gather_cols(X, rows, min_drop)
        masks = _kernels.row_masks(X)
    nonzero = (X != 0) | np.isnan(X)
    bits = np.zeros((60, masks.shape[1] * 64), dtype=bool)
    bits[:, :nf] = nonzero
    expected_masks = np.packbits(bits.reshape(60, -1, 8)[:, :, ::-1], axis=2)
    np.testing.assert_array_equal(
        masks.view(np.uint8).reshape(60, -1), expected_masks.reshape(60, -1))
    in_use = np.flatnonzero(nonzero[rows].any(axis=0))
    if nf - len(in_use) >= min_drop:
        assert kept == len(in_use)
        np.testing.assert_array_equal(idx, in_use)
        np.testing.assert_array_equal(got[:, :kept], X[rows][:, in_use])
    else:
        assert kept == nf and idx is None
        np.testing.assert_array_equal(got, X[rows])


@_needs_own
@settings(deadline=None, max_examples=40)
@given(m=st.integers(0, 30), n=st.integers(1, 70), k=st.integers(0, 300),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_gradient_product_also_sums_the_deltas(m, n, k, dtype):
    # A layer's gradient A^T D and its bias gradient, the column sums of D,
    # in one pass: each sum is over the rows in order, bit for bit what a
    # separate pass adding row after row gives (also past a 256-deep K
    # panel, and with no rows of A^T at all).
    rng = np.random.RandomState(m * 10007 + n * 101 + k)
    a = rng.normal(size=(k, m)).astype(dtype)
    d = rng.normal(size=(k, n)).astype(dtype)
    with _own_products():
        got, sums = _blas._py_mm_own(a, d, trans_a=True, colsum=True)
        plain = _blas._py_mm_own(a, d, trans_a=True) if m else got
    expected = np.zeros(n, dtype=dtype)
    for row in d:
        expected += row
    np.testing.assert_array_equal(sums, expected)
    np.testing.assert_array_equal(got, plain)


def test_mm_rowmajor_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="inner dimensions"):
        _blas._py_mm_rowmajor(np.ones((2, 3)), np.ones((2, 3)))


@given(st.integers(0, 300), st.sampled_from([np.float32, np.float64]))
def test_loop_header_reductions(n, dtype):
    rng = np.random.RandomState(n)
    x = rng.normal(size=n).astype(dtype)
    y = rng.normal(size=n).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert _kernels._py_dot(x, y) == pytest.approx(float(x.astype(float) @ y),
                                                  rel=tol, abs=tol * max(n, 1))
    assert _kernels._py_sumsq(x) == pytest.approx(float(x.astype(float) @ x),
                                                 rel=1e-12)
    # Fixed order: the same call gives the same bits.
    assert _kernels._py_dot(x, y) == _kernels._py_dot(x, y)


EXTREMES = np.array([-1e4, -800.0, -50.0, -1.0, -1e-8, 0.0, 1e-8, 1.0, 50.0, 800.0, 1e4])


@pytest.mark.parametrize("dtype,suffix", [(np.float64, ""), (np.float32, "_f")])
def test_hidden_activations_are_stable(dtype, suffix):
    fn = getattr(_kernels, "_py_hidden" + suffix)
    expected = {0: EXTREMES, 1: expit(EXTREMES), 2: np.tanh(EXTREMES),
                3: np.maximum(EXTREMES, 0),
                4: np.where(EXTREMES > 0, EXTREMES, 0.1 * EXTREMES),
                5: np.where(EXTREMES > 0, EXTREMES, np.expm1(np.minimum(EXTREMES, 0))),
                6: 1.7159 * np.tanh(2 * EXTREMES / 3),
                7: np.logaddexp(0, EXTREMES)}
    for code, exp in expected.items():
        z = EXTREMES.astype(dtype)
        with np.errstate(all="raise"):
            fn(code, z, 0.1)
        assert np.isfinite(z).all()
        np.testing.assert_allclose(z, exp.astype(dtype), rtol=1e-6 if suffix else 1e-15)


@pytest.mark.parametrize("dtype,suffix", [(np.float64, ""), (np.float32, "_f")])
def test_softmax_and_logistic_outputs_are_stable(dtype, suffix):
    fn = getattr(_kernels, "_py_output" + suffix)
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3.0, 1.0, 2.0]], dtype=dtype)
    out = z.copy()
    fn(2, out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, softmax(z.astype(float), axis=1), rtol=1e-6,
                               atol=1e-30)
    out = z.copy()
    fn(1, out)
    np.testing.assert_allclose(out, expit(z.astype(float)), rtol=1e-6)


@pytest.mark.parametrize("dtype,suffix", [(np.float64, ""), (np.float32, "_f")])
def test_vectorised_exp_is_within_a_few_ulp(dtype, suffix):
    # Logistic and softmax run on the library's own table-free exp (vectorised
    # loops): dense grids against SciPy, which uses libm's.
    eps = np.finfo(dtype).eps
    tiny = np.finfo(dtype).tiny
    z = np.linspace(-750.0 if dtype == np.float64 else -90.0, 40.0, 200_001)
    z = z.astype(dtype)
    got = z.copy()
    getattr(_kernels, "_py_hidden" + suffix)(1, got)
    want = expit(z.astype(np.float64))
    normal = want > 2 * tiny / eps
    np.testing.assert_allclose(got[normal], want[normal].astype(dtype), rtol=4 * eps,
                               atol=0)
    # Where the true value is (nearly) subnormal, it is 0 or that small value.
    assert (got[~normal] >= 0).all() and (got[~normal] <= 2 * tiny / eps).all()

    rng = np.random.RandomState(3)
    rows = (rng.normal(size=(301, 10)) * rng.uniform(0.1, 60, size=(301, 1)))
    rows = rows.astype(dtype)
    out = rows.copy()
    getattr(_kernels, "_py_output" + suffix)(2, out)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=8 * eps)
    want = softmax(rows.astype(np.float64), axis=1)
    big = want > 1e-300 if dtype == np.float64 else want > 1e-36
    # z - max(z) is rounded to the data type first: exp carries its
    # relative error |z - max| eps on top of its own few ulp.
    shift = np.abs(rows - rows.max(axis=1, keepdims=True)).astype(np.float64)
    err = np.abs(out - want) / np.where(big, want, 1)
    assert (err[big] <= eps * (8 + shift[big])).all()

    nan = np.array([[np.nan, 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=dtype)
    getattr(_kernels, "_py_output" + suffix)(2, nan)
    assert np.isnan(nan[0]).all() and np.isfinite(nan[1]).all()
    nan = np.array([np.nan, -np.inf, np.inf], dtype=dtype)
    getattr(_kernels, "_py_hidden" + suffix)(1, nan)
    np.testing.assert_array_equal(nan, np.array([np.nan, 0.0, 1.0], dtype=dtype))


def test_logsumexp():
    for z in (np.array([1e4, 1e4 - 1]), np.array([-1e4, -1e4]), np.arange(5.0)):
        assert _kernels._py_logsumexp(z) == pytest.approx(logsumexp(z), rel=1e-14)


def test_counter_rng_is_deterministic_and_uniform():
    draws = np.array([_kernels._py_rng_uniform(7, 0, i, 3) for i in range(20000)])
    again = np.array([_kernels._py_rng_uniform(7, 0, i, 3) for i in range(20000)])
    np.testing.assert_array_equal(draws, again)
    assert ((draws >= 0) & (draws < 1)).all()
    assert abs(draws.mean() - 0.5) < 0.01
    hist, _ = np.histogram(draws, bins=10, range=(0, 1))
    assert hist.min() > 1800 and hist.max() < 2200
    other = np.array([_kernels._py_rng_uniform(8, 0, i, 3) for i in range(200)])
    assert not np.allclose(other, draws[:200])
    # Neighbouring counters are uncorrelated.
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.03


def test_effective_n_threads():
    n = _openmp_helpers.effective_n_threads()
    assert n >= 1
    assert _openmp_helpers.effective_n_threads(1) == 1
    if _openmp_helpers.openmp_enabled():
        assert _openmp_helpers.effective_n_threads(-1) == _openmp_helpers._cpu_count()
        assert _openmp_helpers.effective_n_threads(3) == 3
    with pytest.raises(ValueError, match="n_threads=0"):
        _openmp_helpers.effective_n_threads(0)
    with pytest.raises(TypeError):
        _openmp_helpers.effective_n_threads(2.5)


def test_openmp_is_in_the_build_when_required():
    # cibuildwheel sets CBACKPROP_REQUIRE_OPENMP for the build and the tests:
    # every published wheel must be multithreaded.
    import os

    if os.environ.get("CBACKPROP_REQUIRE_OPENMP", "0") not in ("", "0"):
        assert _openmp_helpers.openmp_enabled()


def test_show_config_reports_versions_and_thread_pools():
    import io

    import cbackprop

    buf = io.StringIO()
    config = cbackprop.show_config(file=buf)
    text = buf.getvalue()
    assert cbackprop.__version__ in text and "numpy" in text
    assert config["openmp"] == _openmp_helpers.openmp_enabled()
    assert config["n_threads"] >= 1
    assert config["own_products"] == _blas.own_gemm_enabled()
    assert "matrix products of mini-batches:" in text
    apis = {pool["user_api"] for pool in config["threadpools"]}
    assert "blas" in apis
    if config["openmp"]:
        assert "openmp" in apis


@given(st.integers(0, 80), st.floats(0.0, 1.0), st.sampled_from([np.float32, np.float64]),
       st.integers(0, 2**31 - 1))
def test_compaction_finds_the_nonzeros_in_order(n, density, dtype, seed):
    # The AVX-512 compaction (where the CPU has it) and the portable loop:
    # the same indices and values as flatnonzero, NaN kept, -0.0 dropped.
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=n) * (rng.random(n) < density)).astype(dtype)
    if n > 4:
        x[rng.integers(n)] = np.nan
        x[rng.integers(n)] = -0.0
    expected = np.flatnonzero(x)
    for plain in (False, True):
        idx, val = _kernels._compact(x, plain)
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_array_equal(val, x[expected])


def test_cpu_feature_checks_agree_with_the_kernel():
    # The CPUID reads behind the AVX-512 compaction and the claimed
    # (PREFETCHW) optimiser step report what Linux reports for this CPU.
    import platform

    if platform.machine() not in ("x86_64", "AMD64") or \
            not os.path.exists("/proc/cpuinfo"):
        pytest.skip("needs Linux on x86-64")
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert _kernels.HAS_PREFETCHW == ("3dnowprefetch" in flags)
    assert _kernels.HAS_AVX512 == ("avx512f" in flags)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
@pytest.mark.parametrize("shape", [(1, 5), (7, 40), (100, 33), (1000, 17), (50, 3)])
def test_dense_to_csr_matches_scipy(dtype, n_threads, shape):
    # Rows are compacted in place with up to 15 slots of overrun into the
    # rows filled next; varied densities put rows of every length (empty
    # runs included) at the ends of the threads' runs.
    import scipy.sparse as sp

    rng = np.random.default_rng(shape[0] * 7 + n_threads)
    density = rng.random((shape[0], 1)) ** 2
    X = (rng.random(shape) * (rng.random(shape) < density)).astype(dtype)
    counts = _kernels.row_nonzeros(X, n_threads)
    data, ind, ptr = _kernels.dense_to_csr(X, counts, n_threads)
    S = sp.csr_matrix(X)
    np.testing.assert_array_equal(ptr, S.indptr)
    np.testing.assert_array_equal(ind, S.indices)
    np.testing.assert_array_equal(data, S.data)


@given(st.integers(0, 3 * (1 << 16) + 5), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([None, np.nan, np.inf, -np.inf, "max", "tiny"]),
       st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_all_finite_agrees_with_numpy(n, dtype, bad, threads, seed):
    # Any position (block edges included: blocks of 2**16 values), either
    # dtype, any thread count; the largest finite value, subnormals and
    # negative zero are finite.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n).astype(dtype)
    if n:
        x[rng.integers(n)] = -0.0
        edge = min(n - 1, int(rng.choice([0, (1 << 16) - 1, 1 << 16, n - 1])))
        if bad is not None:
            value = {"max": np.finfo(dtype).max, "tiny": np.finfo(dtype).smallest_subnormal
                     }.get(bad, bad)
            x[edge if rng.random() < 0.5 else rng.integers(n)] = value
    assert _kernels.all_finite(x, threads) == bool(np.isfinite(x).all())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_loss_rows_one_hot_and_not(dtype):
    """The categorical log loss of a row: -sum y log(clip(p)).  One-hot rows
    take a branch-free path; soft, scaled, empty and NaN rows the general
    one; both against NumPy, and one-hot rows bit for bit against the
    general formula."""
    eps = np.finfo(dtype).eps
    rng = np.random.RandomState(0)
    rows = []
    for k in range(10):
        p = softmax(rng.normal(scale=3.0, size=7)).astype(dtype)
        rows.append((p, np.eye(7, dtype=dtype)[k % 7]))
    p = softmax(rng.normal(size=7)).astype(dtype)
    rows += [
        (p, np.full(7, 1 / 7, dtype=dtype)),                     # soft labels
        (p, (0.5 * np.eye(7)[2]).astype(dtype)),                  # one, not 1
        (p, (np.eye(7)[1] + np.eye(7)[4]).astype(dtype)),         # two ones
        (p, np.zeros(7, dtype=dtype)),                            # no class
        (np.array([1.0, 0.0, 0.0], dtype=dtype),
         np.array([0.0, 1.0, 0.0], dtype=dtype)),                 # clipped
    ]
    for p, y in rows:
        q = np.clip(p, eps, 1 - eps).astype(np.float64)
        expected = -np.sum(np.where(y != 0, y * np.log(q), 0.0))
        got = _kernels._py_row_loss(LOSSES["log_loss"], p, y)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)
        if np.count_nonzero(y) == 1 and y.sum() == 1:
            # The general loop's value exactly: 0 - 1 * log(q_k), with the C
            # library's log (math.log; numpy's own may differ in an ulp).
            assert got == 0.0 - 1.0 * math.log(q[np.flatnonzero(y)[0]])
    nan_p = np.array([np.nan, 0.5, 0.5], dtype=dtype)
    assert np.isnan(_kernels._py_row_loss(LOSSES["log_loss"], nan_p,
                                          np.eye(3, dtype=dtype)[0]))
    with pytest.raises(ValueError, match="same"):
        _kernels._py_row_loss(LOSSES["log_loss"], np.ones(3), np.ones(2))
