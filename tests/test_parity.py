"""Drop-in parity: same parameters and random_state give scikit-learn's trajectory."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import neural_network as sknn

from cbackprop import MLPClassifier, MLPRegressor, loss_and_gradients

RTOL = 1e-8


def _data(kind, n=150, n_features=8, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    w = rng.normal(size=(n_features, 3))
    s = X @ w
    if kind == "binary":
        y = np.where(s[:, 0] > 0, "yes", "no")
    elif kind == "multiclass":
        y = np.argmax(s, axis=1) * 10 + 1
    elif kind == "multilabel":
        y = (s > 0).astype(int)
    elif kind == "regression":
        y = s[:, 0] + 0.1 * rng.normal(size=n)
    elif kind == "multioutput":
        y = s[:, :2]
    elif kind == "poisson":
        y = rng.poisson(np.exp(0.3 * s[:, 0])).astype(float)
    return X, y


def _pair(kind, **params):
    if kind in ("binary", "multiclass", "multilabel"):
        return MLPClassifier(**params), sknn.MLPClassifier(**params)
    if kind == "poisson":
        params["loss"] = "poisson"
    return MLPRegressor(**params), sknn.MLPRegressor(**params)


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    scale = np.max(np.abs(b)) if b.size else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _assert_same_fit(ours, theirs, rtol=RTOL, curve=True):
    assert ours.n_iter_ == theirs.n_iter_
    assert len(ours.coefs_) == len(theirs.coefs_)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        _close(a, b, rtol)
    if curve and hasattr(theirs, "loss_curve_"):
        _close(ours.loss_curve_, theirs.loss_curve_, rtol)
        assert ours.t_ == theirs.t_
    if curve:
        assert ours.loss_ == pytest.approx(theirs.loss_, rel=max(rtol, 1e-6)
                                           if not hasattr(theirs, "loss_curve_")
                                           else rtol)
    assert ours.out_activation_ == theirs.out_activation_
    assert ours.n_layers_ == theirs.n_layers_
    assert ours.n_outputs_ == theirs.n_outputs_


def _fit_both(kind, X=None, y=None, sample_weight=None, **params):
    if X is None:
        X, y = _data(kind)
    params.setdefault("hidden_layer_sizes", (12, 7))
    params.setdefault("random_state", 0)
    params.setdefault("max_iter", 20)
    ours, theirs = _pair(kind, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X, y, sample_weight=sample_weight)
        theirs.fit(X, y, sample_weight=sample_weight)
    return ours, theirs


SOLVER_CASES = [
    dict(solver="adam"),
    dict(solver="adam", batch_size=32, beta_1=0.8, beta_2=0.99, epsilon=1e-7),
    dict(solver="sgd", learning_rate_init=0.01),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.05, power_t=0.3),
    dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.01,
         n_iter_no_change=2, tol=1e-2),
    dict(solver="sgd", momentum=0.0, batch_size=17, learning_rate_init=0.01),
    dict(solver="sgd", nesterovs_momentum=False, momentum=0.5, learning_rate_init=0.01),
    dict(solver="adam", shuffle=False, batch_size=40),
    dict(solver="adam", alpha=0.1, batch_size=150),
]


@pytest.mark.parametrize("params", SOLVER_CASES)
@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_stochastic_solvers(kind, params):
    _assert_same_fit(*_fit_both(kind, **params))


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression",
                                  "poisson"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_activations_and_targets(kind, activation, solver):
    _assert_same_fit(*_fit_both(kind, activation=activation, solver=solver,
                                learning_rate_init=0.003 if kind == "poisson" else 0.01))


@pytest.mark.parametrize("kind", ["multiclass", "regression", "multilabel"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_online_mode_batch_size_one(kind, solver):
    X, y = _data(kind, n=60)
    ours, theirs = _fit_both(kind, X, y, solver=solver, batch_size=1, max_iter=5,
                             learning_rate_init=0.002)
    _assert_same_fit(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("batch_size", [1, 32])
def test_sample_weight(kind, solver, batch_size):
    X, y = _data(kind, n=80)
    sw = np.random.RandomState(5).uniform(0.2, 3.0, X.shape[0])
    ours, theirs = _fit_both(kind, X, y, sample_weight=sw, solver=solver,
                             batch_size=batch_size, max_iter=4 if batch_size == 1
                             else 20, learning_rate_init=0.002)
    _assert_same_fit(ours, theirs, rtol=1e-6 if batch_size == 1 else RTOL)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression"])
@pytest.mark.parametrize("weighted", [False, True])
def test_early_stopping(kind, weighted):
    X, y = _data(kind, n=200)
    sw = np.random.RandomState(2).uniform(0.5, 2, 200) if weighted else None
    ours, theirs = _fit_both(kind, X, y, sample_weight=sw, early_stopping=True,
                             validation_fraction=0.2, n_iter_no_change=3,
                             max_iter=40, learning_rate_init=0.01)
    _assert_same_fit(ours, theirs)
    _close(ours.validation_scores_, theirs.validation_scores_)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_,
                                                        rel=RTOL)
    assert ours.best_loss_ is None and theirs.best_loss_ is None


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "regression",
                                  "poisson"])
@pytest.mark.parametrize("activation", ["logistic", "tanh", "relu"])
def test_lbfgs(kind, activation):
    ours, theirs = _fit_both(kind, solver="lbfgs", max_iter=30, activation=activation)
    _assert_same_fit(ours, theirs, rtol=1e-6)


def test_lbfgs_sample_weight_and_max_fun():
    X, y = _data("multiclass")
    sw = np.random.RandomState(1).uniform(0.1, 2, X.shape[0])
    _assert_same_fit(*_fit_both("multiclass", X, y, sample_weight=sw, solver="lbfgs",
                                max_iter=30), rtol=1e-6)
    _assert_same_fit(*_fit_both("multiclass", X, y, solver="lbfgs", max_fun=7),
                     rtol=1e-6)


@pytest.mark.parametrize("fmt", [sp.csr_matrix, sp.csc_matrix])
@pytest.mark.parametrize("solver,batch_size", [("adam", "auto"), ("sgd", 1),
                                               ("lbfgs", "auto")])
def test_sparse_input(fmt, solver, batch_size):
    X, y = _data("multiclass", n=90)
    X[np.abs(X) < 1.0] = 0
    ours, theirs = _fit_both("multiclass", fmt(X), y, solver=solver,
                             batch_size=batch_size,
                             max_iter=3 if batch_size == 1 else 20)
    _assert_same_fit(ours, theirs, rtol=1e-6)
    dense, _ = _fit_both("multiclass", X, y, solver=solver, batch_size=batch_size,
                         max_iter=3 if batch_size == 1 else 20)
    _assert_same_fit(ours, dense, rtol=1e-9)


def test_partial_fit_sequence_and_warm_start():
    X, y = _data("multiclass")
    ours, theirs = _pair("multiclass", hidden_layer_sizes=(9,), random_state=3,
                         solver="sgd", learning_rate_init=0.02)
    for i in range(4):
        sl = slice(i * 30, (i + 1) * 30 + 30)
        ours.partial_fit(X[sl], y[sl], classes=np.unique(y))
        theirs.partial_fit(X[sl], y[sl], classes=np.unique(y))
        _assert_same_fit(ours, theirs)

    ours, theirs = _pair("regression", hidden_layer_sizes=(9,), random_state=3,
                         warm_start=True, max_iter=5)
    Xr, yr = _data("regression")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            ours.fit(Xr, yr)
            theirs.fit(Xr, yr)
            _assert_same_fit(ours, theirs)


def test_multioutput_squared_error_weights_follow_sklearn_loss_is_consistent():
    X, y = _data("multioutput")
    ours, theirs = _fit_both("multioutput", X, y, solver="adam", max_iter=20,
                             learning_rate_init=0.01)
    _assert_same_fit(ours, theirs, curve=False)
    # scikit-learn reports the mean over outputs (issue 8349); cbackprop
    # reports the sum, which is the objective its gradient belongs to.
    assert ours.loss_ > theirs.loss_ * 1.5

    # With one full batch and a vanishing step, the epoch loss is the
    # objective at the (unchanged) weights, which loss_and_gradients returns.
    est = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=X.shape[0],
                       learning_rate_init=1e-12, momentum=0.0, max_iter=1,
                       random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    loss, _, _ = loss_and_gradients(est, X, y)
    assert est.loss_ == pytest.approx(loss, rel=1e-9)


def test_multioutput_regression_lbfgs_minimises_consistent_objective():
    X, y = _data("multioutput")
    ours, _ = _fit_both("multioutput", X, y, solver="lbfgs", max_iter=30)
    loss, _, _ = loss_and_gradients(ours, X, y)
    assert ours.loss_ == pytest.approx(loss, rel=1e-10)


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_chunk_gradients_follow_sklearn(monkeypatch, kind, solver):
    # Batches of 100 dense rows and a small network: the gradient is made
    # per 50-row chunk and summed (cbackprop's _chunk_grad), a different
    # summation order from scikit-learn's one product over the batch.
    from cbackprop import _mlp

    sizes = []
    real = _mlp._kernels.chunk_grad_size

    def spy(*args):
        sizes.append(real(*args))
        return sizes[-1]

    monkeypatch.setattr(_mlp._kernels, "chunk_grad_size", spy)
    X, y = _data(kind, n=600)
    ours, theirs = _fit_both(kind, X, y, solver=solver, batch_size=100, max_iter=10)
    assert sizes and all(n > 0 for n in sizes)
    _assert_same_fit(ours, theirs)


def test_load_digits_defaults_follow_sklearn():
    # The benchmark's digits scenario end to end: scikit-learn's defaults,
    # 130 epochs of 200-row batches (the last of 197 rows in three chunks).
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    ours, theirs = _pair("multiclass", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X, y)
        theirs.fit(X, y)
    _assert_same_fit(ours, theirs)
