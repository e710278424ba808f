"""Exact gradients: kernels vs the NumPy reference vs finite differences."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from reference_checks import assert_matches_reference

from cbackprop import (
    MLPClassifier,
    MLPRegressor,
    check_gradients,
    loss_and_gradients,
)
from cbackprop import _reference as ref

ACTIVATIONS = ["identity", "logistic", "tanh", "relu", "leaky_relu", "elu",
               "lecun_tanh", "softplus"]
SMOOTH = ["identity", "logistic", "tanh", "elu", "lecun_tanh", "softplus"]


def _problem(kind, rng, n=40, n_features=5):
    X = rng.normal(size=(n, n_features))
    if kind == "binary":
        y = rng.randint(0, 2, n)
    elif kind == "multiclass":
        y = rng.randint(0, 4, n)
    elif kind == "multilabel":
        y = rng.randint(0, 2, (n, 3))
    elif kind == "regression":
        y = rng.normal(size=n)
    elif kind == "multioutput":
        y = rng.normal(size=(n, 3))
    elif kind == "poisson":
        y = rng.poisson(2.0, size=n).astype(float)
    return X, y


def _fitted(kind, activation, dtype=np.float64, alpha=1e-2, hidden=(6, 4), seed=0):
    """An estimator initialised on the problem (1 epoch, so weights are generic)."""
    rng = np.random.RandomState(seed)
    X, y = _problem(kind, rng)
    X = X.astype(dtype)
    if kind in ("binary", "multiclass", "multilabel"):
        est = MLPClassifier(hidden_layer_sizes=hidden, activation=activation,
                            alpha=alpha, max_iter=1, random_state=seed)
    else:
        loss = "poisson" if kind == "poisson" else "squared_error"
        est = MLPRegressor(loss=loss, hidden_layer_sizes=hidden, activation=activation,
                           alpha=alpha, max_iter=1, random_state=seed,
                           learning_rate_init=1e-3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, X, y


KINDS = ["binary", "multiclass", "multilabel", "regression", "multioutput", "poisson"]


@pytest.mark.parametrize("kind,activation", itertools.product(KINDS, ACTIVATIONS))
@pytest.mark.parametrize("weighted", [False, True])
def test_kernel_matches_numpy_reference_float64(kind, activation, weighted):
    est, X, y = _fitted(kind, activation)
    sw = np.random.RandomState(1).uniform(0.1, 3.0, X.shape[0]) if weighted else None
    assert_matches_reference(est, X, y, sw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernel_matches_numpy_reference_float32(kind, activation):
    est, X, y = _fitted(kind, activation, dtype=np.float32)
    assert est.coefs_[0].dtype == np.float32
    assert_matches_reference(est, X, y)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("activation", SMOOTH)
def test_finite_differences_float64(kind, activation):
    est, X, y = _fitted(kind, activation)
    assert check_gradients(est, X, y) < 1e-7


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_finite_differences_relu_away_from_kinks(kind, activation):
    # relu is not differentiable at 0; with generic weights no sample sits
    # within eps of a kink, so central differences are exact there too.
    est, X, y = _fitted(kind, activation)
    assert check_gradients(est, X, y) < 1e-7


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size", [1, 40])
def test_sgd_step_follows_reference_gradient(activation, dtype, batch_size):
    """One epoch of plain SGD (no momentum, no shuffle) in online or full-batch
    mode equals updating with the NumPy reference gradient by hand."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 5)).astype(dtype)
    y = rng.randint(0, 3, 40)
    est = MLPClassifier(hidden_layer_sizes=(6, 4), activation=activation, alpha=1e-2,
                        solver="sgd", momentum=0.0, learning_rate_init=0.05,
                        batch_size=batch_size, shuffle=False, max_iter=1,
                        leaky_relu_slope=0.05, random_state=0)
    est._validate_params()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = MLPClassifier(**{**est.get_params(), "learning_rate_init": 1e-300})
        start.fit(X, y)  # initial weights (a vanishing step leaves them as drawn)
        est.fit(X, y)
    coefs = [c.astype(float) for c in start.coefs_]
    icpts = [b.astype(float) for b in start.intercepts_]
    Y = start._label_binarizer.transform(y)
    for s in range(0, 40, batch_size):
        _, cg, ig = ref.loss_and_gradients(coefs, icpts, X[s:s + batch_size],
                                           Y[s:s + batch_size], activation, "softmax",
                                           "log_loss", 1e-2, slope=0.05)
        coefs = [c - 0.05 * g for c, g in zip(coefs, cg)]
        icpts = [b - 0.05 * g for b, g in zip(icpts, ig)]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, b in zip(est.coefs_ + est.intercepts_, coefs + icpts):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_leaky_relu_slope_is_used_and_validated():
    est_a, X, y = _fitted("multiclass", "leaky_relu")
    est_b = MLPClassifier(**{**est_a.get_params(), "leaky_relu_slope": 0.3})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est_b.fit(X, y)
    assert not np.allclose(est_a.coefs_[0], est_b.coefs_[0])
    assert check_gradients(est_b, X, y) < 1e-7
    with pytest.raises(ValueError, match="leaky_relu_slope"):
        MLPClassifier(activation="leaky_relu", leaky_relu_slope=1.5).fit(X, y)


def test_finite_differences_with_sample_weight_and_sparse_input():
    est, X, y = _fitted("multiclass", "tanh")
    sw = np.random.RandomState(3).uniform(0, 2, X.shape[0])
    Xs = X.copy()
    Xs[np.abs(Xs) < 0.8] = 0
    for data in (Xs, sp.csr_matrix(Xs), sp.csc_matrix(Xs)):
        assert check_gradients(est, data, y, sample_weight=sw) < 1e-7
    dense = loss_and_gradients(est, Xs, y, sw)
    sparse = loss_and_gradients(est, sp.csr_matrix(Xs), y, sw)
    assert dense[0] == pytest.approx(sparse[0], rel=1e-13)
    for a, b in zip(dense[1] + dense[2], sparse[1] + sparse[2]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)


def test_check_gradients_detects_a_wrong_gradient(monkeypatch):
    # The check must be able to fail: corrupt one gradient entry.
    est, X, y = _fitted("multiclass", "tanh")
    original = type(est)._objective_setup

    def broken(self, *args, **kwargs):
        objective = original(self, *args, **kwargs)

        def wrapped(params, need_grad=True):
            data, penalty, grad = objective(params, need_grad)
            if need_grad:
                grad[3] += 1e-3
            return data, penalty, grad
        return wrapped

    monkeypatch.setattr(type(est), "_objective_setup", broken)
    assert check_gradients(est, X, y) > 1e-4


def test_check_gradients_subset_and_deep_network():
    est, X, y = _fitted("multiclass", "tanh", hidden=(8, 7, 6))
    err = check_gradients(est, X, y, max_params=50, random_state=1)
    assert err < 1e-7


def test_loss_and_gradients_is_what_lbfgs_minimises():
    # At an lbfgs optimum the exposed gradient is (near) zero.
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    est = MLPRegressor(hidden_layer_sizes=(5,), solver="lbfgs", activation="tanh",
                       max_iter=2000, tol=1e-10, random_state=0).fit(X, y)
    loss, cg, ig = loss_and_gradients(est, X, y)
    assert loss == pytest.approx(est.loss_, rel=1e-10)
    assert max(np.max(np.abs(g)) for g in cg + ig) < 1e-3


def test_loss_and_gradients_validates_labels():
    est, X, y = _fitted("multiclass", "tanh")
    with pytest.raises(ValueError, match="not fitted on"):
        loss_and_gradients(est, X, np.full(X.shape[0], 99))
    with pytest.raises(ValueError, match="samples"):
        loss_and_gradients(est, X, y[:-1])
