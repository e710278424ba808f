"""Behaviour of the estimators beyond trajectory parity."""

import inspect
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
from hypothesis import given
from hypothesis import strategies as st
from sklearn import neural_network as sknn
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

from cbackprop import MLPClassifier, MLPRegressor


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400] / 16, y[:400]


@pytest.mark.parametrize("ours,theirs", [(MLPClassifier, sknn.MLPClassifier),
                                         (MLPRegressor, sknn.MLPRegressor)])
def test_constructor_signature_matches_sklearn(ours, theirs):
    a = inspect.signature(ours.__init__).parameters
    b = inspect.signature(theirs.__init__).parameters
    # scikit-learn's parameters, in order, then cbackprop's own (keyword-only).
    assert list(a)[: len(b)] == list(b)
    own = ["n_threads", "leaky_relu_slope", "l1", "dropout", "max_grad_norm", "init",
           "layer_lr", "maxout_pieces", "gtol", "restore_best_weights",
           "rprop_eta_minus", "rprop_eta_plus", "rprop_step_init", "rprop_step_min",
           "rprop_step_max"]
    own += ["loss", "class_weight"] if ours is MLPClassifier else ["huber_delta"]
    assert list(a)[len(b):] == own
    for name in own:
        assert a[name].kind == inspect.Parameter.KEYWORD_ONLY, name
    # Defaults keep scikit-learn's behaviour.
    est = ours()
    assert est.l1 == 0 and est.dropout == 0 and est.max_grad_norm is None
    assert est.init == "glorot_uniform" and est.layer_lr == "uniform"
    assert est.gtol is None and est.restore_best_weights is False
    for name in b:
        assert a[name].default == b[name].default, name
        assert a[name].kind == b[name].kind, name


def test_fitted_attributes_and_dtypes(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(20,), max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        clf.fit(X, y)
    for attr in ["classes_", "loss_", "best_loss_", "loss_curve_", "t_", "coefs_",
                 "intercepts_", "n_features_in_", "n_iter_", "n_layers_",
                 "n_outputs_", "out_activation_"]:
        assert hasattr(clf, attr), attr
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5
    assert clf.t_ == 5 * X.shape[0]
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 10
    assert clf.out_activation_ == "softmax"
    assert [c.shape for c in clf.coefs_] == [(64, 20), (20, 10)]
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(1)])
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba, rtol=1e-10)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("batch_size", [1, "auto"])
def test_float32_stays_float32(digits, solver, batch_size):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), solver=solver, max_iter=3,
                        batch_size=batch_size, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X.astype(np.float32), y)
    assert all(c.dtype == np.float32 for c in clf.coefs_ + clf.intercepts_)
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float32
    # float32 training follows the float64 trajectory closely.
    ref = MLPClassifier(hidden_layer_sizes=(16,), solver=solver, max_iter=3,
                        batch_size=batch_size, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref.fit(X, y)
    np.testing.assert_allclose(clf.coefs_[0], ref.coefs_[0], atol=2e-3)


def test_predict_log_proba_is_finite_where_proba_underflows():
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = [0, 0, 1, 1]
    clf = MLPClassifier(hidden_layer_sizes=(3,), solver="lbfgs", random_state=0).fit(X, y)
    far = np.array([[-1e4], [1e4]])
    with np.errstate(divide="ignore"):
        naive = np.log(clf.predict_proba(far))
    assert np.isinf(naive).any()  # what scikit-learn returns
    logp = clf.predict_log_proba(far)
    assert np.isfinite(logp).all()
    assert logp[0, 0] == pytest.approx(0, abs=1e-12)

    X3 = np.random.RandomState(0).normal(size=(30, 2))
    y3 = np.argmax(X3 @ [[1, -1, 0], [0, 1, -1]], axis=1)
    clf3 = MLPClassifier(hidden_layer_sizes=(4,), solver="lbfgs", random_state=0)
    clf3.fit(X3, y3)
    assert np.isfinite(clf3.predict_log_proba(X3 * 1e5)).all()


def test_multilabel_and_binary_shapes():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(80, 4))
    Y = (X[:, :3] > 0).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", random_state=0)
    clf.fit(X, Y)
    assert clf.out_activation_ == "logistic"
    assert clf.predict(X).shape == (80, 3) and clf.predict_proba(X).shape == (80, 3)
    yb = np.where(X[:, 0] > 0, "a", "b")
    clf.fit(X, yb)
    assert clf.predict_proba(X).shape == (80, 2)
    assert set(clf.predict(X)) <= {"a", "b"}


def test_coefs_can_be_read_and_assigned(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    before = clf.predict_proba(X)
    clf.coefs_[1] = np.zeros_like(clf.coefs_[1])
    clf.intercepts_[1] = np.zeros_like(clf.intercepts_[1])
    np.testing.assert_allclose(clf.predict_proba(X), 0.1)
    clf.coefs_ = [np.ones((64, 10)), np.eye(10)]
    clf.intercepts_ = [np.zeros(10), np.arange(10.0)]
    assert (clf.predict(X) == 9).all()
    assert not np.allclose(clf.predict_proba(X), before)
    # Further training starts from what was assigned.
    clf.set_params(warm_start=True, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert np.abs(clf.coefs_[1] - np.eye(10)).max() < 0.05
    clf.coefs_[0] = np.ones((3, 3))
    with pytest.raises(ValueError, match="chain the layers"):
        clf.predict(X)


def test_warm_start_requires_same_architecture_and_classes(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=2, warm_start=True,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        clf.set_params(hidden_layer_sizes=(11,))
        with pytest.raises(ValueError, match="layer sizes"):
            clf.fit(X, y)
        clf.set_params(hidden_layer_sizes=(10,))
        with pytest.raises(ValueError, match="same classes"):
            clf.fit(X[y < 5], y[y < 5])


def test_partial_fit_rules(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:100], y[:100], classes=np.arange(10))
    assert clf.n_iter_ == 1
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        clf.partial_fit(X, y + 10)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=np.arange(10))
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    # Unlike scikit-learn, an lbfgs regressor has no partial_fit either.
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    assert hasattr(sknn.MLPRegressor(solver="lbfgs"), "partial_fit")
    assert hasattr(MLPRegressor(solver="sgd"), "partial_fit")


def test_verbose_prints_one_line_per_epoch(digits, capsys):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, verbose=True,
                      random_state=0).fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("Iteration 1, loss = ")


def test_lbfgs_convergence_warning_and_loss(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        clf = MLPClassifier(hidden_layer_sizes=(10,), solver="lbfgs", max_iter=3,
                            random_state=0).fit(X, y)
    assert clf.n_iter_ == 3 and np.isfinite(clf.loss_)
    assert not hasattr(clf, "loss_curve_")


def test_stopping_on_training_loss(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=500, tol=1e-1,
                        n_iter_no_change=2, random_state=0).fit(X, y)
    assert clf.n_iter_ < 500


@pytest.mark.parametrize("fmt", [sp.csr_matrix, sp.csc_matrix])
def test_sparse_predict_matches_dense(digits, fmt):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), solver="lbfgs", max_iter=20,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(fmt(X), y)
    np.testing.assert_allclose(clf.predict_proba(fmt(X)), clf.predict_proba(X),
                               rtol=1e-12)


def test_sample_weight_routing_and_zero_weights(digits):
    X, y = digits
    sklearn.set_config(enable_metadata_routing=True)
    try:
        from sklearn.model_selection import cross_validate
        clf = MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=50,
                            random_state=0)
        clf.set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
        sw = np.ones(X.shape[0])
        sw[y != 3] = 1e-6  # nearly all the weight on one class
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            routed = cross_validate(clf, X, y, cv=2, params={"sample_weight": sw},
                                    return_estimator=True)
            plain = cross_validate(clf, X, y, cv=2, return_estimator=True)
        # The weights reached fit: the weighted models favour class 3.
        for r, p in zip(routed["estimator"], plain["estimator"]):
            assert (r.predict(X) == 3).mean() > (p.predict(X) == 3).mean()
    finally:
        sklearn.set_config(enable_metadata_routing=False)
    # Zero weights drop samples: same fit as without them, in full batch.
    sw = np.ones(X.shape[0])
    sw[::2] = 0
    a = MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=10,
                      random_state=0)
    b = MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=10,
                      random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X, y, sample_weight=sw)
        b.fit(X[1::2], y[1::2])
    np.testing.assert_allclose(a.coefs_[0], b.coefs_[0], rtol=1e-7, atol=1e-10)
    # Online mode skips zero-weight samples instead of dividing by zero.
    c = MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", batch_size=1,
                      max_iter=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        c.fit(X, y, sample_weight=sw)
    assert all(np.isfinite(p).all() for p in c.coefs_)


@pytest.mark.parametrize("bad,match", [
    (dict(sample_weight=-1.0), "negative"),
    (dict(sample_weight=0.0), "sums to zero"),
])
def test_bad_sample_weight(digits, bad, match):
    X, y = digits
    with pytest.raises(ValueError, match=match):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.full(X.shape[0],
                                                                  bad["sample_weight"]))


@pytest.mark.parametrize("param,value,exc", [
    ("hidden_layer_sizes", (0,), ValueError),
    ("hidden_layer_sizes", (2.5,), TypeError),
    ("activation", "softsign", ValueError),
    ("solver", "newton", ValueError),
    ("alpha", -1.0, ValueError),
    ("alpha", "big", TypeError),
    ("batch_size", 0, ValueError),
    ("learning_rate_init", 0.0, ValueError),
    ("momentum", 1.5, ValueError),
    ("validation_fraction", 1.0, ValueError),
    ("beta_1", 1.0, ValueError),
    ("n_iter_no_change", 0, ValueError),
    ("max_iter", 0, ValueError),
    ("shuffle", "yes", TypeError),
])
def test_bad_parameters(digits, param, value, exc):
    X, y = digits
    with pytest.raises(exc, match=param if param != "hidden_layer_sizes"
                       else "hidden_layer_sizes"):
        MLPClassifier(**{param: value}).fit(X, y)


def test_poisson_regressor_needs_non_negative_targets():
    X = np.random.RandomState(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="non-negative"):
        MLPRegressor(loss="poisson").fit(X, X[:, 0])
    with pytest.raises(ValueError, match="loss"):
        MLPRegressor(loss="quantile").fit(X, X[:, 0])


def test_pickle_round_trip_keeps_predictions_and_training(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    clone = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(clone.predict_proba(X), clf.predict_proba(X))
    clone.partial_fit(X, y)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(clone.coefs_[0], clf.coefs_[0])


def test_divergence_is_reported_and_weights_stay_finite():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(100, 3)) * 1e3
    y = X @ [1.0, 2.0, 3.0] * 1e10
    reg = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=1.0,
                       max_iter=50, random_state=0)
    with pytest.raises(ValueError, match="Lower learning_rate_init"):
        reg.fit(X, y)
    assert all(np.isfinite(c).all() for c in reg.coefs_)


@pytest.mark.parametrize("labels", [
    np.array([3, 1, 2, 3, 7, 1]),
    np.array([0.0, 2.0, -1.0, 0.0, 2.0]),
    np.array([2, 5, 2, 9], dtype=np.uint8),
    np.array(["b", "a", "c", "a"]),
    np.array([0, 1, 1, 0]),
])
def test_one_hot_targets_equal_the_label_binarizer(labels):
    from sklearn.preprocessing import LabelBinarizer

    est = MLPClassifier()
    est._label_binarizer = LabelBinarizer().fit(labels)
    expected = est._label_binarizer.transform(labels).astype(bool)
    got = est._one_hot(labels)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, expected)
    # A label outside classes_ takes the binarizer's own route.
    if labels.dtype.kind in "iuf":
        odd = np.append(labels, labels.max() + 1)
        np.testing.assert_array_equal(
            est._one_hot(odd), est._label_binarizer.transform(odd).astype(bool))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 1000, 100_003])
def test_kernel_buffers_start_on_a_cache_line(dtype, n):
    from cbackprop._mlp import _aligned_empty, _aligned_zeros

    for make in (_aligned_empty, _aligned_zeros):
        a = make(n, dtype)
        assert a.shape == (n,) and a.dtype == dtype and a.flags.c_contiguous
        assert a.ctypes.data % 64 == 0
    assert not _aligned_zeros(n, dtype).any()


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_fitted_weights_start_on_a_cache_line(digits, solver):
    # The first layer's vector loops read W0 a row at a time: its first
    # element (and the optimiser's state beside it) must be 64-byte aligned.
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(16,), solver=solver, max_iter=2,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X.astype(np.float32), y)
    assert clf.coefs_[0].ctypes.data % 64 == 0
    assert all(s.ctypes.data % 64 == 0
               for s in (clf._opt["state1"], clf._opt["state2"]))


# ---------------------------------------------------------------------------
# All epochs in one kernel call
# ---------------------------------------------------------------------------

def _fit_state(monkeypatch, in_kernel, cls, X, y, sample_weight=None, fits=1, **params):
    """Everything a fit leaves behind, with the epochs run in one kernel call
    or one call an epoch (the Python loop)."""
    import cbackprop._mlp as mlp

    monkeypatch.setattr(mlp, "_EPOCHS_IN_KERNEL", in_kernel)
    est = cls(**params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(fits):
            est.fit(X, y, sample_weight=sample_weight)
    rs = est._random_state
    return dict(
        weights=[a.tobytes() for a in est.coefs_ + est.intercepts_],
        loss_curve=est.loss_curve_, n_iter=est.n_iter_, t=est.t_, loss=est.loss_,
        best_loss=est.best_loss_, count=est._no_improvement_count,
        best_stop=est._best_stop_loss, lr=est._opt["lr"], adam_t=est._opt.get("t"),
        state=[a.tobytes() for a in (est._opt["state1"], est._opt["state2"])],
        rng=rs.randint(2**31 - 1, size=4).tolist(),
        warnings=[(str(w.message), w.filename, w.lineno) for w in caught
                  if issubclass(w.category, ConvergenceWarning)])


@pytest.mark.parametrize("params", [
    dict(solver="adam"),
    dict(solver="adam", batch_size=37, shuffle=False),
    dict(solver="adam", batch_size=1000),                       # one full pass
    dict(solver="adam", tol=1e-2, n_iter_no_change=2),          # stops early
    dict(solver="sgd", learning_rate_init=0.05),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.3, power_t=0.3),
    dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.05, tol=0.5,
         n_iter_no_change=1),                                   # rate / 5, then stop
    dict(solver="sgd", momentum=0.0, batch_size=64, dropout=0.3),
    dict(solver="adam", batch_size=50, l1=1e-3, max_grad_norm=1.0),
    dict(solver="adam", random_state=np.random.RandomState(4)),
    dict(solver="adam", random_state=np.random.RandomState(np.random.PCG64(4))),
    dict(solver="adam", warm_start=True, fits=2, max_iter=7),
])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_epochs_in_one_kernel_call_change_nothing(monkeypatch, digits, params, kind):
    # Weights, optimiser state, loss curve, counters, learning rate, the
    # random stream after the fit and the warnings: all as the epoch loop.
    X, y = digits
    params = dict(params)
    fits = params.pop("fits", 1)
    params.setdefault("max_iter", 25)
    params.setdefault("hidden_layer_sizes", (20,))
    params.setdefault("random_state", 0)
    cls = MLPClassifier if kind == "classifier" else MLPRegressor
    target = y if kind == "classifier" else y / 9.0
    sw = np.random.RandomState(1).uniform(0.5, 2.0, X.shape[0])
    for Xf, weights in ((X, None), (sp.csr_matrix(X.astype(np.float32)), sw)):
        states = []
        for in_kernel in (True, False):
            p = {k: (pickle.loads(pickle.dumps(v)) if k == "random_state" else v)
                 for k, v in params.items()}
            states.append(_fit_state(monkeypatch, in_kernel, cls, Xf, target, weights,
                                     fits, **p))
        assert states[0] == states[1]


def test_epochs_in_one_kernel_call_stop_where_the_loop_stops(monkeypatch, digits):
    # The early stop and the divergence of the loop: same epoch, same weights.
    X, y = digits
    a = _fit_state(monkeypatch, True, MLPClassifier, X, y, solver="sgd", tol=1e-3,
                   learning_rate_init=0.1, hidden_layer_sizes=(20,), random_state=0,
                   max_iter=500)
    assert a["n_iter"] < 500 and not a["warnings"]
    b = _fit_state(monkeypatch, False, MLPClassifier, X, y, solver="sgd", tol=1e-3,
                   learning_rate_init=0.1, hidden_layer_sizes=(20,), random_state=0,
                   max_iter=500)
    assert a == b
    import cbackprop._mlp as mlp

    rng = np.random.RandomState(0)
    Xd = rng.normal(size=(200, 4)) * 100
    Xl = rng.normal(size=(600, 4))
    # Batches of 16 step in the gradient tasks (divergence in the first
    # epoch); of 200, chunk by chunk (two 100-row chunks), on one thread and
    # on two in the chunks' region, diverging in the fifth epoch: each
    # epoch's first step takes its snapshot.
    cases = [(Xd, Xd @ [1e5, -2e5, 3e5, 1e5],
              dict(hidden_layer_sizes=(8,), batch_size=16, learning_rate_init=10.0))]
    for n_threads in (1, 2):
        cases.append((Xl, Xl @ [1e3, -2e3, 3e3, 1e3],
                      dict(hidden_layer_sizes=(40,), batch_size=200,
                           learning_rate_init=5e-4, n_threads=n_threads)))
    for X_, y_, params in cases:
        errors = []
        for in_kernel in (True, False):
            monkeypatch.setattr(mlp, "_EPOCHS_IN_KERNEL", in_kernel)
            est = MLPRegressor(solver="sgd", momentum=0.9, max_iter=50, random_state=0,
                               **params)
            with pytest.raises(ValueError, match="diverged in epoch") as e:
                est.fit(X_, y_)
            errors.append((str(e.value), est.n_iter_, list(est.loss_curve_),
                           [c.tobytes() for c in est.coefs_ + est.intercepts_]))
        assert errors[0] == errors[1]
    assert errors[0][1] == 4


@given(st.integers(1, 3000), st.integers(0, 2**31 - 1), st.booleans(),
       st.sampled_from(["MT19937", "PCG64"]))
def test_legacy_shuffle_is_randomstates(n, seed, permute, bitgen):
    from cbackprop import _kernels

    def fresh():
        return np.random.RandomState(getattr(np.random, bitgen)(seed))

    expected = np.arange(n)
    ref = fresh()
    ref.shuffle(expected)
    ours = fresh()
    a = np.arange(n, dtype=np.intp)
    _kernels._py_legacy_shuffle(ours._bit_generator.capsule, a, permute)
    np.testing.assert_array_equal(a, expected if permute else np.arange(n))
    assert ours.randint(2**31 - 1) == ref.randint(2**31 - 1)
