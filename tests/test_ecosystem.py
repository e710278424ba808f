"""Command line, progress and plots, scikit-learn tooling, Dask."""

import csv
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from cbackprop import LossCurveDisplay, MLPClassifier, MLPRegressor
from cbackprop._cli import main

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _blobs(n=300, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, y


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


@pytest.fixture
def csv_files(tmp_path):
    rng = np.random.default_rng(0)
    rows_c, rows_r = [], []
    for _ in range(300):
        a, b = rng.normal(size=2)
        color = rng.choice(["red", "green", "blue"])
        label = "yes" if a + b + (color == "red") > 0.5 else "no"
        rows_c.append([f"{a:.4f}", f"{b:.4f}", color, label])
        rows_r.append([f"{a:.4f}", f"{b:.4f}", f"{2 * a - b + 0.01 * rng.normal():.5f}"])
    return {
        "classify": _write_csv(tmp_path / "c.csv", ["a", "b", "color", "label"], rows_c),
        "regress": _write_csv(tmp_path / "r.csv", ["a", "b", "y"], rows_r),
        "dir": tmp_path,
    }


def test_cli_train_and_predict_classification(csv_files, capsys):
    model = str(csv_files["dir"] / "m.skops")
    assert main(["train", csv_files["classify"], "--target", "label", "--one-hot",
                 "--hidden", "16,8", "--solver", "lbfgs", "--max-iter", "300",
                 "--quiet", "--out", model]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "model saved" in out
    acc = float(out.split("test accuracy ")[1].split(",")[0])
    assert acc > 0.85
    preds = str(csv_files["dir"] / "p.csv")
    assert main(["predict", model, csv_files["classify"], "--out", preds]) == 0
    with open(preds) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["predicted_label"] and len(rows) == 301
    assert {r[0] for r in rows[1:]} <= {"yes", "no"}


def test_cli_train_regression_with_joblib_and_stdout_predictions(csv_files, capsys):
    model = str(csv_files["dir"] / "m.joblib")
    assert main(["train", csv_files["regress"], "--target", "y", "--solver", "lbfgs",
                 "--quiet", "--out", model]) == 0
    out = capsys.readouterr().out
    assert out.startswith("regress:") and float(out.split("R^2 ")[1].split(",")[0]) > 0.9
    assert main(["predict", model, csv_files["regress"]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "predicted_y" and len(lines) == 301


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_progress_bar(csv_files, capsys):
    assert main(["train", csv_files["regress"], "--target", "y", "--max-iter", "5",
                 "--no-early-stopping"]) == 0
    captured = capsys.readouterr()
    if _has_tqdm():
        text = captured.err
        assert "epoch" in text and "samples/s" in text and "loss=" in text
    else:  # the plain-line fallback carries the same fields
        text = captured.out
        assert "epoch 5/5: loss" in text and "samples/s" in text


@pytest.mark.parametrize("argv,message", [
    (["train", "missing.csv", "--target", "y"], "no such file"),
    (["train", "{classify}", "--target", "nope"], "no column named 'nope'"),
    (["train", "{classify}", "--target", "label"], "not numeric"),
    (["train", "{classify}", "--target", "label", "--one-hot", "--hidden", "a,b"],
     "--hidden"),
    (["predict", "missing.skops", "{classify}"], "no such file"),
])
def test_cli_errors_are_one_line_without_traceback(csv_files, argv, message):
    argv = [a.format(**csv_files) for a in argv]
    res = subprocess.run([sys.executable, "-m", "cbackprop._cli", *argv],
                         capture_output=True, text=True, cwd=csv_files["dir"])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_cli_help_documents_categorical_handling():
    res = subprocess.run([sys.executable, "-m", "cbackprop._cli", "train", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "--one-hot" in res.stdout
    assert "one-hot encodes" in res.stdout


def test_cli_bench(capsys):
    assert main(["bench", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("x\n") >= 4 and "scikit-learn" in out


# ---------------------------------------------------------------------------
# Progress and plots
# ---------------------------------------------------------------------------

def test_verbose_2_progress_bar_and_fallback(capsys, monkeypatch):
    X, y = _blobs()
    if _has_tqdm():
        MLPClassifier(max_iter=4, verbose=2, early_stopping=True,
                      random_state=0).fit(X, y)
        err = capsys.readouterr().err
        assert "4/4" in err and "val=" in err and "samples/s=" in err
    # Without tqdm: one line per epoch with the same fields.
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    MLPClassifier(max_iter=3, verbose=2, random_state=0).fit(X, y)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("epoch 3/3: loss")


def test_loss_curve_display(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    X, y = _blobs()
    est = MLPClassifier(max_iter=15, early_stopping=True, random_state=0).fit(X, y)
    disp = LossCurveDisplay.from_estimator(est)
    np.testing.assert_array_equal(disp.lines_["training loss"].get_ydata(),
                                  est.loss_curve_)
    np.testing.assert_array_equal(disp.lines_["validation score"].get_ydata(),
                                  est.validation_scores_)
    assert disp.ax_.get_xlabel() == "epoch" and disp.score_ax_ is not None
    disp.figure_.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    plain = LossCurveDisplay.from_estimator(MLPRegressor(max_iter=5).fit(X, X[:, 0]))
    assert plain.score_ax_ is None and set(plain.lines_) == {"training loss"}
    with pytest.raises(ValueError, match="no loss_curve_"):
        LossCurveDisplay.from_estimator(MLPClassifier(solver="lbfgs",
                                                      max_iter=5).fit(X, y))


# ---------------------------------------------------------------------------
# scikit-learn tooling
# ---------------------------------------------------------------------------

def test_pipeline_column_transformer_and_dataframe_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _blobs()
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    df["kind"] = np.where(X[:, 3] > 0, "up", "down")
    pre = ColumnTransformer([("num", StandardScaler(), ["a", "b", "c", "d"]),
                             ("cat", OneHotEncoder(), ["kind"])])
    pipe = make_pipeline(pre, MLPClassifier(max_iter=30, random_state=0))
    assert pipe.fit(df, y).score(df, y) > 0.8
    est = MLPRegressor(max_iter=5, random_state=0).fit(df[["a", "b"]], X[:, 0])
    assert list(est.feature_names_in_) == ["a", "b"]
    with pytest.raises(ValueError, match="feature names"):
        est.predict(df[["b", "a"]])
    scaled = make_pipeline(StandardScaler(), MLPRegressor(max_iter=30, random_state=0))
    assert scaled.fit(X, X[:, 0]).score(X, X[:, 0]) > 0.8


@pytest.mark.parametrize("search", [GridSearchCV, RandomizedSearchCV])
def test_searches_with_two_jobs(search):
    X, y = _blobs(200)
    grid = {"hidden_layer_sizes": [(8,), (16,)], "alpha": [1e-4, 1e-2]}
    kwargs = {"n_iter": 3, "random_state": 0} if search is RandomizedSearchCV else {}
    s = search(MLPClassifier(solver="lbfgs", max_iter=100, random_state=0), grid,
               cv=3, n_jobs=2, **kwargs).fit(X, y)
    assert s.best_score_ > 0.75
    assert isinstance(s.best_estimator_, MLPClassifier)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_search_on_threads_equals_sequential_search():
    # joblib's threading backend: the fits run in worker threads, one
    # OpenMP thread each, after a fit in the main thread (the situation in
    # which threadpoolctl 3.8 dropped our BLAS limit).
    import joblib

    X, y = _blobs(300)
    MLPClassifier(max_iter=2, random_state=0).fit(X, y)
    grid = {"hidden_layer_sizes": [(8,), (16,)], "alpha": [1e-4, 1e-2]}
    est = MLPClassifier(max_iter=20, random_state=0, n_threads=1)
    seq = GridSearchCV(est, grid, cv=3).fit(X, y)
    with joblib.parallel_backend("threading"):
        par = GridSearchCV(est, grid, cv=3, n_jobs=2).fit(X, y)
    assert par.best_params_ == seq.best_params_
    np.testing.assert_array_equal(par.cv_results_["mean_test_score"],
                                  seq.cv_results_["mean_test_score"])
    for a, b in zip(par.best_estimator_.coefs_, seq.best_estimator_.coefs_):
        np.testing.assert_array_equal(a, b)


def test_cross_val_calibration_ensembles_and_clone():
    X, y = _blobs(240)
    base = MLPClassifier(hidden_layer_sizes=(10,), max_iter=30, random_state=0)
    assert cross_val_score(base, X, y, cv=3).mean() > 0.6
    cal = CalibratedClassifierCV(base, cv=3).fit(X, y)
    np.testing.assert_allclose(cal.predict_proba(X).sum(axis=1), 1)
    vote = VotingClassifier([("mlp", base), ("lr", LogisticRegression())],
                            voting="soft").fit(X, y)
    assert vote.score(X, y) > 0.7
    stack = StackingClassifier([("mlp", base), ("lr", LogisticRegression())],
                               cv=3).fit(X, y)
    assert stack.score(X, y) > 0.7
    twin = clone(base)
    assert twin.get_params() == base.get_params() and not hasattr(twin, "coefs_")
    reg = Pipeline([("scale", StandardScaler()),
                    ("mlp", MLPRegressor(solver="lbfgs", max_iter=100,
                                         random_state=0))])
    assert cross_val_score(reg, X, X[:, 0], cv=3).mean() > 0.9


# ---------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("dask.distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=False, dashboard_address=None)
        client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_ml_incremental_partial_fit_over_chunks(dask_client):
    da = pytest.importorskip("dask.array")
    wrappers = pytest.importorskip("dask_ml.wrappers")
    X, y = _blobs(2000)
    Xd = da.from_array(X, chunks=400)
    yd = da.from_array(y, chunks=400)
    # Blocks in order (dask-ml shuffles them by default) so that the loop
    # by hand below can reproduce the model exactly.
    inc = wrappers.Incremental(MLPClassifier(hidden_layer_sizes=(16,),
                                             learning_rate_init=0.01, random_state=0),
                               scoring="accuracy", shuffle_blocks=False)
    inc.fit(Xd, yd, classes=[0, 1, 2])
    # partial_fit ran once per chunk: one epoch each.
    assert inc.estimator_.t_ == X.shape[0]
    assert inc.score(Xd, yd) > 0.7
    # The same loop by hand over the Dask partitions gives the same model.
    by_hand = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.01,
                            random_state=0)
    for block_X, block_y in zip(Xd.to_delayed().ravel(), yd.to_delayed().ravel()):
        by_hand.partial_fit(block_X.compute(), block_y.compute(), classes=[0, 1, 2])
    np.testing.assert_allclose(by_hand.coefs_[0], inc.estimator_.coefs_[0])


def test_search_on_the_joblib_dask_backend(dask_client):
    joblib = pytest.importorskip("joblib")
    X, y = _blobs(200)
    grid = {"hidden_layer_sizes": [(8,), (16,)], "alpha": [1e-4, 1e-1]}
    with joblib.parallel_backend("dask"):
        s = GridSearchCV(MLPClassifier(max_iter=20, random_state=0), grid, cv=3,
                         n_jobs=-1).fit(X, y)
    assert len(dask_client.nthreads()) == 2
    local = GridSearchCV(MLPClassifier(max_iter=20, random_state=0), grid,
                         cv=3).fit(X, y)
    np.testing.assert_allclose(s.cv_results_["mean_test_score"],
                               local.cv_results_["mean_test_score"])
