"""The lectures' toolbox: losses, maxout, per-layer activations, L1, dropout,
clipping, class weights, initialisations, per-layer rates, rprop, gtol and
validation sets -- each against the NumPy reference, finite differences and
hand-written update rules, in online and batch mode, float32 and float64."""

import warnings

import numpy as np
import pytest
import sklearn
from reference_checks import assert_matches_reference, ref_loss_name, targets
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from cbackprop import (
    MLPClassifier,
    MLPRegressor,
    _kernels,
    check_gradients,
    loss_and_gradients,
)
from cbackprop import _reference as ref


def _quiet_fit(est, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(*args, **kwargs)


def _data(kind, n=40, n_features=5, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    if kind == "binary":
        y = rng.randint(0, 2, n)
    elif kind == "multiclass":
        y = rng.randint(0, 4, n)
    elif kind == "multilabel":
        y = rng.randint(0, 2, (n, 3))
    elif kind == "regression":
        y = rng.normal(size=n)
    else:  # multioutput
        y = rng.normal(size=(n, 2))
    return X, y


def _estimator(kind, **params):
    common = dict(hidden_layer_sizes=(6, 4), max_iter=1, random_state=0,
                  learning_rate_init=1e-3)
    common.update(params)
    if kind in ("binary", "multiclass", "multilabel"):
        return MLPClassifier(**common)
    return MLPRegressor(**common)


# (kind, estimator parameters): every toolbox item that changes the objective.
OBJECTIVES = [
    ("binary", dict(loss="squared_error", activation="logistic")),
    ("multiclass", dict(loss="squared_error", activation="logistic")),
    ("multilabel", dict(loss="squared_error", activation="tanh")),
    ("binary", dict(loss="hinge", activation="tanh")),
    ("multiclass", dict(loss="hinge", activation="tanh")),
    ("multilabel", dict(loss="hinge", activation="softplus")),
    ("regression", dict(loss="absolute_error", activation="tanh")),
    ("multioutput", dict(loss="absolute_error", activation="elu")),
    ("regression", dict(loss="huber", huber_delta=0.3, activation="tanh")),
    ("multioutput", dict(loss="huber", huber_delta=0.5, activation="logistic")),
    ("multiclass", dict(activation="maxout")),
    ("multiclass", dict(activation="maxout", maxout_pieces=3)),
    ("regression", dict(activation=["maxout", "tanh"])),
    ("multiclass", dict(activation=["tanh", "maxout"], hidden_layer_sizes=(7, 5))),
    ("multilabel", dict(activation=["logistic", "elu", "lecun_tanh"],
                        hidden_layer_sizes=(6, 5, 4))),
    ("multiclass", dict(l1=0.05, alpha=0.01, activation="tanh")),
    ("regression", dict(l1=0.02, activation=["softplus", "maxout"])),
]


def _fitted(kind, params, dtype=np.float64):
    X, y = _data(kind)
    est = _estimator(kind, **params)
    _quiet_fit(est, X.astype(dtype), y)
    return est, X.astype(dtype), y


@pytest.mark.parametrize("kind,params", OBJECTIVES)
@pytest.mark.parametrize("weighted", [False, True])
def test_objective_matches_reference_float64(kind, params, weighted):
    est, X, y = _fitted(kind, params)
    sw = np.random.RandomState(1).uniform(0.1, 3.0, X.shape[0]) if weighted else None
    assert_matches_reference(est, X, y, sw)


@pytest.mark.parametrize("kind,params", OBJECTIVES)
def test_objective_matches_reference_float32(kind, params):
    est, X, y = _fitted(kind, params, np.float32)
    assert est.coefs_[0].dtype == np.float32
    assert_matches_reference(est, X, y, grad_rtol=2e-3)


@pytest.mark.parametrize("kind,params", OBJECTIVES)
def test_finite_differences(kind, params):
    # Kinks (hinge, absolute, Huber, maxout ties, L1 at 0) are a
    # measure-zero set: generic weights keep every sample away from them.
    est, X, y = _fitted(kind, params)
    assert check_gradients(est, X, y) < 1e-7


@pytest.mark.parametrize("activation", ["tanh", "maxout"])
@pytest.mark.parametrize("step", [0, 1234])
def test_dropout_objective_matches_reference_and_finite_differences(activation, step):
    est, X, y = _fitted("multiclass", dict(dropout=0.4, activation=activation,
                                           hidden_layer_sizes=(8, 6)))
    loss = assert_matches_reference(est, X, y, dropout_step=step)
    # A smaller step than the default keeps the differences off maxout's
    # kinks (two pieces within 2 eps of each other for some sample).  tanh
    # has none and keeps the default: at 1e-5 the differences' rounding
    # alone reached 1.1e-7 for one product summation order.
    eps = 1e-5 if activation == "maxout" else 1e-4
    assert check_gradients(est, X, y, dropout_step=step, eps=eps) < 1e-7
    # Masks differ from the full network and between steps.
    full = loss_and_gradients(est, X, y)[0]
    other = loss_and_gradients(est, X, y, dropout_step=step + 40)[0]
    assert loss != full and loss != other


def test_dropout_masks_keep_the_expected_share_and_scale():
    scale = ref.dropout_scale(0.3, 12345, 0, 2000, 1, 50)
    assert set(np.unique(scale)) == {0.0, 1 / 0.7}
    assert np.mean(scale == 0) == pytest.approx(0.3, abs=0.01)
    assert scale.mean() == pytest.approx(1.0, abs=0.02)  # inverted dropout


def _plain_sgd_epoch(est, start, X, y, batch_size, lr, clip=None, lr_mult=None,
                     dropout=None):
    """Plain SGD from ``start``'s weights with the reference gradient."""
    coefs = [c.astype(float) for c in start.coefs_]
    icpts = [b.astype(float) for b in start.intercepts_]
    Y = targets(start, y, X.shape[0])
    L = len(coefs)
    mult = np.ones(L) if lr_mult is None else lr_mult
    for s in range(0, X.shape[0], batch_size):
        drop = None if dropout is None else (dropout[0], dropout[1], s)
        _, cg, ig = ref.loss_and_gradients(
            coefs, icpts, X[s:s + batch_size], Y[s:s + batch_size], est.activation,
            start.out_activation_, ref_loss_name(start), est.alpha, l1=est.l1,
            huber_delta=getattr(est, "huber_delta", 1.0), dropout=drop)
        c = 1.0
        if clip is not None:
            norm = np.sqrt(sum(np.sum(g * g) for g in cg + ig))
            c = min(1.0, clip / norm)
        coefs = [w - lr * mult[i] * c * g for i, (w, g) in enumerate(zip(coefs, cg))]
        icpts = [b - lr * mult[i] * c * g for i, (b, g) in enumerate(zip(icpts, ig))]
    return coefs, icpts


STEP_CASES = [
    ("multiclass", dict(loss="squared_error", activation="logistic")),
    ("multiclass", dict(loss="hinge", activation="tanh")),
    ("binary", dict(loss="hinge", activation="relu")),
    ("regression", dict(loss="huber", huber_delta=0.2, activation="tanh")),
    ("multioutput", dict(loss="absolute_error", activation="tanh")),
    ("multiclass", dict(activation=["maxout", "tanh"])),
    ("multiclass", dict(l1=0.03, activation="tanh")),
    ("multiclass", dict(layer_lr="fan_in", activation="tanh")),
    ("regression", dict(max_grad_norm=0.05, activation="tanh")),
    ("multiclass", dict(max_grad_norm=0.1, l1=0.01, activation="maxout")),
    ("multiclass", dict(dropout=0.3, activation="tanh")),
    ("regression", dict(dropout=0.5, activation="maxout")),
]


@pytest.mark.parametrize("kind,params", STEP_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch_size", [1, 8, 40])
def test_sgd_epoch_follows_the_reference(kind, params, dtype, batch_size):
    """One epoch of plain SGD (no momentum, no shuffle) in online, mini-batch
    and full-batch mode equals stepping with the reference gradient by hand:
    clipping by the global norm, per-layer rates and dropout masks included."""
    X, y = _data(kind)
    X = X.astype(dtype)
    lr = 0.05
    est = _estimator(kind, solver="sgd", momentum=0.0, learning_rate_init=lr,
                     batch_size=batch_size, shuffle=False, alpha=1e-2, **params)
    start = _estimator(kind, **{**est.get_params(), "learning_rate_init": 1e-300})
    _quiet_fit(start, X, y)  # initial weights: a vanishing step leaves them as drawn
    _quiet_fit(est, X, y)
    units = est._layer_units()
    mult = 1 / np.sqrt(units[:-1]) if est.layer_lr == "fan_in" else None
    dropout = (est.dropout, est._dropout_seed) if est.dropout > 0 else None
    coefs, icpts = _plain_sgd_epoch(est, start, X, y, batch_size, lr,
                                    est.max_grad_norm, mult, dropout)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    for a, b in zip(est.coefs_ + est.intercepts_, coefs + icpts):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_clipping_binds_and_bounds_the_step():
    X, y = _data("regression")
    common = dict(solver="sgd", momentum=0.0, learning_rate_init=0.1, shuffle=False,
                  batch_size=40, max_iter=1, random_state=0, hidden_layer_sizes=(6,))
    start = _quiet_fit(MLPRegressor(**{**common, "learning_rate_init": 1e-300}), X, y)
    clipped = _quiet_fit(MLPRegressor(max_grad_norm=1e-3, **common), X, y)
    free = _quiet_fit(MLPRegressor(**common), X, y)
    step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(
        clipped.coefs_ + clipped.intercepts_, start.coefs_ + start.intercepts_)))
    assert step == pytest.approx(0.1 * 1e-3, rel=1e-8)
    assert not np.allclose(free.coefs_[0], clipped.coefs_[0])


def test_l1_drives_weights_towards_zero():
    X, y = load_digits(return_X_y=True)
    X = X[:500] / 16
    common = dict(hidden_layer_sizes=(20,), max_iter=60, random_state=0)
    plain = _quiet_fit(MLPClassifier(**common), X, y[:500])
    sparse = _quiet_fit(MLPClassifier(l1=0.5, **common), X, y[:500])
    assert np.sum(np.abs(sparse.coefs_[0])) < 0.7 * np.sum(np.abs(plain.coefs_[0]))
    # Subgradient steps leave weights jittering around 0 rather than at 0.
    near_zero = [np.mean(np.abs(m.coefs_[0]) < 1e-3) for m in (plain, sparse)]
    assert near_zero[1] > near_zero[0] + 0.2
    assert sparse.score(X, y[:500]) > 0.8


def test_class_weight_equals_sample_weight():
    X, y = _data("multiclass", n=60)
    weights = {0: 1.0, 1: 3.0, 2: 0.5, 3: 2.0}
    common = dict(hidden_layer_sizes=(5,), max_iter=3, random_state=0, batch_size=16)
    a = _quiet_fit(MLPClassifier(class_weight=weights, **common), X, y)
    sw = np.array([weights[c] for c in y])
    b = _quiet_fit(MLPClassifier(**common), X, y, sample_weight=sw)
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(u, v)
    # Combined with sample weights, they multiply.
    c = _quiet_fit(MLPClassifier(class_weight=weights, **common), X, y,
                   sample_weight=np.full(60, 2.0))
    d = _quiet_fit(MLPClassifier(**common), X, y, sample_weight=2 * sw)
    np.testing.assert_allclose(c.coefs_[0], d.coefs_[0], rtol=1e-12)


def test_balanced_class_weight_helps_the_minority_class():
    rng = np.random.RandomState(0)
    X = np.vstack([rng.normal(0, 1, (400, 2)), rng.normal(1.5, 1, (20, 2))])
    y = np.r_[np.zeros(400, int), np.ones(20, int)]
    common = dict(hidden_layer_sizes=(8,), max_iter=200, random_state=0)
    plain = _quiet_fit(MLPClassifier(**common), X, y)
    balanced = _quiet_fit(MLPClassifier(class_weight="balanced", **common), X, y)
    recall = [np.mean(m.predict(X[y == 1]) == 1) for m in (plain, balanced)]
    assert recall[1] > recall[0] + 0.2


def test_class_weight_refusals():
    X, y = _data("multilabel")
    with pytest.raises(ValueError, match="single-label"):
        MLPClassifier(class_weight={0: 1.0}).fit(X, y)
    X, y = _data("multiclass")
    with pytest.raises(ValueError, match="partial_fit"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=np.arange(4))
    with pytest.raises(ValueError, match="class_weight"):
        MLPClassifier(class_weight="heavy").fit(X, y)


def test_hinge_predicts_from_margins_and_has_no_probabilities():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    clf = _quiet_fit(MLPClassifier(loss="hinge", hidden_layer_sizes=(32,),
                                   max_iter=40, random_state=0), X[:1200], y[:1200])
    assert clf.out_activation_ == "identity"
    assert clf.score(X[1200:], y[1200:]) > 0.85
    assert not hasattr(clf, "predict_proba")
    assert not hasattr(clf, "predict_log_proba")
    with pytest.raises(AttributeError) as info:
        clf.predict_proba(X)
    assert "loss='hinge'" in str(info.value.__cause__)
    # Binary hinge: the decision threshold of the margin is 0.
    yb = (y[:1200] >= 5).astype(int)
    binary = _quiet_fit(MLPClassifier(loss="hinge", hidden_layer_sizes=(16,),
                                      max_iter=30, random_state=0), X[:1200], yb)
    margins = binary._forward_pass_fast(X[:1200]).ravel()
    np.testing.assert_array_equal(binary.predict(X[:1200]), (margins > 0).astype(int))


def test_classic_sigmoid_squared_error_learns():
    X, y = load_digits(return_X_y=True)
    clf = _quiet_fit(MLPClassifier(loss="squared_error", activation="logistic",
                                   solver="sgd", learning_rate_init=0.5, momentum=0.9,
                                   hidden_layer_sizes=(30,), max_iter=60,
                                   random_state=0), X[:1200] / 16, y[:1200])
    proba = clf.predict_proba(X[1200:] / 16)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(X[1200:] / 16, y[1200:]) > 0.85


@pytest.mark.parametrize("loss", ["absolute_error", "huber"])
def test_robust_regression_losses_resist_outliers(loss):
    rng = np.random.RandomState(0)
    X = rng.uniform(-1, 1, (300, 1))
    y = 2 * X[:, 0]
    y_out = y.copy()
    y_out[:15] += 50  # gross outliers
    common = dict(hidden_layer_sizes=(10,), max_iter=400, random_state=0,
                  learning_rate_init=0.01)
    robust = _quiet_fit(MLPRegressor(loss=loss, **common), X, y_out)
    squared = _quiet_fit(MLPRegressor(**common), X, y_out)
    clean = X[15:], y[15:]
    assert robust.score(*clean) > 0.9
    assert robust.score(*clean) > squared.score(*clean) + 0.2


def test_maxout_shapes_and_activation():
    X, y = _data("multiclass")
    est = _quiet_fit(MLPClassifier(hidden_layer_sizes=(5, 4),
                                   activation=["maxout", "relu"], maxout_pieces=3,
                                   max_iter=2, random_state=0), X, y)
    assert [c.shape for c in est.coefs_] == [(5, 15), (5, 4), (4, 4)]
    assert [b.shape for b in est.intercepts_] == [(15,), (4,), (4,)]
    z = X @ est.coefs_[0] + est.intercepts_[0]
    h = z.reshape(-1, 5, 3).max(axis=2)
    h2 = np.maximum(h @ est.coefs_[1] + est.intercepts_[1], 0)
    out = ref.output_activation("softmax", h2 @ est.coefs_[2] + est.intercepts_[2])
    np.testing.assert_allclose(est.predict_proba(X), out, rtol=1e-12)
    with pytest.raises(ValueError, match="maxout_pieces"):
        MLPClassifier(activation="maxout", maxout_pieces=1).fit(X, y)
    with pytest.raises(ValueError, match="one per hidden layer"):
        MLPClassifier(hidden_layer_sizes=(3, 3), activation=["relu"]).fit(X, y)
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(activation=["relu", "swish"], hidden_layer_sizes=(3, 3)).fit(X, y)


@pytest.mark.parametrize("init,variance", [("lecun", 1.0), ("he", 2.0)])
def test_fan_in_initialisations(init, variance):
    X = np.zeros((10, 400))
    est = _quiet_fit(MLPRegressor(hidden_layer_sizes=(300,), init=init, max_iter=1,
                                  learning_rate_init=1e-300, random_state=0),
                     X, np.zeros(10))
    W = est.coefs_[0]
    assert W.var() == pytest.approx(variance / 400, rel=0.02)
    assert np.abs(W).max() <= np.sqrt(3 * variance / 400)
    assert np.all(est.intercepts_[0] == 0)


def test_nguyen_widrow_initialisation():
    X = np.zeros((10, 3))
    est = _quiet_fit(MLPRegressor(hidden_layer_sizes=(20,), init="nguyen_widrow",
                                  max_iter=1, learning_rate_init=1e-300,
                                  random_state=0), X, np.zeros(10))
    beta = 0.7 * 20 ** (1 / 3)
    np.testing.assert_allclose(np.linalg.norm(est.coefs_[0], axis=0), beta)
    assert np.abs(est.intercepts_[0]).max() <= beta
    # The output layer is drawn like glorot_uniform.
    assert np.abs(est.coefs_[1]).max() <= np.sqrt(6 / 21)


def test_default_initialisation_is_scikit_learns():
    X, y = _data("multiclass")
    ours = _quiet_fit(MLPClassifier(max_iter=1, learning_rate_init=1e-300,
                                    random_state=3), X, y)
    theirs = _quiet_fit(sklearn.neural_network.MLPClassifier(
        max_iter=1, learning_rate_init=1e-300, random_state=3), X, y)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("init", ["glorot_uniform", "lecun", "he"])
def test_large_layers_draw_the_same_values_as_one_call(dtype, init):
    # The weights are drawn into the packed vector in pieces of 2**15
    # values: the stream must match one uniform() call per array, layer
    # by layer (weights, then biases), as scikit-learn draws them.
    rng = np.random.RandomState(7)
    X = rng.normal(size=(12, 400)).astype(dtype)
    y = rng.normal(size=12)
    est = _quiet_fit(MLPRegressor(hidden_layer_sizes=(300, 120), init=init, max_iter=1,
                                  learning_rate_init=1e-300, random_state=5), X, y)
    ref_rng = np.random.RandomState(5)
    units = [400, 300, 120, 1]
    for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:])):
        if init == "glorot_uniform":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
        else:
            bound = np.sqrt((3.0 if init == "lecun" else 6.0) / fan_in)
        W = ref_rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
        b = (ref_rng.uniform(-bound, bound, fan_out) if init == "glorot_uniform"
             else np.zeros(fan_out)).astype(dtype)
        np.testing.assert_array_equal(est.coefs_[i], W)
        # (the one step of 1e-300 moves zero biases off zero, no others)
        np.testing.assert_allclose(est.intercepts_[i], b, rtol=0, atol=1e-290)
    if init == "glorot_uniform":
        sk = _quiet_fit(sklearn.neural_network.MLPRegressor(
            hidden_layer_sizes=(300, 120), max_iter=1, learning_rate_init=1e-300,
            random_state=5), X, y)
        for a, b in zip(est.coefs_ + est.intercepts_, sk.coefs_ + sk.intercepts_):
            np.testing.assert_array_equal(a, b)


def test_best_weights_are_kept_only_for_early_stopping():
    X, y = _data("multiclass")
    est = _quiet_fit(MLPClassifier(max_iter=3, random_state=0), X, y)
    assert est._best_params is None
    # A warm start that turns early stopping on starts its own record of
    # validation scores and best weights (scikit-learn 1.9 fails there:
    # validation_scores_ is None).
    est.set_params(warm_start=True, early_stopping=True, max_iter=4)
    _quiet_fit(est, X, y)
    assert est._best_params is not None
    assert len(est.validation_scores_) == est.n_iter_ == 4


# ---------------------------------------------------------------------------
# rprop
# ---------------------------------------------------------------------------

def _irprop_minus(w, g, prev, step, eta_minus=0.5, eta_plus=1.2, lo=1e-6, hi=50.0):
    w, prev, step = w.copy(), prev.copy(), step.copy()
    for i in range(w.size):
        gi = g[i]
        if gi * prev[i] > 0:
            step[i] = min(step[i] * eta_plus, hi)
        elif gi * prev[i] < 0:
            step[i] = max(step[i] * eta_minus, lo)
            gi = 0.0
        w[i] -= np.sign(gi) * step[i]
        prev[i] = gi
    return w, prev, step


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rprop_update_is_irprop_minus(dtype):
    rng = np.random.RandomState(0)
    w = rng.normal(size=50).astype(dtype)
    prev = rng.choice([-1.0, 0.0, 1.0], 50).astype(dtype)
    step = rng.uniform(1e-7, 60, 50).astype(dtype)
    g = rng.choice([-2.0, 0.0, 3.0], 50).astype(dtype)
    expected = _irprop_minus(w.astype(float), g.astype(float), prev.astype(float),
                             step.astype(float))
    _kernels.rprop_update(w, g, prev, step, 0.5, 1.2, 1e-6, 50.0)
    for got, want in zip((w, prev, step), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("loss", ["log_loss", "squared_error"])
@pytest.mark.parametrize("seed", [0, 1, 3])
def test_rprop_learns_xor_with_a_2_2_1_sigmoid_network(loss, seed):
    # From about half of the random starts (26 of seeds 0-49, either loss) the
    # 2-2-1 net falls into XOR's classic local minimum instead (loss
    # ln(2) / 2: two patterns right, the other two at 0.5); these seeds are
    # ones that do not.
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    clf = MLPClassifier(hidden_layer_sizes=(2,), activation="logistic", solver="rprop",
                        loss=loss, alpha=0.0, max_iter=500, tol=0.0,
                        n_iter_no_change=500, random_state=seed)
    _quiet_fit(clf, X, y)
    assert [c.shape for c in clf.coefs_] == [(2, 2), (2, 1)]
    np.testing.assert_array_equal(clf.predict(X), y)
    assert clf.loss_curve_[-1] < 0.1 * clf.loss_curve_[0]


def test_rprop_trajectory_is_full_batch_irprop():
    X, y = _data("multiclass")
    est = _quiet_fit(MLPClassifier(hidden_layer_sizes=(5,), solver="rprop",
                                   max_iter=4, random_state=0, tol=0.0), X, y)
    start = _quiet_fit(MLPClassifier(hidden_layer_sizes=(5,), solver="rprop",
                                     max_iter=1, random_state=0,
                                     rprop_step_init=1e-300, rprop_step_min=0.0),
                       X, y)
    w = start._pack(np.float64)
    prev, step = np.zeros_like(w), np.full_like(w, 0.1)
    for _ in range(4):
        start._unpack_views(w, start._layer_units())
        _, cg, ig = loss_and_gradients(start, X, y)
        g = np.concatenate([c.ravel() for c in cg] + [b.ravel() for b in ig])
        w, prev, step = _irprop_minus(w, g, prev, step)
    np.testing.assert_allclose(est._pack(np.float64), w, rtol=1e-10)


def test_dropout_needs_a_stochastic_solver():
    X, y = _data("multiclass")
    for solver in ("lbfgs", "rprop"):
        with pytest.raises(ValueError, match="stochastic solver"):
            MLPClassifier(solver=solver, dropout=0.2).fit(X, y)


def test_dropout_is_reproducible_and_differs_by_seed():
    X, y = _data("multiclass", n=80)
    common = dict(hidden_layer_sizes=(16,), dropout=0.3, max_iter=3, batch_size=10)
    a = _quiet_fit(MLPClassifier(random_state=0, **common), X, y)
    b = _quiet_fit(MLPClassifier(random_state=0, **common), X, y)
    c = _quiet_fit(MLPClassifier(random_state=1, **common), X, y)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])
    assert not np.allclose(a.coefs_[0], c.coefs_[0])
    # Prediction uses the whole network: deterministic.
    np.testing.assert_array_equal(a.predict_proba(X), a.predict_proba(X))


# ---------------------------------------------------------------------------
# Stopping rules and validation sets
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "adam", "rprop", "lbfgs"])
def test_gtol_stops_on_a_small_full_batch_gradient(solver):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(100, 3))
    y = X @ [1.0, -0.5, 0.2]
    common = dict(hidden_layer_sizes=(6,), activation="tanh", solver=solver,
                  max_iter=3000, tol=0.0, n_iter_no_change=10**6, random_state=0,
                  learning_rate_init=0.01)
    free = _quiet_fit(MLPRegressor(**{**common, "max_iter": 50}), X, y)
    gtol = 0.5 * np.linalg.norm(np.concatenate(
        [g.ravel() for g in sum(loss_and_gradients(free, X, y)[1:], [])]))
    est = _quiet_fit(MLPRegressor(gtol=gtol, **common), X, y)
    assert est.n_iter_ < 3000
    grads = sum(loss_and_gradients(est, X, y)[1:], [])
    assert np.linalg.norm(np.concatenate([g.ravel() for g in grads])) < gtol


@pytest.mark.parametrize("solver,batch_size", [("sgd", 1), ("sgd", 32), ("adam", 1),
                                               ("adam", 32), ("rprop", 32),
                                               ("lbfgs", 32)])
def test_validation_data_curve_and_restore_best_weights(solver, batch_size):
    X, y = load_digits(return_X_y=True)
    X = X / 16
    Xt, yt, Xv, yv = X[:300], y[:300], X[300:500], y[300:500]
    clf = MLPClassifier(hidden_layer_sizes=(30,), solver=solver, alpha=0.0,
                        batch_size=batch_size, max_iter=25, random_state=0,
                        learning_rate_init=0.05 if solver == "sgd" else 0.01,
                        restore_best_weights=True)
    _quiet_fit(clf, Xt, yt, validation_data=(Xv, yv))
    curve = clf.validation_loss_curve_
    assert len(curve) == clf.n_iter_ and len(curve) > 3
    # The kept weights are the best epoch's: their validation loss is the
    # curve's minimum (alpha=0, so the objective is the data loss).
    assert loss_and_gradients(clf, Xv, yv)[0] == pytest.approx(min(curve), rel=1e-9)
    # Without restoring, the last weights are kept.
    last = MLPClassifier(**{**clf.get_params(), "restore_best_weights": False})
    _quiet_fit(last, Xt, yt, validation_data=(Xv, yv))
    assert last.validation_loss_curve_ == curve
    assert loss_and_gradients(last, Xv, yv)[0] == pytest.approx(curve[-1], rel=1e-9)


def test_validation_data_replaces_the_early_stopping_split():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    clf = MLPClassifier(hidden_layer_sizes=(20,), early_stopping=True, max_iter=30,
                        random_state=0)
    _quiet_fit(clf, X[:400], y[:400], validation_data=(X[400:600], y[400:600]))
    # The training set was not split: scores are on the given set.
    assert clf.best_validation_score_ == pytest.approx(
        clf.score(X[400:600], y[400:600]))
    assert len(clf.validation_loss_curve_) == len(clf.validation_scores_)
    # The internal split records a validation loss curve too.
    auto = _quiet_fit(MLPClassifier(hidden_layer_sizes=(20,), early_stopping=True,
                                    max_iter=5, random_state=0), X[:400], y[:400])
    assert len(auto.validation_loss_curve_) == auto.n_iter_


def test_validation_data_errors():
    X, y = _data("multiclass")
    clf = MLPClassifier(max_iter=2)
    with pytest.raises(ValueError, match="tuple"):
        clf.fit(X, y, validation_data=X)
    with pytest.raises(ValueError, match="samples"):
        clf.fit(X, y, validation_data=(X, y[:-1]))
    with pytest.raises(ValueError, match="labels"):
        clf.fit(X, y, validation_data=(X, y + 10))
    with pytest.raises(ValueError, match="features"):
        clf.fit(X, y, validation_data=(X[:, :2], y))
    with pytest.raises(ValueError, match="restore_best_weights"):
        MLPClassifier(restore_best_weights=True).fit(X, y)


def test_validation_data_is_routed_by_metadata_routing():
    X, y = load_digits(return_X_y=True)
    X = X[:300] / 16
    y = y[:300]
    with sklearn.config_context(enable_metadata_routing=True):
        clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=5, random_state=0)
        clf.set_fit_request(validation_data=True)
        search = GridSearchCV(clf, {"alpha": [1e-4, 1e-2]}, cv=2)
        _quiet_fit(search, X[:200], y[:200], validation_data=(X[200:], y[200:]))
    assert len(search.best_estimator_.validation_loss_curve_) == 5


@pytest.mark.parametrize("layer_lr", ["uniform", "fan_in"])
def test_lazy_online_path_honours_layer_rates(layer_lr):
    # Zero-heavy input takes the lazy first-layer path; unit sample weights
    # take the plain one. Both must give the same fit.
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 1, (200, 40))
    X[rng.uniform(size=X.shape) > 0.15] = 0
    y = rng.randint(0, 3, 200)
    params = dict(hidden_layer_sizes=(10,), solver="sgd", batch_size=1, max_iter=3,
                  layer_lr=layer_lr, alpha=1e-2, momentum=0.9, random_state=0,
                  learning_rate_init=0.05)
    lazy = _quiet_fit(MLPClassifier(**params), X, y)
    plain = _quiet_fit(MLPClassifier(**params), X, y, sample_weight=np.ones(200))
    for a, b in zip(lazy.coefs_ + lazy.intercepts_, plain.coefs_ + plain.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert lazy.loss_ == pytest.approx(plain.loss_, rel=1e-12)
