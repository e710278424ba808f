"""Bad input, numerical faults, interrupts, threads and persistence."""

import os
import pickle
import signal
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

from cbackprop import MLPClassifier, MLPRegressor, loss_and_gradients
from cbackprop import _reference as ref


def _data(n=80, n_features=5, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, y


def _quiet_fit(est, X, y, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y, **kw)


# ---------------------------------------------------------------------------
# Bad input gets a clear exception
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["X", "y", "sample_weight"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(where, bad):
    X, y = _data()
    yr = X[:, 0].copy()
    sw = np.ones(X.shape[0])
    {"X": X, "y": yr, "sample_weight": sw}[where][3] = bad
    with pytest.raises(ValueError, match="NaN|infinity|inf"):
        MLPRegressor(max_iter=2).fit(X, yr, sample_weight=sw)


@pytest.mark.parametrize("layout", ["C", "F", "strided", "csr", "csc"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_X_gets_scikit_learns_error(layout, bad, dtype):
    # cbackprop checks X on all cores, then lets scikit-learn's own check
    # raise: the same message, at fit and at predict.
    from sklearn.neural_network import MLPClassifier as SkClassifier

    X, y = _data(n=60)
    X = X.astype(dtype)
    clf = _quiet_fit(MLPClassifier(max_iter=2, random_state=0), X, y)
    sk = _quiet_fit(SkClassifier(max_iter=2, random_state=0), X, y)
    Xb = X.copy()
    Xb[7, 2] = bad
    Xb = {"C": lambda a: a, "F": np.asfortranarray,
          "strided": lambda a: np.repeat(a, 2, 1)[:, ::2],
          "csr": sp.csr_matrix, "csc": sp.csc_matrix}[layout](Xb)
    for call in (lambda est: est.fit(Xb, y), lambda est: est.predict(Xb),
                 lambda est: est.predict_proba(Xb)):
        with pytest.raises(ValueError) as ours:
            call(clf)
        with pytest.raises(ValueError) as theirs:
            call(sk)
        assert str(ours.value) == str(theirs.value)
        assert ("NaN" if np.isnan(bad) else "infinity") in str(ours.value)


def test_assume_finite_skips_the_check_as_in_scikit_learn():
    import sklearn

    X, y = _data(n=60)
    # (logistic units pass a NaN on; relu's max(z, 0) may drop it)
    clf = _quiet_fit(MLPClassifier(max_iter=2, random_state=0, activation="logistic"),
                     X, y)
    Xb = X.copy()
    Xb[3, 1] = np.nan
    with sklearn.config_context(assume_finite=True):
        proba = clf.predict_proba(Xb)
    assert np.isnan(proba[3]).all() and np.isfinite(np.delete(proba, 3, 0)).all()
    with pytest.raises(ValueError, match="NaN"):
        clf.predict_proba(Xb)


def test_wrong_number_of_features_at_predict():
    X, y = _data()
    clf = _quiet_fit(MLPClassifier(max_iter=2), X, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match="features"):
        clf.predict_proba(np.ones((2, 7)))


def test_empty_and_tiny_inputs():
    X, y = _data()
    with pytest.raises(ValueError, match="0 sample"):
        MLPClassifier().fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="0 feature"):
        MLPClassifier().fit(np.empty((5, 0)), np.arange(5) % 2)
    # A single sample and a single class train and predict that class.
    assert _quiet_fit(MLPClassifier(max_iter=3), X[:1], y[:1]).predict(X[:2]).tolist() \
        == [y[0], y[0]]
    one = _quiet_fit(MLPClassifier(max_iter=3), X, np.full(X.shape[0], "only"))
    assert set(one.predict(X)) == {"only"}


@pytest.mark.parametrize("X,match", [
    (np.array([["a", "b"]] * 10), "could not convert string"),
    (np.ones((10, 2)) + 1j, "Complex data"),
    (np.array([[object(), 1]] * 10, dtype=object), "float|argument"),
])
def test_non_numeric_X(X, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MLPClassifier().fit(X, np.arange(10) % 2)


def test_bool_X_is_numeric():
    X, y = _data()
    a = _quiet_fit(MLPClassifier(max_iter=3, random_state=0), X > 0, y)
    b = _quiet_fit(MLPClassifier(max_iter=3, random_state=0), (X > 0).astype(float), y)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def test_unseen_labels_in_partial_fit():
    X, y = _data()
    clf = MLPClassifier().partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y + 5)


@pytest.mark.parametrize("sw,match", [(-1.0, "negative"), (0.0, "sums to zero")])
def test_negative_or_all_zero_weights(sw, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match):
        MLPClassifier().fit(X, y, sample_weight=np.full(X.shape[0], sw))


@pytest.mark.parametrize("sizes,exc", [((10**9,), ValueError), ((40000, 40000), None)])
def test_absurd_sizes_fail_before_any_kernel(sizes, exc, monkeypatch):
    X, y = _data()
    if exc is None:
        # 1.6e9 parameters: fits BLAS indexing, but not this machine's memory
        # once the weights, two optimiser states and a gradient are counted.
        monkeypatch.setattr(os, "sysconf", lambda name: 4096 if "SIZE" in name
                            else 2**20)  # a 4 GiB machine
        exc = MemoryError
    t0 = time.perf_counter()
    with pytest.raises(exc, match="hidden_layer_sizes"):
        MLPClassifier(hidden_layer_sizes=sizes).fit(X, y)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("param,value", [
    ("alpha", "0.1"), ("max_iter", 2.5), ("learning_rate", "fast"),
    ("hidden_layer_sizes", "big"), ("batch_size", -3), ("tol", None),
    ("early_stopping", 1), ("n_threads", 1.0),
])
def test_wrong_parameter_types_and_values(param, value):
    X, y = _data()
    with pytest.raises((TypeError, ValueError), match=param):
        MLPClassifier(**{param: value}).fit(X, y)


def _layouts(X):
    Xc = np.ascontiguousarray(X)
    ro = Xc.copy()
    ro.setflags(write=False)
    yield "fortran", np.asfortranarray(X)
    yield "strided", np.repeat(Xc, 2, axis=1)[:, ::2]
    yield "read-only", ro
    yield "list", X.tolist()
    yield "csc", sp.csc_matrix(Xc)
    try:
        import pandas as pd

        yield "dataframe", pd.DataFrame(Xc)
    except ImportError:  # pragma: no cover
        pass


def test_memory_layouts_give_the_same_fit(tmp_path):
    X, y = _data()
    params = dict(hidden_layer_sizes=(7,), max_iter=5, random_state=0)
    ref_fit = _quiet_fit(MLPClassifier(**params), np.ascontiguousarray(X), y)
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype,
                                   shape=X.shape)
    mm[:] = X
    mm.flush()
    layouts = list(_layouts(X)) + [("memmap", np.load(tmp_path / "X.npy",
                                                      mmap_mode="r"))]
    for name, data in layouts:
        fit = _quiet_fit(MLPClassifier(**params), data, y)
        np.testing.assert_allclose(fit.coefs_[0], ref_fit.coefs_[0], rtol=1e-12,
                                   atol=1e-15, err_msg=name)
        np.testing.assert_allclose(fit.predict_proba(data), ref_fit.predict_proba(X),
                                   rtol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------
# Numerical safety
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel", "poisson",
                                  "regression"])
def test_extreme_pre_activations_give_finite_loss_and_gradient(dtype, kind):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 2)).astype(dtype)
    y = {"binary": rng.randint(0, 2, 30), "multiclass": rng.randint(0, 3, 30),
         "multilabel": rng.randint(0, 2, (30, 2)),
         "poisson": rng.poisson(1.0, 30).astype(float),
         "regression": rng.normal(size=30)}[kind]
    est = (MLPRegressor(loss="poisson" if kind == "poisson" else "squared_error")
           if kind in ("poisson", "regression") else MLPClassifier())
    est.set_params(hidden_layer_sizes=(3,), activation="tanh", max_iter=1)
    _quiet_fit(est, X, y)
    for scale in (1e4, -1e4):
        # Output pre-activations of about +-1e4 (and hidden tanh saturated).
        est.coefs_ = [np.full_like(c, scale) for c in est.coefs_]
        loss, cg, ig = loss_and_gradients(est, X, y)
        if kind == "regression":
            assert np.isfinite(loss) or loss == np.inf
        else:
            assert np.isfinite(loss)
        assert all(np.isfinite(g).all() for g in cg + ig)
        out = est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)
        assert np.isfinite(out).all()
        if hasattr(est, "predict_log_proba"):
            assert np.isfinite(est.predict_log_proba(X)).all()


@pytest.mark.parametrize("solver,batch_size", [("sgd", 1), ("sgd", 16), ("sgd", 200)])
def test_divergence_stops_at_once_and_keeps_finite_weights(solver, batch_size):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(200, 4)) * 100
    y = X @ [1e5, -2e5, 3e5, 1e5]
    reg = MLPRegressor(hidden_layer_sizes=(8,), solver=solver, batch_size=batch_size,
                       learning_rate_init=10.0, momentum=0.9, max_iter=50,
                       random_state=0)
    with pytest.raises(ValueError, match="diverged.*learning_rate_init"):
        reg.fit(X, y)
    assert all(np.isfinite(c).all() for c in reg.coefs_ + reg.intercepts_)
    assert len(reg.loss_curve_) == reg.n_iter_ < 50


def test_lbfgs_divergence_keeps_the_last_finite_weights(monkeypatch):
    from cbackprop import _mlp

    X, y = _data()
    est = MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=20)
    real = _mlp._BaseMLP._objective_setup

    def poisoned(self, *args, **kwargs):
        objective = real(self, *args, **kwargs)
        calls = {"n": 0}

        def wrapped(params, need_grad=True):
            calls["n"] += 1
            data, penalty, grad = objective(params, need_grad)
            if calls["n"] > 3:  # the loss blows up after a few evaluations
                grad[:] = np.nan
                return np.nan, penalty, grad
            return data, penalty, grad
        return wrapped

    monkeypatch.setattr(_mlp._BaseMLP, "_objective_setup", poisoned)
    with pytest.raises(ValueError, match="diverged"):
        est.fit(X, X[:, 0])
    assert all(np.isfinite(c).all() for c in est.coefs_ + est.intercepts_)


# ---------------------------------------------------------------------------
# Interrupts
# ---------------------------------------------------------------------------

def _interrupt_after(seconds):
    sent = {}

    def fire():
        time.sleep(seconds)
        sent["t"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()
    return sent


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs")
@pytest.mark.parametrize("params", [
    dict(solver="sgd", batch_size=1),
    dict(solver="adam", batch_size=64),
    dict(solver="adam", batch_size=4000),
    dict(solver="lbfgs"),
])
def test_ctrl_c_stops_within_half_a_second(params):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(4000, 60))
    y = (X[:, :5].sum(axis=1) > 0).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=10**4, tol=0,
                        n_iter_no_change=10**6, random_state=0, **params)
    sent = _interrupt_after(0.6)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf.fit(X, y)
    latency = time.perf_counter() - sent["t"]
    assert latency < 0.5, latency
    assert all(np.isfinite(c).all() for c in clf.coefs_ + clf.intercepts_)
    if params["solver"] != "lbfgs":
        assert len(clf.loss_curve_) == clf.n_iter_
    # Still a usable model.
    assert clf.predict(X[:5]).shape == (5,)


# ---------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------

def test_concurrent_predictions_equal_sequential():
    X, y = _data(n=3000, n_features=30)
    clf = _quiet_fit(MLPClassifier(hidden_layer_sizes=(64,), max_iter=3,
                                   random_state=0), X, y)
    expected = clf.predict_proba(X)
    results = [None] * 8

    def work(i):
        results[i] = clf.predict_proba(X)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_two_fits_in_two_threads_match_sequential_fits():
    X, y = _data(n=2000, n_features=20)
    params = [dict(hidden_layer_sizes=(50,), random_state=1, max_iter=5),
              dict(hidden_layer_sizes=(30, 20), random_state=2, max_iter=5,
                   solver="sgd")]
    seq = [_quiet_fit(MLPClassifier(**p), X, y) for p in params]
    par = [MLPClassifier(**p) for p in params]
    threads = [threading.Thread(target=_quiet_fit, args=(m, X, y)) for m in par]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def _blas_threads():
    from threadpoolctl import threadpool_info
    return sorted(pool["num_threads"] for pool in threadpool_info()
                  if pool["user_api"] == "blas")


def _run_in_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_blas_held_to_one_thread_in_any_python_thread():
    # threadpoolctl 3.8 skips, silently, a thread-count change from any
    # Python thread but the one that first made one (a fit in the main
    # thread): a fit in a worker thread then ran its products on
    # OpenBLAS's threads inside our OpenMP regions.
    from threadpoolctl import threadpool_limits

    from cbackprop._mlp import _blas_single_thread

    with threadpool_limits(limits=2, user_api="blas"):
        with _blas_single_thread():
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {2}

        def inside():
            with _blas_single_thread():
                return _blas_threads()

        assert set(_run_in_thread(inside)) == {1}
        assert set(_blas_threads()) == {2}


def test_blas_limit_lifted_by_the_last_fit_in_another_thread():
    # First in, first out: the thread that set the limit leaves while a fit
    # in another thread still runs; the limit holds until that one leaves,
    # which then restores the original count from its own thread.
    from threadpoolctl import threadpool_limits

    from cbackprop._mlp import _blas_single_thread

    entered, first_left, seen = threading.Event(), threading.Event(), []

    def second():
        with _blas_single_thread():
            entered.set()
            first_left.wait(10)
            seen.append(_blas_threads())

    with threadpool_limits(limits=2, user_api="blas"):
        with _blas_single_thread():
            thread = threading.Thread(target=second)
            thread.start()
            assert entered.wait(10)
        first_left.set()
        thread.join()
        assert set(seen[0]) == {1}
        assert set(_blas_threads()) == {2}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_concurrent_fits_in_worker_threads_after_a_main_thread_fit():
    # The situation of the threadpoolctl 3.8 bug: the same weights as
    # sequential fits (two threads, each its own estimator).  The warning
    # filter is the test's: catch_warnings in threads is not thread-safe.
    X, y = _data(n=1500, n_features=20)
    params = dict(hidden_layer_sizes=(40,), max_iter=3, random_state=0,
                  n_threads=1)
    expected = MLPClassifier(**params).fit(X, y)
    par = [MLPClassifier(**params) for _ in range(2)]
    threads = [threading.Thread(target=m.fit, args=(X, y)) for m in par]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in par:
        for a, b in zip(expected.coefs_, m.coefs_):
            np.testing.assert_array_equal(a, b)


def _fit_in_thread(clf, X, y):
    """Start ``clf.fit(X, y)`` in another thread: (thread, event set when
    the fit is done)."""
    done = threading.Event()

    def fit():
        _quiet_fit(clf, X, y)
        done.set()

    thread = threading.Thread(target=fit)
    thread.start()
    return thread, done


def test_fit_releases_the_gil():
    X, y = _data(n=20000, n_features=50)
    clf = MLPClassifier(hidden_layer_sizes=(200,), solver="sgd", batch_size=1,
                        max_iter=1, random_state=0)
    ticks = []
    t0 = time.perf_counter()
    t, done = _fit_in_thread(clf, X, y)
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    elapsed = time.perf_counter() - t0
    # The main thread kept running: it ticked through most of the fit.
    assert elapsed > 0.05
    assert len(ticks) > 0.3 * elapsed / 0.002


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dump", ["pickle", "joblib", "skops"])
def test_round_trip_predicts_the_same_and_keeps_training(dump, tmp_path):
    X, y = _data()
    clf = _quiet_fit(MLPClassifier(hidden_layer_sizes=(9,), max_iter=3,
                                   random_state=0, warm_start=True), X, y)
    if dump == "pickle":
        clone = pickle.loads(pickle.dumps(clf))
    elif dump == "joblib":
        joblib = pytest.importorskip("joblib")
        joblib.dump(clf, tmp_path / "m.joblib")
        clone = joblib.load(tmp_path / "m.joblib")
    else:
        sio = pytest.importorskip("skops.io")
        sio.dump(clf, tmp_path / "m.skops")
        untrusted = sio.get_untrusted_types(file=tmp_path / "m.skops")
        # Only cbackprop's own types need trusting.
        assert untrusted and all(t.startswith("cbackprop.") for t in untrusted)
        clone = sio.load(tmp_path / "m.skops", trusted=untrusted)
    np.testing.assert_array_equal(clone.predict_proba(X), clf.predict_proba(X))
    for est in (clf, clone):
        est.partial_fit(X, y)
        _quiet_fit(est, X, y)
    np.testing.assert_array_equal(clone.coefs_[0], clf.coefs_[0])


def test_saved_model_records_version_and_refuses_other_formats():
    import cbackprop
    from cbackprop import _mlp

    X, y = _data()
    clf = _quiet_fit(MLPClassifier(max_iter=2), X, y)
    state = clf.__getstate__()
    assert state["_cbackprop_version"] == cbackprop.__version__
    blob = pickle.dumps(clf)
    original = _mlp._PERSISTENCE_FORMAT
    try:
        _mlp._PERSISTENCE_FORMAT = original + 1
        with pytest.raises(ValueError, match="saved by cbackprop .* cannot be loaded"):
            pickle.loads(blob)
    finally:
        _mlp._PERSISTENCE_FORMAT = original


# ---------------------------------------------------------------------------
# Property-based: kernels agree with the NumPy reference, nothing crashes
# ---------------------------------------------------------------------------

@given(
    n=st.integers(1, 40), n_features=st.integers(1, 6),
    hidden=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    activation=st.sampled_from(["identity", "logistic", "tanh", "relu"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    layout=st.sampled_from(["C", "F", "csr", "strided"]),
    task=st.sampled_from(["multiclass", "binary", "regression", "multioutput"]),
    alpha=st.sampled_from([0.0, 1e-3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_kernels_match_reference(n, n_features, hidden, activation, dtype,
                                          layout, task, alpha, seed):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, n_features)).astype(dtype)
    if task == "multiclass":
        y = np.arange(n) % 3
        est = MLPClassifier()
    elif task == "binary":
        y = np.arange(n) % 2
        est = MLPClassifier()
    elif task == "regression":
        y = rng.normal(size=n)
        est = MLPRegressor()
    else:
        y = rng.normal(size=(n, 2))
        est = MLPRegressor()
    est.set_params(hidden_layer_sizes=tuple(hidden), activation=activation,
                   alpha=alpha, max_iter=1, random_state=seed % 1000)
    data = {"C": X, "F": np.asfortranarray(X), "csr": sp.csr_matrix(X),
            "strided": np.repeat(X, 2, axis=0)[::2]}[layout]
    _quiet_fit(est, data, y)
    assert all(np.isfinite(c).all() for c in est.coefs_)
    loss, cg, ig = loss_and_gradients(est, data, y)
    Y = est._label_binarizer.transform(y) if hasattr(est, "classes_") else y
    rloss, rcg, rig = ref.loss_and_gradients(
        est.coefs_, est.intercepts_, X, Y, est.activation, est.out_activation_,
        est.loss, est.alpha)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    assert loss == pytest.approx(rloss, rel=tol, abs=tol)
    scale = max(max(np.max(np.abs(g)) for g in rcg + rig), 1e-12)
    for a, b in zip(cg + ig, rcg + rig):
        np.testing.assert_allclose(a, b, rtol=tol * 10, atol=tol * 10 * scale)
    # Every layout predicts what the C-contiguous array predicts (sparse and
    # dense products may differ in the last bit of float32).
    get = est.predict_proba if hasattr(est, "classes_") else est.predict
    np.testing.assert_allclose(get(data), get(np.ascontiguousarray(X)),
                               rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


def test_a_fit_holds_the_global_random_state_only_while_it_shuffles():
    # random_state=None draws from numpy's global RandomState; a fit running
    # all its epochs in one kernel call takes that generator's lock for each
    # shuffle only, so another thread's np.random calls do not wait for the
    # whole fit.
    X, y = _data(n=4000, n_features=60)
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=120, tol=0,
                        n_iter_no_change=10**6, batch_size=64)
    t0 = time.perf_counter()
    worker, done = _fit_in_thread(clf, X, y)
    waits = []
    while not done.is_set() and time.perf_counter() - t0 < 60:
        t = time.perf_counter()
        np.random.random_sample(1000)  # noqa: NPY002 (the legacy global generator is the point)
        waits.append(time.perf_counter() - t)
        time.sleep(0.02)
    worker.join()
    fit_time = time.perf_counter() - t0
    assert fit_time > 0.5 and len(waits) > 10, (fit_time, len(waits))
    assert max(waits) < 0.1, max(waits)
    assert clf.n_iter_ == 120
