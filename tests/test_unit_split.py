"""Unit-split mini-batches: one wide hidden layer on dense input, its units
cut into blocks that each thread trains on its own (see _kernels._split_batch)."""

import warnings

import numpy as np
import pytest
from sklearn import neural_network as sknn
from sklearn.exceptions import ConvergenceWarning

from cbackprop import MLPClassifier, MLPRegressor, _kernels


@pytest.fixture(autouse=True)
def _threads_for_any_work():
    # The test data are small: let every batch run on the threads asked for.
    old = _kernels._set_parallel_min_work(0.0)
    yield
    _kernels._set_parallel_min_work(old)


def _data(n=300, n_features=30, seed=0, regression=False):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    if regression:
        y = np.column_stack([X[:, 0] - X[:, 1] ** 2, np.tanh(X[:, 2])])
    else:
        y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5) + 2 * (X[:, 2] > 1)
    return X, y


def _fit(cls, X, y, sample_weight=None, split=True, **params):
    old = _kernels._set_unit_split(split)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return cls(**params).fit(X, y, sample_weight=sample_weight)
    finally:
        _kernels._set_unit_split(old)


def _params(est):
    return est.coefs_ + est.intercepts_


def test_split_bounds_depend_on_the_shape_only():
    def bounds(h, itemsize):
        return _kernels.split_bounds(h, itemsize).tolist()

    # float32: two blocks from 256 units, then one per 256 units, at most 8.
    assert bounds(100, 4) == bounds(255, 4) == []
    assert bounds(256, 4) == [0, 128, 256]
    assert bounds(300, 4) == [0, 150, 300]
    assert bounds(512, 4) == [0, 256, 512]
    assert bounds(1000, 4) == [0, 333, 666, 1000]
    assert bounds(100_000, 4) == [100_000 * p // 8 for p in range(9)]
    # float64: only from 512 units.
    assert bounds(256, 8) == bounds(511, 8) == []
    assert bounds(512, 8) == [0, 256, 512]
    # The scratch: nothing without blocks; each block's region on its own
    # pages, plus the slack that aligns the first.
    assert _kernels.split_scratch_size(np.empty(0, dtype=np.intp), 30, 4, 64, 8) == 0
    n = _kernels.split_scratch_size(np.array([0, 256, 512]), 30, 4, 64, 4)
    assert n % 1024 == 0 and n >= 2 * 4 * (30 * 256 + 256 + 256 * 4 + 16) + 1024


def test_split_blocks_only_for_shapes_the_kernel_splits():
    # The workspace reserves block scratch from split_blocks, which shares
    # the kernel's shape test: none for sparse input, two hidden layers,
    # dropout, maxout or more than SPLIT_MAX_OUT outputs (a 40-output
    # network reserved scratch the kernel never used before).
    X, y = _data(n=40)

    def blocks(csr=False, dtype=np.float32, n_out=3, **params):
        est = MLPRegressor(max_iter=1, **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X.astype(dtype), np.tile(y[:, None], (1, n_out)).astype(float))
        units = [X.shape[1], *est.hidden_layer_sizes, n_out]
        spec = est._net_spec(units, est._layer_zw())
        return _kernels.split_blocks(spec, csr, np.dtype(dtype).itemsize).tolist()

    wide = dict(hidden_layer_sizes=(512,))
    assert blocks(**wide) == [0, 256, 512]
    assert blocks(n_out=32, **wide) == [0, 256, 512]
    assert blocks(n_out=33, **wide) == []
    assert blocks(csr=True, **wide) == []
    assert blocks(dtype=np.float64, hidden_layer_sizes=(256,)) == []
    assert blocks(hidden_layer_sizes=(512, 16)) == []
    assert blocks(dropout=0.2, **wide) == []
    assert blocks(activation="maxout", **wide) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", [
    dict(solver="adam", batch_size=50),
    dict(solver="sgd", batch_size=64, momentum=0.9, nesterovs_momentum=True,
         learning_rate="invscaling"),
    dict(solver="sgd", batch_size=40, momentum=0.5, nesterovs_momentum=False,
         alpha=1e-2, sample_weight=True),
    dict(solver="adam", batch_size=64, shuffle=False, activation="tanh"),
    dict(solver="adam", batch_size=300),     # full batch: rows in place
    dict(solver="sgd", batch_size=50, l1=1e-3, momentum=0.9),
])
def test_unit_split_is_thread_invariant_and_matches_the_unsplit_path(dtype, params):
    params = dict(params)
    weighted = params.pop("sample_weight", False)
    X, y = _data()
    X = X.astype(dtype)
    sw = np.random.RandomState(1).uniform(0.2, 2.0, size=len(y)) if weighted else None
    common = dict(hidden_layer_sizes=(512,), max_iter=4, random_state=0, tol=0.0,
                  **params)
    fits = [_fit(MLPClassifier, X, y, sw, n_threads=t, **common) for t in (1, 2, 3)]
    for other in fits[1:]:
        for u, v in zip(_params(fits[0]), _params(other)):
            np.testing.assert_array_equal(u, v)
        assert other.loss_curve_ == fits[0].loss_curve_
    # The blocks sum in another order than the row chunks: the same fit to
    # rounding.
    plain = _fit(MLPClassifier, X, y, sw, n_threads=2, split=False, **common)
    rtol = 2e-3 if dtype == np.float32 else 1e-9
    for u, v in zip(_params(fits[0]), _params(plain)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * np.abs(v).max())
    np.testing.assert_allclose(fits[0].loss_curve_, plain.loss_curve_, rtol=rtol)
    assert fits[0].n_iter_ == plain.n_iter_


def test_unit_split_runs_for_wide_float32_layers():
    # Not only equal to rounding: the split path really ran (its sums round
    # differently), and its float32 weights stay float32.
    X, y = _data()
    X = X.astype(np.float32)
    common = dict(hidden_layer_sizes=(256,), max_iter=2, random_state=0, n_threads=2)
    split = _fit(MLPClassifier, X, y, **common)
    plain = _fit(MLPClassifier, X, y, split=False, **common)
    assert split.coefs_[0].dtype == np.float32
    assert any(not np.array_equal(u, v) for u, v in zip(_params(split), _params(plain)))


def test_unit_split_regressor_matches_scikit_learn():
    X, y = _data(n=200, regression=True)
    common = dict(hidden_layer_sizes=(512,), solver="adam", batch_size=32, max_iter=3,
                  random_state=0, tol=0.0)
    ours = _fit(MLPRegressor, X, y, n_threads=2, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = sknn.MLPRegressor(**common).fit(X, y)
    for u, v in zip(_params(ours), _params(theirs)):
        np.testing.assert_allclose(u, v, rtol=1e-8, atol=1e-10)


def test_unit_split_hands_back_weights_and_optimiser_state():
    # The blocks hold the weights and Adam's moments during a call; the
    # next call (warm start, partial_fit) must continue from them exactly
    # as the unsplit path does.
    X, y = _data(seed=3)
    X = X.astype(np.float32)
    common = dict(hidden_layer_sizes=(256,), solver="adam", batch_size=60,
                  max_iter=2, random_state=0, tol=0.0, n_threads=2)

    def run(split):
        old = _kernels._set_unit_split(split)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                est = MLPClassifier(warm_start=True, **common).fit(X, y)
                est.fit(X, y)
                for _ in range(2):
                    est.partial_fit(X, y)
            return est
        finally:
            _kernels._set_unit_split(old)

    split, plain = run(True), run(False)
    assert split.n_iter_ == plain.n_iter_
    assert len(split.loss_curve_) == len(plain.loss_curve_) == 6
    for u, v in zip(_params(split), _params(plain)):
        np.testing.assert_allclose(u, v, rtol=2e-3, atol=2e-3 * np.abs(v).max())
    np.testing.assert_allclose(split.loss_curve_, plain.loss_curve_, rtol=1e-3)


@pytest.mark.parametrize("params", [
    dict(dropout=0.2),
    dict(max_grad_norm=0.5),
    dict(activation="maxout"),
    dict(batch_size=2500),          # a full batch of two passes
    dict(hidden_layer_sizes=(512, 8)),
])
def test_unit_split_falls_back_where_it_cannot_run(params):
    # Dropout, clipping, maxout, batches of several passes and deeper
    # networks take the usual path: bitwise the same weights with the split
    # switched off.
    n = 2500 if params.get("batch_size", 0) > 2048 else 300
    X, y = _data(n=n, seed=5)
    X = X.astype(np.float32)
    common = dict(hidden_layer_sizes=(512,), solver="adam", batch_size=64, max_iter=2,
                  random_state=0, n_threads=2)
    common.update(params)
    split = _fit(MLPClassifier, X, y, **common)
    plain = _fit(MLPClassifier, X, y, split=False, **common)
    for u, v in zip(_params(split), _params(plain)):
        np.testing.assert_array_equal(u, v)


def test_unit_split_keeps_the_last_finite_epoch_when_training_diverges():
    X, y = _data(seed=6)
    X = X.astype(np.float32) * 1e3
    est = MLPRegressor(hidden_layer_sizes=(256,), solver="sgd", batch_size=50,
                       learning_rate_init=10.0, momentum=0.0, max_iter=20,
                       random_state=0, n_threads=2)
    with pytest.raises(ValueError, match="diverged"):
        est.fit(X, y.astype(float))
    assert all(np.isfinite(c).all() for c in _params(est))
    assert len(est.loss_curve_) == est.n_iter_
