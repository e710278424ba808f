"""Zero-skipping first layer, lazy online SGD, and thread-count independence."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import neural_network as sknn
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

from cbackprop import MLPClassifier, MLPRegressor, _blas, _kernels, _mlp, _openmp_helpers


def _sparse_dense_data(n=120, n_features=40, density=0.15, seed=0):
    """Dense array with mostly zeros, like images or one-hot columns."""
    rng = np.random.RandomState(seed)
    X = rng.uniform(0, 1, size=(n, n_features))
    X[rng.uniform(size=X.shape) > density] = 0
    y = (X @ rng.normal(size=n_features) > 0).astype(int) + 2 * (X[:, 0] > 0)
    return X, y


def _fit(cls, X, y, sample_weight=None, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cls(**params).fit(X, y, sample_weight=sample_weight)


def _same(a, b, rtol):
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * np.abs(v).max())
    if hasattr(b, "loss_curve_"):
        np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=rtol)
    else:  # lbfgs
        assert a.loss_ == pytest.approx(b.loss_, rel=rtol)


def test_zero_heavy_dense_input_takes_a_sparse_path(monkeypatch):
    X, _ = _sparse_dense_data()
    assert np.count_nonzero(X) < 0.25 * X.size
    # Small enough: converted once to CSR, for online and batch training.
    for mode in ("online", "batch"):
        data, ind, ptr, skip, row_nnz = _mlp._kernel_input(X, np.float64, mode)
        assert ind is not None and not skip
        assert row_nnz.sum() == np.count_nonzero(X)
        np.testing.assert_array_equal(
            sp.csr_matrix((data, ind, ptr), shape=X.shape).toarray(), X)
    # Prediction uses BLAS on the dense rows.
    assert _mlp._kernel_input(X, np.float64)[1:4] == (None, None, False)
    # Too large to copy: online rows are scanned one by one instead, and
    # mini-batches go to BLAS.
    monkeypatch.setattr(_mlp, "_CSR_CACHE_BYTES", 0)
    data, ind, ptr, skip, row_nnz = _mlp._kernel_input(X, np.float64, "online")
    assert ind is None and skip and data is X
    assert row_nnz.sum() == np.count_nonzero(X)
    assert _mlp._kernel_input(X, np.float64, "batch")[1:4] == (None, None, False)
    # Dense data goes to BLAS.
    for mode in ("online", "batch"):
        assert _mlp._kernel_input(np.ones((4, 3)), np.float64, mode)[1:4] == (
            None, None, False)


def test_batch_mode_density_threshold_is_stricter_than_online():
    # 30% non-zeros: online skips the zeros, mini-batches stay on BLAS.
    rng = np.random.default_rng(0)
    X = rng.random((400, 60)) * (rng.random((400, 60)) < 0.3)
    assert _mlp._kernel_input(X, np.float64, "online")[1] is not None
    assert _mlp._kernel_input(X, np.float64, "batch")[1] is None


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("batch_size", [16, 47, 200])
def test_cached_csr_and_blas_batches_agree(monkeypatch, batch_size, n_threads,
                                           threading_threshold):
    # Each mini-batch's by-feature copy is made during the previous batch's
    # gradient (in the other of two slots); 47 leaves a short last batch.
    X, y = _sparse_dense_data(n=200, n_features=50)
    common = dict(hidden_layer_sizes=(20,), solver="adam", batch_size=batch_size,
                  max_iter=3, learning_rate_init=0.01, random_state=0,
                  n_threads=n_threads)
    cached = _fit(MLPClassifier, X, y, **common)
    monkeypatch.setattr(_mlp, "_SKIP_ZEROS_DENSITY", {"online": 0.4, "batch": 0.0})
    blas = _fit(MLPClassifier, X, y, **common)
    _same(cached, blas, 1e-10)


@pytest.mark.parametrize("solver,batch_size", [("sgd", 1), ("adam", 1)])
def test_scanned_and_cached_zero_paths_agree(monkeypatch, solver, batch_size):
    X, y = _sparse_dense_data(n=200, n_features=50)
    common = dict(hidden_layer_sizes=(20,), solver=solver, batch_size=batch_size,
                  max_iter=3, learning_rate_init=0.01, random_state=0)
    cached = _fit(MLPClassifier, X, y, **common)
    monkeypatch.setattr(_mlp, "_CSR_CACHE_BYTES", 0)
    scanned = _fit(MLPClassifier, X, y, **common)
    _same(cached, scanned, 1e-12)


def test_online_csr_copy_waits_for_a_second_epoch(monkeypatch):
    # One pass scans rows (cheaper than copying X); the copy is made before
    # the second epoch, and the fit equals one that never copies.
    X, y = _sparse_dense_data(n=200, n_features=50)
    calls = []
    real = _mlp._kernels.dense_to_csr

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(_mlp._kernels, "dense_to_csr", spy)
    common = dict(hidden_layer_sizes=(20,), solver="sgd", batch_size=1,
                  learning_rate_init=0.01, random_state=0, tol=0, n_iter_no_change=99)
    _fit(MLPClassifier, X, y, max_iter=1, **common)
    assert calls == []
    settled = _fit(MLPClassifier, X, y, max_iter=3, **common)
    assert calls == [X.shape]
    monkeypatch.setattr(_mlp, "_CSR_CACHE_BYTES", 0)
    scanned = _fit(MLPClassifier, X, y, max_iter=3, **common)
    assert calls == [X.shape]
    _same(settled, scanned, 1e-12)


@pytest.mark.parametrize("params", [
    dict(momentum=0.9, nesterovs_momentum=True, alpha=1e-2),
    dict(momentum=0.9, nesterovs_momentum=False, alpha=1e-3),
    dict(momentum=0.0, alpha=1e-2),
    dict(momentum=0.5, alpha=0.0),
    dict(momentum=0.9, alpha=1e-4, learning_rate="invscaling", power_t=0.3),
])
@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix])
def test_lazy_online_sgd_matches_sklearn(params, fmt):
    X, y = _sparse_dense_data()
    common = dict(hidden_layer_sizes=(15,), solver="sgd", batch_size=1, max_iter=4,
                  learning_rate_init=0.01, random_state=0, **params)
    ours = _fit(MLPClassifier, fmt(X), y, **common)
    theirs = _fit(sknn.MLPClassifier, X, y, **common)
    _same(ours, theirs, 1e-6)


@pytest.mark.parametrize("width", [1, 7, 8, 16, 17, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [True, False])
def test_lazy_online_rows_equal_plain_steps(width, dtype, nesterov):
    # The lazy forward pass works in whole vectors (8 doubles / 16 floats)
    # plus a scalar tail and sums the penalty in vector lanes; unit sample
    # weights take the plain per-sample path.  Every width from all-tail to
    # several vectors plus a tail must give the same fit and loss curve.
    X, y = _sparse_dense_data(n=150, n_features=30, density=0.2)
    X = X.astype(dtype)
    common = dict(hidden_layer_sizes=(width,), solver="sgd", batch_size=1, max_iter=3,
                  learning_rate_init=0.05, alpha=1e-2, momentum=0.9,
                  nesterovs_momentum=nesterov, random_state=0)
    lazy = _fit(MLPClassifier, X, y, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = MLPClassifier(**common).fit(X, y, sample_weight=np.ones(len(y)))
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for a, b in zip(lazy.coefs_ + lazy.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())
    np.testing.assert_allclose(lazy.loss_curve_, plain.loss_curve_, rtol=rtol)


def test_lazy_online_sgd_float32_follows_float64():
    X, y = _sparse_dense_data()
    common = dict(hidden_layer_sizes=(15,), solver="sgd", batch_size=1, max_iter=3,
                  learning_rate_init=0.01, alpha=1e-2, random_state=0)
    a = _fit(MLPClassifier, X.astype(np.float32), y, **common)
    b = _fit(MLPClassifier, X, y, **common)
    assert a.coefs_[0].dtype == np.float32
    np.testing.assert_allclose(a.coefs_[0], b.coefs_[0], atol=1e-4)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-4)


@pytest.mark.parametrize("solver,batch_size", [("adam", 200), ("sgd", 32),
                                               ("adam", 1), ("sgd", "auto")])
def test_zero_skipping_batch_path_matches_sklearn(solver, batch_size):
    X, y = _sparse_dense_data(n=300, n_features=60)
    common = dict(hidden_layer_sizes=(70, 20), solver=solver, batch_size=batch_size,
                  max_iter=5 if batch_size == 1 else 15, random_state=0,
                  learning_rate_init=0.01)
    _same(_fit(MLPClassifier, X, y, **common), _fit(sknn.MLPClassifier, X, y, **common),
          1e-6 if batch_size == 1 else 1e-8)


CASES = [
    dict(solver="adam", batch_size=200, hidden_layer_sizes=(150, 70)),
    dict(solver="sgd", batch_size=64, hidden_layer_sizes=(130,)),
    dict(solver="adam", batch_size=500, hidden_layer_sizes=(100, 100), activation="tanh"),
    dict(solver="lbfgs", max_iter=15, hidden_layer_sizes=(90,)),
    # load_digits-sized: chunk-local gradients summed inside a threaded step
    # (over 4,096 parameters), whose blocks are shared out by size.
    dict(solver="adam", batch_size=200, hidden_layer_sizes=(60,)),
    dict(solver="sgd", batch_size=150, hidden_layer_sizes=(70,), momentum=0.8),
    # The toolbox: maxout, dropout (counter-based masks), L1, clipping and
    # per-layer rates must not depend on the thread count either.
    dict(solver="adam", batch_size=100, hidden_layer_sizes=(40, 30),
         activation=["maxout", "relu"], dropout=0.3, l1=1e-4, max_grad_norm=1.0,
         layer_lr="fan_in"),
    dict(solver="rprop", max_iter=6, hidden_layer_sizes=(50,), loss="hinge"),
]


@pytest.fixture(params=["default", "always"])
def threading_threshold(request):
    """Run each case with the shipped threshold and with threads forced on
    (the small test problems fall below the shipped one)."""
    from cbackprop import _kernels

    if request.param == "default":
        yield request.param
        return
    old = _kernels._set_parallel_min_work(0.0)
    yield request.param
    _kernels._set_parallel_min_work(old)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["dense", "zeros", "csr"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bitwise_identical_for_any_thread_count(case, kind, dtype, threading_threshold):
    rng = np.random.RandomState(0)
    if kind == "dense":
        X = rng.normal(size=(1200, 80))
        y = (X[:, :3] @ [1.0, -1.0, 0.5] > 0).astype(int) + (X[:, 3] > 1)
    else:
        X, y = _sparse_dense_data(n=1200, n_features=80, seed=1)
    X = X.astype(dtype)
    if kind == "csr":
        X = sp.csr_matrix(X)
    params = {"max_iter": 4, "random_state": 0, **case}
    fits = [_fit(MLPClassifier, X, y, n_threads=t, **params) for t in (1, 2, 3, -1)]
    for other in fits[1:]:
        for a, b in zip(fits[0].coefs_ + fits[0].intercepts_,
                        other.coefs_ + other.intercepts_):
            np.testing.assert_array_equal(a, b)
        assert fits[0].loss_ == other.loss_
    # Parallel prediction too (hinge outputs are margins: no predict_proba).
    probas = [f._forward_pass_fast(X) for f in fits]
    for p in probas[1:]:
        np.testing.assert_array_equal(probas[0], p)


def test_regressor_threads_and_predict_many_rows():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(3000, 20))
    y = np.sin(X[:, 0]) + X[:, 1]
    a = _fit(MLPRegressor, X, y, hidden_layer_sizes=(64,), max_iter=3, n_threads=1,
             random_state=0)
    b = _fit(MLPRegressor, X, y, hidden_layer_sizes=(64,), max_iter=3, n_threads=2,
             random_state=0)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


@pytest.mark.parametrize("bad", [0, 1.5, "all"])
def test_bad_n_threads(bad):
    X, y = _sparse_dense_data()
    with pytest.raises((ValueError, TypeError), match="n_threads"):
        MLPClassifier(n_threads=bad).fit(X, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [1, 3, 16, 17, 33, 64, 65, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 50])
def test_sparse_first_layer_equals_blas(monkeypatch, dtype, width, batch_size):
    # The sparse layer-0 products read whole vectors past the last used
    # column where the buffer allows it and pad otherwise: every width, with
    # a one-unit output layer (little follows W0 and the layer-1 deltas in
    # memory), must give what BLAS on the dense rows gives.
    X, _ = _sparse_dense_data(n=50, n_features=30)
    X = X.astype(dtype)
    y = X @ np.linspace(-1, 1, X.shape[1])
    common = dict(hidden_layer_sizes=(width,), solver="sgd", batch_size=batch_size,
                  max_iter=2, learning_rate_init=0.01, random_state=0, tol=0.0)
    from_csr = _fit(MLPRegressor, sp.csr_matrix(X), y, **common)
    from_dense = _fit(MLPRegressor, X, y, **common)   # converted to CSR
    monkeypatch.setattr(_mlp, "_SKIP_ZEROS_DENSITY", {"online": 0.0, "batch": 0.0})
    blas = _fit(MLPRegressor, X, y, **common)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    _same(from_csr, blas, rtol)
    _same(from_dense, blas, rtol)
    np.testing.assert_allclose(from_csr.predict(sp.csr_matrix(X)), blas.predict(X),
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("solver", ["sgd", "lbfgs", "rprop"])
def test_full_passes_keep_each_blocks_by_feature_copy(monkeypatch, solver):
    # Full passes over CSR data keep the by-feature copy of every block of
    # rows (three here, the last one partial) instead of sorting again each
    # pass: same bits as sorting every time, and BLAS on the dense rows.
    X, y = _sparse_dense_data(n=2 * _mlp._kernels.SUPER_BLOCK_ROWS + 300,
                              n_features=30, seed=2)
    kept = []
    real_init = _mlp._Workspace.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        kept.append(self.n_keep)

    monkeypatch.setattr(_mlp._Workspace, "__init__", spy)
    common = dict(hidden_layer_sizes=(12,), solver=solver, batch_size=X.shape[0],
                  max_iter=4, learning_rate_init=0.05, random_state=0, tol=0.0)
    keeping = _fit(MLPClassifier, sp.csr_matrix(X), y, **common)
    assert kept == [3]
    monkeypatch.setattr(_mlp, "_CSR_CACHE_BYTES", 0)
    sorting = _fit(MLPClassifier, sp.csr_matrix(X), y, **common)
    assert kept[-1] == 0
    for a, b in zip(keeping.coefs_ + keeping.intercepts_,
                    sorting.coefs_ + sorting.intercepts_):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(_mlp, "_SKIP_ZEROS_DENSITY", {"online": 0.0, "batch": 0.0})
    blas = _fit(MLPClassifier, X, y, **common)
    for u, v in zip(keeping.coefs_ + keeping.intercepts_, blas.coefs_ + blas.intercepts_):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-9 * np.abs(v).max())


def test_full_batch_sgd_does_not_depend_on_shuffling():
    # One batch of every sample: the gradient is a sum over all rows, taken
    # in their natural order whether or not the epoch order is shuffled.
    X, y = _sparse_dense_data(n=300, n_features=30, seed=3)
    common = dict(hidden_layer_sizes=(12,), solver="sgd", batch_size=300,
                  max_iter=5, learning_rate_init=0.1, random_state=0, tol=0.0)
    for data in (X, sp.csr_matrix(X)):
        a = _fit(MLPClassifier, data, y, shuffle=True, **common)
        b = _fit(MLPClassifier, data, y, shuffle=False, **common)
        for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
            np.testing.assert_array_equal(u, v)


@settings(max_examples=60, deadline=None)
@given(units=st.lists(st.integers(1, 300), min_size=2, max_size=4),
       pieces=st.integers(1, 3))
def test_gradient_blocks_tile_every_weight_once(units, pieces):
    # Narrow layers have their output columns cut too; the blocks must still
    # cover each weight exactly once, start columns at multiples of 8 and be
    # at least _GRAD_MIN_COLS wide unless the layer is narrower than that.
    zw = [units[0]] + [u * pieces for u in units[1:]]
    blocks = _mlp._Workspace._grad_blocks({"units": units, "zw": zw}).reshape(
        -1, _mlp._kernels.GRAD_BLOCK_FIELDS)
    for layer in range(len(units) - 1):
        hits = np.zeros((units[layer], zw[layer + 1]), dtype=int)
        mine = blocks[blocks[:, 0] == layer]
        for _, i0, i1, j0, j1 in mine:
            assert i1 - i0 <= _mlp._kernels.GRAD_BLOCK_ROWS
            assert j0 % 8 == 0 and j1 > j0
            assert j1 - j0 >= min(_mlp._GRAD_MIN_COLS, zw[layer + 1])
            hits[i0:i1, j0:j1] += 1
        assert (hits == 1).all()
        n_i = -(-units[layer] // _mlp._kernels.GRAD_BLOCK_ROWS)
        if zw[layer + 1] >= 2 * _mlp._GRAD_MIN_COLS and n_i < _mlp._GRAD_MIN_BLOCKS:
            assert len(mine) > n_i


@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_cut_gradient_blocks_change_no_sum(monkeypatch, kind, dtype):
    # 30 inputs make one block of input units, so the 100 hidden columns are
    # cut in pieces.  The sparse product treats each column on its own: the
    # same bits as one uncut block, so the CSR fit has only the first layer
    # cut.  BLAS may pick another kernel for a narrower product (OpenBLAS
    # 0.3.31's sgemm does), so dense fits, with the second layer cut too,
    # agree to rounding.
    X, y = _sparse_dense_data(n=400, n_features=30, seed=4)
    X = X.astype(dtype)
    data = sp.csr_matrix(X) if kind == "csr" else X
    if kind == "dense":
        monkeypatch.setattr(_mlp, "_SKIP_ZEROS_DENSITY", {"online": 0.0, "batch": 0.0})
    hidden = (100,) if kind == "csr" else (100, 40)
    common = dict(hidden_layer_sizes=hidden, solver="adam", batch_size=64,
                  max_iter=3, random_state=0, tol=0.0, n_threads=2)
    blocks = []
    real = _mlp._Workspace._grad_blocks

    def spy(spec):
        out = real(spec)
        blocks.append(len(out) // _mlp._kernels.GRAD_BLOCK_FIELDS)
        return out

    monkeypatch.setattr(_mlp._Workspace, "_grad_blocks", staticmethod(spy))
    cut = _fit(MLPClassifier, data, y, **common)
    monkeypatch.setattr(_mlp, "_GRAD_MIN_BLOCKS", 1)
    whole = _fit(MLPClassifier, data, y, **common)
    # Uncut: 30 | 64 + 36 (| 40) input units.
    assert blocks[0] > blocks[1] == (3 if kind == "csr" else 4)
    if kind == "csr":
        for u, v in zip(cut.coefs_ + cut.intercepts_, whole.coefs_ + whole.intercepts_):
            np.testing.assert_array_equal(u, v)
    else:
        _same(cut, whole, 1e-4 if dtype == np.float32 else 1e-10)


def _tune(state, threads, batches):
    """Drive the kernels' thread tuner with batches timed by ``batches(t, k)``
    (seconds a row on t threads for the k-th batch); return the threads it
    picked."""
    picked = []
    for k in range(len(batches) if isinstance(batches, list) else 300):
        t = _mlp._kernels._tuner_step(state, threads)
        picked.append(t)
        per_row = batches[k](t) if isinstance(batches, list) else batches(t, k)
        _mlp._kernels._tuner_step(state, threads, record=True, used=t, per_row=per_row)
    return picked


def test_thread_tuner_leaves_a_quiet_machine_alone():
    # Two threads 1.8x faster all along: one probe of one thread (batch 4),
    # then never again.
    state = np.zeros(_mlp._kernels.TUNER_STATE_SIZE)
    picked = _tune(state, 2, lambda t, k: 1.0 if t == 1 else 1 / 1.8)
    assert picked.count(1) == 1 and picked[4] == 1
    assert state[0] == 0


def test_thread_tuner_falls_back_while_threads_lose_and_returns():
    # Batches 50-149: the second core is taken away and two threads run at
    # half speed, slower than one.  The tuner notices (all-thread rows 1.4x
    # their best), runs on one thread while that is faster, and goes back
    # to two once they win again, trying them every 16 batches meanwhile.
    def timing(t, k):
        if t == 1:
            return 1.0
        return 1.1 if 50 <= k < 150 else 0.55

    state = np.zeros(_mlp._kernels.TUNER_STATE_SIZE)
    picked = _tune(state, 2, timing)
    bad = picked[60:150]
    assert bad.count(1) > 0.8 * len(bad)
    assert 2 in bad                                   # still probing
    assert picked[-100:].count(2) >= 98               # back on two threads
    assert state[0] == 0


def test_thread_tuner_rejects_a_short_state():
    with pytest.raises(ValueError, match="TUNER_STATE_SIZE"):
        _mlp._kernels._tuner_step(np.zeros(3), 2)


@pytest.mark.parametrize("kind", ["dense", "csr"])
def test_batches_switching_thread_counts_give_the_same_weights(monkeypatch, kind):
    # A tuner stuck in its one-thread fallback still tries all threads every
    # 16 batches: a fit mixing one and two threads batch by batch must give
    # the bits of a one-thread fit.
    X, y = _sparse_dense_data(n=600, n_features=40, seed=5)
    data = sp.csr_matrix(X) if kind == "csr" else X
    if kind == "dense":
        monkeypatch.setattr(_mlp, "_SKIP_ZEROS_DENSITY", {"online": 0.0, "batch": 0.0})
    states = []
    real = _mlp._Workspace.__init__

    def fallback(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.tuner[:] = [1.0, 1e-9, 1.0, 1.0, 0.0, 0.0]
        states.append(self.tuner)

    common = dict(hidden_layer_sizes=(30,), solver="adam", batch_size=10, max_iter=3,
                  random_state=0, tol=0.0)
    old = _mlp._kernels._set_parallel_min_work(0.0)
    try:
        single = _fit(MLPClassifier, data, y, n_threads=1, **common)
        monkeypatch.setattr(_mlp._Workspace, "__init__", fallback)
        mixed = _fit(MLPClassifier, data, y, n_threads=2, **common)
    finally:
        _mlp._kernels._set_parallel_min_work(old)
    if _openmp_helpers.openmp_enabled():
        assert states[0][4] == 3 * 60                 # every batch was timed
    else:
        assert states[0][4] == 0                      # a serial build: no tuner
    for u, v in zip(single.coefs_ + single.intercepts_, mixed.coefs_ + mixed.intercepts_):
        np.testing.assert_array_equal(u, v)


def test_sparse_input_indices_are_used_without_a_copy():
    # scipy stores column indices in 32 bits, as the kernels read them: a
    # canonical CSR X of the training dtype reaches them as it is.
    X, _ = _sparse_dense_data(n=50, n_features=30)
    Xs = sp.csr_matrix(X)
    data, ind, ptr, skip, _ = _mlp._kernel_input(Xs, np.float64, "batch")
    assert ind.dtype == np.int32 and np.shares_memory(ind, Xs.indices)
    assert np.shares_memory(data, Xs.data)
    # The CSR copy of a zero-heavy dense X uses 32-bit indices too.
    _, ind, _, _, _ = _mlp._kernel_input(X, np.float64, "batch")
    assert ind.dtype == np.int32


def test_too_many_features_for_32_bit_indices():
    # Column indices past 2**31 - 1 cannot reach the kernels: the first
    # layer's weights could not be indexed either, and both checks say so.
    X = sp.csr_matrix(([1.0, 1.0], ([0, 1], [7, 2**31 + 1])), shape=(2, 2**31 + 5))
    with pytest.raises(ValueError, match="features"):
        MLPRegressor(hidden_layer_sizes=(1,), max_iter=1).fit(X, [0.0, 1.0])
    with pytest.raises(ValueError, match="32-bit"):
        _mlp._kernel_input(X, np.float64, "batch")


def test_first_layer_copy_sizes():
    # Rows are padded to whole 64-byte lines; no copy when they already are.
    size = _mlp._kernels.w0_copy_size
    assert size(784, 100, 4) == 784 * 112
    assert size(784, 100, 8) == 784 * 104
    assert size(784, 512, 4) == 0 and size(30, 8, 8) == 0 and size(30, 16, 4) == 0
    assert size(5, 1, 4) == 5 * 16 and size(5, 17, 8) == 5 * 24


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    dict(solver="sgd", batch_size=16),
    dict(solver="adam", batch_size=16, l1=1e-3, max_grad_norm=0.5),
    dict(solver="sgd", batch_size=40, momentum=0.5, nesterovs_momentum=False),
    dict(solver="lbfgs"),
])
def test_aligned_first_layer_copy_changes_no_bit(monkeypatch, dtype, params):
    # The sparse forward pass reads an aligned copy of W0 that the optimiser
    # step keeps in sync: without it (the weights read in place) every bit
    # of the fit and of predict must be the same.
    X, y = _sparse_dense_data(n=150, n_features=30, seed=3)
    X = sp.csr_matrix(X.astype(dtype))
    common = dict(hidden_layer_sizes=(20, 7), max_iter=3, random_state=0, tol=0.0,
                  n_threads=2, **params)
    calls = []
    real = _mlp._first_layer_copy

    def spy(spec, dtype, sparse):
        out = real(spec, dtype, sparse)
        calls.append(out.shape[0])
        return out

    monkeypatch.setattr(_mlp, "_first_layer_copy", spy)
    copied = _fit(MLPClassifier, X, y, **common)
    assert calls and all(n == 30 * (32 if dtype == np.float32 else 24) for n in calls)
    proba = copied.predict_proba(X)
    monkeypatch.setattr(_mlp, "_first_layer_copy",
                        lambda spec, dtype, sparse: real(spec, dtype, False))
    plain = _fit(MLPClassifier, X, y, **common)
    for u, v in zip(copied.coefs_ + copied.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_array_equal(u, v)
    assert copied.loss_ == plain.loss_
    assert getattr(copied, "loss_curve_", None) == getattr(plain, "loss_curve_", None)
    np.testing.assert_array_equal(proba, plain.predict_proba(X))


@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(20, 7), solver="adam", batch_size=16),
    dict(hidden_layer_sizes=(5,), solver="sgd", batch_size=1),
    dict(hidden_layer_sizes=(6, 3), activation="maxout", maxout_pieces=3,
         solver="sgd", batch_size=30, dropout=0.2),
    dict(hidden_layer_sizes=(9,), solver="lbfgs"),
])
def test_padded_hidden_rows_change_no_bit(monkeypatch, kind, params):
    # Hidden rows of the block buffers are padded to whole cache lines; the
    # padding must never reach a result.
    X, y = _sparse_dense_data(n=90, n_features=30, seed=4)
    X = sp.csr_matrix(X) if kind == "csr" else X
    common = dict(max_iter=3, random_state=0, tol=0.0, **params)
    padded = _fit(MLPClassifier, X, y, **common)
    spec = padded._net_spec(padded._layer_units(), padded._layer_zw())
    assert all(s % _mlp._ROW_ALIGN == 0 for s in spec["stride"][1:-1])
    assert spec["stride"][-1] == padded.n_outputs_
    proba = padded.predict_proba(X)
    monkeypatch.setattr(_mlp, "_ROW_ALIGN", 1)
    plain = _fit(MLPClassifier, X, y, **common)
    for u, v in zip(padded.coefs_ + padded.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_array_equal(u, v)
    assert padded.loss_ == plain.loss_
    np.testing.assert_array_equal(proba, plain.predict_proba(X))


def test_transposed_layer_copies(products):
    # Sizes: with BLAS, layers with fewer than WT_MAX_OUT outputs, but one,
    # have a copy; with our own products (which take B only as stored) every
    # such layer of at most WT_OWN_MAX weights.  The first layer never does
    # (it has no backward product).
    def size(units, zw=None):
        units = np.array(units, dtype=np.intp)
        zw = units if zw is None else np.array(zw, dtype=np.intp)
        return _kernels.wt_copy_size(units, zw)

    own = products == "own"
    assert size([64, 100, 10]) == 100 * 10
    assert size([784, 512, 256, 10]) == (512 * 256 if own else 0) + 256 * 10
    assert size([4, 500, 1]) == 0
    assert size([5, 3, 7, 2]) == 3 * 7 + 7 * 2
    assert size([5, 3, 40, 2]) == (3 * 40 if own else 0) + 40 * 2
    assert size([5, 3000, 2000, 2]) == 2000 * 2
    # Maxout: the weights of layer l are units[l] x zw[l + 1].
    assert size([5, 4, 3], zw=[5, 12, 3]) == 4 * 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(20, 7), solver="adam", batch_size=16),
    # Wide layers: copies only with our own products.  Batches of 64 and
    # 16 rows take the fused step in gradient tasks and the separate step.
    dict(hidden_layer_sizes=(48, 40, 36), solver="adam", batch_size=64),
    dict(hidden_layer_sizes=(48, 40), solver="sgd", momentum=0.9, batch_size=16,
         alpha=1e-3),
    dict(hidden_layer_sizes=(6, 3), activation="maxout", maxout_pieces=3,
         solver="sgd", batch_size=30, dropout=0.2),
    dict(hidden_layer_sizes=(9,), solver="lbfgs"),
])
@pytest.mark.parametrize("density", [0.15, 1.0])
def test_transposed_copies_match_the_weights_in_place(monkeypatch, products, dtype,
                                                     n_threads, params, density):
    # The backward pass reads layers through transposed copies that each
    # step refreshes: a fit without them (the weights read in place) takes
    # BLAS's transposed-operand path, so the same weights up to rounding; a
    # copy left stale for a batch would not be.  Mostly-zero input runs as
    # CSR (steps in the gradient tasks); dense input makes chunk-local
    # gradients, stepped in the chunks' region on two threads and by the
    # separate step on one.
    X, _ = _sparse_dense_data(n=120, n_features=12, density=density, seed=5)
    X = X.astype(dtype)
    # Four classes at any density: an output layer wide enough for a copy.
    score = X @ np.random.RandomState(1).normal(size=X.shape[1])
    y = np.digitize(score, np.quantile(score, [0.25, 0.5, 0.75]))
    common = dict(max_iter=4, random_state=0, tol=0.0, n_threads=n_threads, **params)
    sizes = []
    real = _kernels.wt_copy_size

    def spy(units, zw):
        sizes.append(real(units, zw))
        return sizes[-1]

    monkeypatch.setattr(_kernels, "wt_copy_size", spy)
    copied = _fit(MLPClassifier, X, y, **common)
    assert sizes and all(n > 0 for n in sizes)
    monkeypatch.setattr(_kernels, "wt_copy_size", lambda units, zw: 0)
    plain = _fit(MLPClassifier, X, y, **common)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for u, v in zip(copied.coefs_ + copied.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("hidden", [(), (1,), (2, 1)])
def test_predict_on_small_csr_inputs_stays_in_its_buffers(hidden):
    # Prediction buffers pad each thread's rows to cache lines; the rows a
    # chunk holds must come from the CSR row-bounds buffer, not from the
    # padded length (which overran it: heap corruption, caught under ASan).
    rng = np.random.RandomState(0)
    for n in range(1, 41, 3):
        X = rng.normal(size=(n, 3))
        y = np.arange(n) % 3
        clf = _fit(MLPClassifier, X, y, hidden_layer_sizes=hidden, max_iter=1,
                   random_state=0)
        np.testing.assert_allclose(clf.predict_proba(sp.csr_matrix(X)),
                                   clf.predict_proba(X), rtol=1e-12, atol=1e-12)
    spec = clf._net_spec(clf._layer_units(), clf._layer_zw())
    params = np.concatenate([c.ravel() for c in clf.coefs_ + clf.intercepts_])
    out = np.empty((4, 3))
    with pytest.raises(ValueError, match="rows a thread"):
        _kernels.forward(np.ones((4, 3)), None, None, 4, 3, spec, params, out,
                         np.zeros((1, 2)), np.empty((1, 8), dtype=np.intp), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(20, 7), solver="adam", batch_size=97),
    dict(hidden_layer_sizes=(6, 3), activation="maxout", maxout_pieces=3,
         solver="sgd", batch_size=150, dropout=0.2, max_grad_norm=0.5),
    dict(hidden_layer_sizes=(9,), solver="adam", batch_size=300, l1=1e-3),
])
def test_chunk_gradients_match_block_gradients(monkeypatch, dtype, params):
    # Mini-batches of dense input sum per-chunk gradients (a fixed partition
    # of the batch's rows); with the memory budget at zero the gradient is
    # made block by block over the whole batch: the same up to rounding.
    rng = np.random.RandomState(6)
    X = rng.normal(size=(700, 12)).astype(dtype)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    common = dict(max_iter=3, random_state=0, tol=0.0, n_threads=2, **params)
    chunked = _fit(MLPClassifier, X, y, **common)
    monkeypatch.setattr(_mlp, "_CHUNK_GRAD_BYTES", 0)
    blocked = _fit(MLPClassifier, X, y, **common)
    rtol = 2e-4 if dtype == np.float32 else 1e-9
    for u, v in zip(chunked.coefs_ + chunked.intercepts_,
                    blocked.coefs_ + blocked.intercepts_):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol)
    assert not all(np.array_equal(u, v) for u, v in zip(chunked.coefs_, blocked.coefs_))


@pytest.mark.parametrize("kind", ["dense", "csr"])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(150, 60), solver="adam", batch_size=100, alpha=1e-3),
    dict(hidden_layer_sizes=(70,), solver="sgd", batch_size=20, momentum=0.9),
    dict(hidden_layer_sizes=(40, 20), solver="sgd", batch_size=128, l1=1e-4,
         nesterovs_momentum=False, layer_lr="fan_in"),
    dict(hidden_layer_sizes=(30,), solver="adam", batch_size=50, l1=1e-3,
         sample_weight=True),
])
def test_step_in_the_gradient_pass_changes_no_weight_bit(kind, params):
    # Each block of parameters is stepped right after its gradient, in the
    # gradient pass: the weights must be bitwise those of the separate step
    # (only the summation order of the reported penalty differs).
    from cbackprop import _kernels

    params = dict(params)
    weighted = params.pop("sample_weight", False)
    if kind == "csr":
        X, y = _sparse_dense_data(n=600, n_features=90, seed=7)
        X = sp.csr_matrix(X)
    else:
        # Dense enough for BLAS; the networks are too large for the
        # chunk-local gradients (no separate gradient pass there).
        rng = np.random.RandomState(7)
        X = rng.normal(size=(600, 90))
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    sw = np.random.RandomState(0).uniform(0.2, 2, size=600) if weighted else None
    common = dict(max_iter=3, random_state=0, tol=0.0, n_threads=2, **params)
    old_work = _kernels._set_parallel_min_work(0.0)
    try:
        fused = _fit(MLPClassifier, X, y, sample_weight=sw, **common)
        old = _kernels._set_fused_step(False)
        try:
            plain = _fit(MLPClassifier, X, y, sample_weight=sw, **common)
        finally:
            _kernels._set_fused_step(old)
    finally:
        _kernels._set_parallel_min_work(old_work)
    for u, v in zip(fused.coefs_ + fused.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(fused.loss_curve_, plain.loss_curve_, rtol=1e-12)


@pytest.mark.parametrize("params", [
    dict(solver="sgd", batch_size=50, momentum=0.9),             # mini-batches
    dict(solver="sgd", batch_size=1, learning_rate_init=0.01),   # online: copy deferred
    dict(solver="adam", batch_size=160),                         # full batch, kept blocks
])
def test_csr_copy_memory_is_lent_to_the_next_fit(monkeypatch, params):
    # The memory of a dense X's CSR copy goes to the next fit: poisoned with
    # NaN bytes in between, the next fit must still equal the first, bit for
    # bit, and give the same memory back.
    memory = _mlp._CsrMemory(keep_bytes=2**30)
    monkeypatch.setattr(_mlp, "_CSR_MEMORY", memory)
    X, y = _sparse_dense_data(n=160, n_features=30, seed=4)
    common = dict(hidden_layer_sizes=(12, 7), max_iter=4, random_state=0, tol=0.0,
                  n_threads=2, **params)
    first = _fit(MLPClassifier, X, y, **common)
    held = memory._held
    assert held is not None and held[0].shape[0] >= np.count_nonzero(X)
    for a in held:
        a.view(np.uint8)[:] = 0xFF
    second = _fit(MLPClassifier, X, y, **common)
    assert memory._held is held
    for u, v in zip(first.coefs_ + first.intercepts_, second.coefs_ + second.intercepts_):
        np.testing.assert_array_equal(u, v)
    assert first.loss_curve_ == second.loss_curve_
    # Larger data: the held memory is too small and new memory replaces it.
    X2, y2 = _sparse_dense_data(n=400, n_features=30, seed=5)
    _fit(MLPClassifier, X2, y2, **common)
    assert memory._held is not held and memory._held[0].shape[0] >= np.count_nonzero(X2)
    # Over the limit nothing is kept.
    memory.keep_bytes = 0
    memory._held = None
    _fit(MLPClassifier, X, y, **common)
    assert memory._held is None and memory.held_bytes() == 0


def test_full_batch_objectives_do_not_drain_the_lent_csr_memory(monkeypatch):
    # validation_data's loss (built before the training workspace) and
    # lbfgs make their own CSR copies: the training fit still gets the held
    # memory back, and lbfgs leaves it held.
    memory = _mlp._CsrMemory(keep_bytes=2**30)
    monkeypatch.setattr(_mlp, "_CSR_MEMORY", memory)
    X, y = _sparse_dense_data(n=160, n_features=30, seed=4)
    common = dict(hidden_layer_sizes=(12,), max_iter=3, random_state=0, tol=0.0)
    _fit(MLPClassifier, X, y, solver="adam", batch_size=40, **common)
    held = memory._held
    assert held is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(solver="adam", batch_size=40, **common).fit(
            X, y, validation_data=(X[:60], y[:60]))
    assert memory._held is held
    _fit(MLPClassifier, X, y, solver="lbfgs", **common)
    assert memory._held is held


def test_concurrent_fits_do_not_share_csr_memory(monkeypatch):
    import threading

    monkeypatch.setattr(_mlp, "_CSR_MEMORY", _mlp._CsrMemory(keep_bytes=2**30))
    X, y = _sparse_dense_data(n=300, n_features=40, seed=6)
    configs = [dict(hidden_layer_sizes=(16,), solver="adam", batch_size=20),
               dict(hidden_layer_sizes=(9, 5), solver="sgd", batch_size=40)]
    alone = [_fit(MLPClassifier, X, y, max_iter=4, random_state=1, tol=0.0,
                  n_threads=1, **c) for c in configs]
    results = [[None] * 4 for _ in configs]

    def work(i):
        for r in range(4):
            results[i][r] = _fit(MLPClassifier, X, y, max_iter=4, random_state=1,
                                 tol=0.0, n_threads=1, **configs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ref, runs in zip(alone, results):
        for est in runs:
            for u, v in zip(ref.coefs_, est.coefs_):
                np.testing.assert_array_equal(u, v)


def test_dense_to_csr_into_given_arrays():
    X, _ = _sparse_dense_data(n=50, n_features=20, seed=7)
    counts = _kernels.row_nonzeros(X, 2)
    nnz = int(counts.sum())
    ref = _kernels.dense_to_csr(X, counts, 2)
    data_out = np.full(nnz + 5, np.nan)
    ind_out = np.full(nnz + 5, -1, dtype=np.int32)
    data, ind, ptr = _kernels.dense_to_csr(X, counts, 2, data_out, ind_out)
    assert np.shares_memory(data, data_out) and np.shares_memory(ind, ind_out)
    for u, v in zip((data, ind, ptr), ref):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="fewer than"):
        _kernels.dense_to_csr(X, counts, 2, data_out[:nnz - 1], ind_out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(150, 60), solver="adam", batch_size=100, alpha=1e-3),
    dict(hidden_layer_sizes=(40, 30, 20), solver="sgd", batch_size=64, momentum=0.9,
         sample_weight="zero first batch"),
    dict(hidden_layer_sizes=(70,), solver="sgd", batch_size=50,
         nesterovs_momentum=False, l1=1e-4),
    dict(hidden_layer_sizes=(20, 40), solver="adam", batch_size=300,
         activation="tanh", sample_weight="uniform"),
])
def test_merged_pass_changes_no_bit(dtype, params):
    X, y = _sparse_dense_data(n=700, n_features=120, density=0.1, seed=3)
    _check_merged_pass(sp.csr_matrix(X.astype(dtype)), y, params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(300, 100), solver="adam", batch_size=100),
    dict(hidden_layer_sizes=(200, 150, 80), solver="sgd", batch_size=128,
         momentum=0.9, sample_weight="uniform"),
])
def test_merged_pass_on_dense_input_changes_no_bit(dtype, params):
    # Dense input (BLAS first layer, rows gathered per chunk), networks too
    # large for the chunk-local gradients.
    rng = np.random.RandomState(5)
    X = rng.normal(size=(600, 120)).astype(dtype)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    _check_merged_pass(X, y, params)


def _sample_weights(kind, n, batch_size, rng):
    """None, "uniform" weights in [0.2, 2), or ones with a "zero first
    batch" (no shuffle: the first batch weighs nothing, so it has no step)."""
    if kind == "uniform":
        return rng.uniform(0.2, 2, size=n)
    if kind == "zero first batch":
        sw = np.ones(n)
        sw[:batch_size] = 0.0
        return sw
    return None


def _check_merged_pass(X, y, params):
    # Mini-batches on several threads run their row chunks and
    # gradient tasks in one region, the tasks waiting on the chunks'
    # progress flags; steps of upper layers may be put off until after the
    # tasks.  None of it may change a bit of the weights or the loss curve:
    # against the two-region pass, the forced put-off, and one thread.
    params = dict(params)
    weights = params.pop("sample_weight", None)
    sw = _sample_weights(weights, X.shape[0], params["batch_size"],
                         np.random.RandomState(0))
    common = dict(max_iter=3, random_state=0, tol=0.0, shuffle=weights is None,
                  **params)
    old_work = _kernels._set_parallel_min_work(0.0)
    old_mode = _kernels._set_merged_pass(1)
    try:
        one = _fit(MLPClassifier, X, y, sample_weight=sw, n_threads=1, **common)
        fits = {}
        for mode in (0, 1, 2):
            _kernels._set_merged_pass(mode)
            for n in (2, 3):
                passes, put_off = _kernels._merged_passes()
                fits[mode, n] = _fit(MLPClassifier, X, y, sample_weight=sw,
                                     n_threads=n, **common)
                passes = _kernels._merged_passes()[0] - passes
                put_off = _kernels._merged_passes()[1] - put_off
                # Every batch whose by-feature copy an earlier batch made
                # takes the merged pass, when on and the build has OpenMP (a
                # serial build runs one thread); the forced put-off puts off
                # at least one step a pass (a batch of zero weight has none).
                threads = _openmp_helpers.openmp_enabled()
                assert (passes > 0) == (mode > 0 and threads)
                assert (put_off > 0) == (mode == 2 and threads)
                if mode == 2 and weights != "zero first batch":
                    assert put_off >= passes
    finally:
        _kernels._set_merged_pass(old_mode)
        _kernels._set_parallel_min_work(old_work)
    for fit in fits.values():
        for u, v in zip(fit.coefs_ + fit.intercepts_, one.coefs_ + one.intercepts_):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(fit.loss_curve_, one.loss_curve_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200),
    dict(hidden_layer_sizes=(90, 40), solver="sgd", batch_size=150, momentum=0.9,
         alpha=1e-3, sample_weight="uniform"),
    dict(hidden_layer_sizes=(100,), solver="sgd", batch_size=100,
         learning_rate="adaptive", activation="tanh", l1=1e-4,
         sample_weight="zero first batch"),
])
def test_local_step_changes_no_bit(dtype, params):
    # Small dense networks make their gradient chunk by chunk; on several
    # threads the chunks' region then also sums and steps the update blocks
    # (after a barrier) instead of a second region doing it.  Against the
    # two-region pass and against one thread: the same bits.
    rng = np.random.RandomState(7)
    X = rng.uniform(0, 16, size=(900, 64)).astype(dtype)
    y = (X[:, :8].sum(axis=1) > 64).astype(int) + (X[:, 8] > 8)
    params = dict(params)
    weights = params.pop("sample_weight", None)
    sw = _sample_weights(weights, X.shape[0], params["batch_size"], rng)
    common = dict(max_iter=4, random_state=0, tol=0.0, shuffle=weights is None,
                  **params)
    old = _kernels._set_local_step(True)
    old_work = _kernels._set_parallel_min_work(0.0)
    try:
        one = _fit(MLPClassifier, X, y, sample_weight=sw, n_threads=1, **common)
        fits = []
        for on in (False, True):
            _kernels._set_local_step(on)
            for n in (2, 3):
                steps = _kernels._local_steps()
                fits.append(_fit(MLPClassifier, X, y, sample_weight=sw, n_threads=n,
                                 **common))
                steps = _kernels._local_steps() - steps
                # Batches of non-zero weight on several threads, when on and
                # the build has OpenMP (a serial build runs one thread; the
                # thread tuner runs some batches on one).
                assert (steps > 0) == (on and _openmp_helpers.openmp_enabled())
    finally:
        _kernels._set_local_step(old)
        _kernels._set_parallel_min_work(old_work)
    assert fits[0].n_iter_ == 4
    for fit in fits:
        for u, v in zip(fit.coefs_ + fit.intercepts_, one.coefs_ + one.intercepts_):
            np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(fit.loss_curve_, one.loss_curve_)


@pytest.mark.skipif(not _blas.own_gemm_ready(), reason="no AVX-512 on this CPU")
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-4), (np.float64, 1e-9)])
@pytest.mark.parametrize("params", [
    # 300 inputs: the first layer's products run over two 256-deep K panels;
    # relu layers take the bias and gate epilogues, tanh the plain ones.
    dict(hidden_layer_sizes=(40, 24), solver="adam", batch_size=50),
    dict(hidden_layer_sizes=(40,), activation="tanh", solver="sgd", momentum=0.9,
         batch_size=64, alpha=1e-3),
    dict(hidden_layer_sizes=(30, 20), solver="lbfgs"),
])
def test_own_products_and_blas_train_the_same_network(dtype, rtol, params):
    # The same fits with every product on BLAS and on our own kernels: the
    # same weights up to the products' rounding, on one thread and two, and
    # each path bitwise the same on one and two threads.
    rng = np.random.RandomState(3)
    X = rng.normal(size=(150, 300)).astype(dtype)
    y = np.digitize(X[:, :5].sum(axis=1), [-1.0, 0.0, 1.0])
    common = dict(max_iter=5, random_state=0, tol=0.0, **params)
    fits = {}
    for own in (False, True):
        before = _blas._set_own_gemm(own)
        try:
            for n_threads in (1, 2):
                fits[own, n_threads] = _fit(MLPClassifier, X, y, n_threads=n_threads,
                                            **common)
        finally:
            _blas._set_own_gemm(before)
    for own in (False, True):
        for u, v in zip(fits[own, 1].coefs_, fits[own, 2].coefs_):
            np.testing.assert_array_equal(u, v)
    _same(fits[True, 2], fits[False, 2], rtol)


@pytest.mark.skipif(not _blas.own_gemm_ready(), reason="no AVX-512 on this CPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [64, 200, 400])
@pytest.mark.parametrize("params", [dict(solver="adam"),
                                    dict(solver="sgd", activation="tanh", alpha=1e-3),
                                    dict(solver="adam", activation="logistic")])
def test_chunks_without_their_all_zero_columns(monkeypatch, dtype, batch_size, params):
    # load_digits' pixels: a 100-row chunk has 9 all-zero columns on
    # average.  Its rows are gathered without them and the first layer's
    # products run over the others: the same weights, bit for bit, as over
    # whole rows, on one thread and two, with one, two and four chunks a
    # batch.  Some zeros are -0, which count as zero.
    X, y = load_digits(return_X_y=True)
    X = X[:600].astype(dtype)
    X[X == 0] = np.where(np.arange(np.count_nonzero(X == 0)) % 3 == 0, -0.0, 0.0)
    y = y[:600]
    common = dict(hidden_layer_sizes=(40,), max_iter=3, tol=0.0, random_state=0,
                  batch_size=batch_size, **params)
    seen = []
    real = _kernels.run_epoch

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        if kwargs.get("cols") is not None and kwargs["cols"].size:
            # The last batch's first chunk: how many columns it kept.
            seen.append(int(kwargs["cols"][0]))
        return out

    monkeypatch.setattr(_kernels, "run_epoch", spy)
    fits = {}
    own = _blas._set_own_gemm(True)
    before = _kernels._set_zero_cols(True)
    try:
        for on in (True, False):
            _kernels._set_zero_cols(on)
            for n_threads in (1, 2):
                seen.clear()
                fits[on, n_threads] = _fit(MLPClassifier, X, y, n_threads=n_threads,
                                           **common)
                if on:
                    assert seen and all(0 < k < X.shape[1] for k in seen)
    finally:
        _kernels._set_zero_cols(before)
        _blas._set_own_gemm(own)
    for key, est in fits.items():
        for u, v in zip(est.coefs_ + est.intercepts_,
                        fits[True, 1].coefs_ + fits[True, 1].intercepts_):
            np.testing.assert_array_equal(u, v, err_msg=str(key))
        np.testing.assert_array_equal(est.loss_curve_, fits[True, 1].loss_curve_)


def test_one_hot_classes():
    Y = np.eye(4)[[2, 0, 3, 3, 1]]
    np.testing.assert_array_equal(_mlp._one_hot_classes(Y), [2, 0, 3, 3, 1])
    assert _mlp._one_hot_classes(Y).dtype == np.int32
    # Multilabel rows, soft targets and a single output are not one-hot.
    assert _mlp._one_hot_classes(np.array([[1.0, 1.0], [0.0, 1.0]])) is None
    assert _mlp._one_hot_classes(np.array([[0.9, 0.1], [0.0, 1.0]])) is None
    assert _mlp._one_hot_classes(np.array([[1.0], [0.0]])) is None
    assert _mlp._one_hot_classes(np.zeros((0, 3))) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [dict(hidden_layer_sizes=(30,)),
                                    # Unit-split batches (see split_bounds).
                                    dict(hidden_layer_sizes=(520,), max_iter=2),
                                    dict(hidden_layer_sizes=(20, 10), solver="sgd",
                                         batch_size=50)])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_targets_by_class(monkeypatch, dtype, params, weighted):
    # Softmax outputs with one-hot targets take their loss and deltas from
    # each sample's class instead of its target row: the same weights and
    # loss curve, bit for bit, on one thread and two.
    X, y = load_digits(return_X_y=True)
    X, y = X[:400].astype(dtype), y[:400]
    sw = np.random.RandomState(0).uniform(0.5, 2.0, size=len(y)) if weighted else None
    common = dict(max_iter=3, tol=0.0, random_state=0)
    common.update(params)
    real = _mlp._one_hot_classes
    used = []
    monkeypatch.setattr(_mlp, "_one_hot_classes",
                        lambda Y: used.append(real(Y)) or used[-1])
    fits = {}
    for by_class in (True, False):
        if not by_class:
            monkeypatch.setattr(_mlp, "_one_hot_classes", lambda Y: None)
        for n_threads in (1, 2):
            fits[by_class, n_threads] = _fit(MLPClassifier, X, y, sample_weight=sw,
                                             n_threads=n_threads, **common)
    assert used and all(u is not None for u in used)
    ref = fits[True, 1]
    for key, est in fits.items():
        for u, v in zip(est.coefs_ + est.intercepts_, ref.coefs_ + ref.intercepts_):
            np.testing.assert_array_equal(u, v, err_msg=str(key))
        np.testing.assert_array_equal(est.loss_curve_, ref.loss_curve_)


def test_column_masks_only_where_columns_are_mostly_zero():
    # The per-row column masks (a pass over X and 1/64 of its size) are
    # made only when a probe of rows shows enough mostly-zero columns.
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(1000, 64))
    assert not _mlp._zero_columns_likely(X)
    X[:, :3] = 0  # under 64 / ZERO_COLS_FRACTION columns
    assert not _mlp._zero_columns_likely(X)
    X[:, :4] = 0
    X[::50, 3] = 1.0  # non-zero in 2% of the rows: still mostly zero
    assert _mlp._zero_columns_likely(X)
    assert not _mlp._zero_columns_likely(np.zeros((0, 5)))
