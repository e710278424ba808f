"""The ``cbackprop`` command line: train, predict, demo, bench."""

import argparse
import csv
import math
import os
import sys
import time
import warnings

TRAIN_EPILOG = """\
The CSV needs a header row. Feature columns must be numeric; a column with any
non-numeric value is refused unless --one-hot is given, which one-hot encodes
such columns (categories seen in training; unseen ones at prediction time get
all zeros). Empty cells are refused. Features are standardised (StandardScaler)
inside the saved pipeline. --task defaults to 'classify' when the target is
non-numeric or has at most 20 distinct integer values, else 'regress'.
A model saved as *.skops needs the skops package; other names use joblib.
"""


class CLIError(Exception):
    """A user error: reported on one line, exit status 2."""


# ---------------------------------------------------------------------------
# CSV handling
# ---------------------------------------------------------------------------

def _read_csv(path):
    if not os.path.isfile(path):
        raise CLIError(f"no such file: {path}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CLIError(f"{path} is empty") from None
        header = [h.strip() for h in header]
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise CLIError(f"{path}, line {line_no}: {len(row)} fields, the "
                               f"header has {len(header)}")
            rows.append(row)
    if not rows:
        raise CLIError(f"{path} has a header but no data rows")
    columns = {name: [r[i].strip() for r in rows] for i, name in enumerate(header)}
    return header, columns


def _as_float(values, name, path):
    out = []
    for i, v in enumerate(values):
        if v == "":
            raise CLIError(f"{path}: column '{name}' is empty on line {i + 2}")
        try:
            x = float(v)
        except ValueError:
            return None
        if not math.isfinite(x):
            raise CLIError(f"{path}: column '{name}' holds {v!r} on line {i + 2}")
        out.append(x)
    return out


def _encode(columns, features, path, one_hot, categories=None):
    """Feature matrix and the categories of one-hot encoded columns."""
    import numpy as np

    learn = categories is None
    categories = {} if learn else categories
    blocks, names = [], []
    for name in features:
        if name not in columns:
            raise CLIError(f"{path}: no column named '{name}'")
        values = columns[name]
        if name in categories:
            cats = categories[name]
            block = np.array([[v == c for c in cats] for v in values], dtype=float)
            names += [f"{name}={c}" for c in cats]
        else:
            numeric = _as_float(values, name, path)
            if numeric is None:
                if not one_hot or not learn:
                    bad = next(v for v in values if _as_float([v], name, path) is None)
                    raise CLIError(
                        f"{path}: column '{name}' is not numeric (value {bad!r}); "
                        "pass --one-hot to one-hot encode categorical columns"
                    )
                cats = sorted(set(values))
                categories[name] = cats
                block = np.array([[v == c for c in cats] for v in values], dtype=float)
                names += [f"{name}={c}" for c in cats]
            else:
                block = np.asarray(numeric, dtype=float).reshape(-1, 1)
                names.append(name)
        blocks.append(block)
    return np.hstack(blocks), names, categories


def _target(values, name, task):
    import numpy as np

    numeric = _as_float(values, name, "target")
    if task is None:
        if numeric is None:
            task = "classify"
        else:
            distinct = set(numeric)
            task = ("classify" if len(distinct) <= 20
                    and all(float(v).is_integer() for v in distinct) else "regress")
    if task == "regress":
        if numeric is None:
            raise CLIError(f"target column '{name}' is not numeric: use "
                           "--task classify")
        return np.asarray(numeric), task
    if numeric is not None and all(float(v).is_integer() for v in numeric):
        return np.asarray(numeric, dtype=np.int64), task
    return np.asarray(values, dtype=object), task


def _save(obj, path):
    if path.endswith(".skops"):
        try:
            import skops.io as sio
        except ImportError:
            raise CLIError("saving as .skops needs skops: pip install skops, or "
                           "name the file *.joblib") from None
        sio.dump(obj, path)
    else:
        import joblib

        joblib.dump(obj, path)


def _load(path):
    if not os.path.isfile(path):
        raise CLIError(f"no such file: {path}")
    if path.endswith(".skops"):
        try:
            import skops.io as sio
        except ImportError:
            raise CLIError("loading a .skops model needs skops: pip install skops") \
                from None
        untrusted = sio.get_untrusted_types(file=path)
        foreign = [t for t in untrusted if not t.startswith("cbackprop.")]
        if foreign:
            raise CLIError(f"{path} holds types that are not cbackprop's: {foreign}")
        return sio.load(path, trusted=untrusted)
    import joblib

    return joblib.load(path)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

def _train(args):
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from cbackprop import MLPClassifier, MLPRegressor

    header, columns = _read_csv(args.data)
    if args.target not in columns:
        raise CLIError(f"{args.data}: no column named '{args.target}' (columns: "
                       f"{', '.join(header)})")
    features = [h for h in header if h != args.target]
    if not features:
        raise CLIError(f"{args.data}: no feature columns besides the target")
    X, names, categories = _encode(columns, features, args.data, args.one_hot)
    y, task = _target(columns[args.target], args.target, args.task)
    try:
        hidden = tuple(int(h) for h in args.hidden.split(","))
    except ValueError:
        raise CLIError(f"--hidden takes comma-separated ints, got {args.hidden!r}") \
            from None
    stratify = y if task == "classify" and len(set(y.tolist())) > 1 else None
    try:
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=args.test_size, random_state=args.seed, stratify=stratify)
    except ValueError as exc:
        raise CLIError(f"cannot split the data: {exc}") from None
    cls = MLPClassifier if task == "classify" else MLPRegressor
    est = cls(hidden_layer_sizes=hidden, solver=args.solver, max_iter=args.max_iter,
              batch_size=args.batch_size, random_state=args.seed,
              early_stopping=not args.no_early_stopping and len(y_tr) >= 20,
              verbose=0 if args.quiet else 2)
    model = Pipeline([("scale", StandardScaler()), ("mlp", est)])
    print(f"{task}: {X_tr.shape[0]} training / {X_te.shape[0]} test rows, "
          f"{X.shape[1]} features, hidden layers {hidden}, solver {args.solver}")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X_tr, y_tr)
    elapsed = time.perf_counter() - t0
    pred = model.predict(X_te)
    print(f"trained in {elapsed:.2f} s ({est.n_iter_} epochs)")
    if task == "classify":
        print(f"test accuracy {accuracy_score(y_te, pred):.4f}, macro F1 "
              f"{f1_score(y_te, pred, average='macro'):.4f}")
    else:
        print(f"test R^2 {r2_score(y_te, pred):.4f}, MAE "
              f"{mean_absolute_error(y_te, pred):.4g}")
    if args.out:
        bundle = {"pipeline": model, "features": features, "encoded": names,
                  "categories": categories, "target": args.target, "task": task}
        _save(bundle, args.out)
        print(f"model saved to {args.out}")
    return 0


def _predict(args):
    import numpy as np

    bundle = _load(args.model)
    if not isinstance(bundle, dict) or "pipeline" not in bundle:
        raise CLIError(f"{args.model} was not written by 'cbackprop train'")
    header, columns = _read_csv(args.data)
    X, _, _ = _encode(columns, bundle["features"], args.data, False,
                      categories=bundle["categories"])
    pred = bundle["pipeline"].predict(X)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow([f"predicted_{bundle['target']}"])
        for p in np.asarray(pred).tolist():
            writer.writerow([p])
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"{len(pred)} predictions written to {args.out}")
    return 0


def _median_fit_time(make, X, y, repeats):
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning

    times, est = [], None
    for _ in range(repeats):
        est = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            est.fit(X, y)
            times.append(time.perf_counter() - t0)
    return float(np.median(times)), est


def _demo(args):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SkMLP

    from cbackprop import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25,
                                              random_state=args.seed, stratify=y)
    params = dict(hidden_layer_sizes=(100,), solver=args.solver, max_iter=args.max_iter,
                  random_state=args.seed)
    print(f"load_digits: {X_tr.shape[0]} train / {X_te.shape[0]} test samples, "
          f"{X.shape[1]} features, 10 classes")
    print(f"parameters: {params}")
    rows = []
    for name, cls in (("cbackprop", MLPClassifier), ("scikit-learn", SkMLP)):
        t, est = _median_fit_time(lambda cls=cls: cls(**params), X_tr, y_tr,
                                  args.repeats)
        rows.append((name, est.score(X_te, y_te), t, est.n_iter_))
    print()
    print(f"{'library':<14}{'test accuracy':>15}{'fit time (s)':>15}{'epochs':>8}")
    for name, acc, t, n_iter in rows:
        print(f"{name:<14}{acc:>15.4f}{t:>15.4f}{n_iter:>8}")
    print(f"\ncbackprop is {rows[1][2] / rows[0][2]:.1f}x faster than scikit-learn "
          f"(median of {args.repeats} fits each)")
    return 0


def _bench(args):
    import numpy as np
    from sklearn.datasets import load_digits, make_regression
    from sklearn.neural_network import MLPClassifier as SkC
    from sklearn.neural_network import MLPRegressor as SkR

    from cbackprop import MLPClassifier, MLPRegressor

    Xd, yd = load_digits(return_X_y=True)
    Xd = Xd / 16.0
    Xr, yr = make_regression(n_samples=3000, n_features=20, noise=1.0, random_state=0)
    yr = (yr - yr.mean()) / yr.std()
    rng = np.random.default_rng(0)
    Xs = rng.random((4000, 784), dtype=np.float64).astype(np.float32)
    ys = (Xs[:, :10].sum(axis=1) * 2).astype(int) % 10
    cases = [
        ("digits, defaults (adam, batch 200)", SkC, MLPClassifier, Xd, yd,
         dict(random_state=0, max_iter=50)),
        ("digits, online sgd (batch 1)", SkC, MLPClassifier, Xd, yd,
         dict(solver="sgd", batch_size=1, max_iter=2, random_state=0)),
        ("regression 20-64-1, sgd batch 32", SkR, MLPRegressor, Xr, yr,
         dict(hidden_layer_sizes=(64,), solver="sgd", batch_size=32, max_iter=10,
              random_state=0)),
        ("784-100-10 float32, adam batch 200", SkC, MLPClassifier, Xs, ys,
         dict(max_iter=3, random_state=0)),
    ]
    print(f"{'case':<38}{'scikit-learn':>14}{'cbackprop':>12}{'speed-up':>10}")
    for name, sk, cb, X, y, params in cases:
        t_sk, _ = _median_fit_time(lambda sk=sk, p=params: sk(**p), X, y, args.repeats)
        t_cb, _ = _median_fit_time(lambda cb=cb, p=params: cb(**p), X, y, args.repeats)
        print(f"{name:<38}{t_sk:>12.3f} s{t_cb:>10.3f} s{t_sk / t_cb:>9.1f}x",
              flush=True)
    print(f"\nmedians of {args.repeats} fits; benches/compare.py runs the full "
          "comparison (with PyTorch when installed)")
    return 0


def _parser():
    parser = argparse.ArgumentParser(
        prog="cbackprop",
        description="Fast CPU backpropagation with scikit-learn's MLP API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train", help="train on a CSV file, report test metrics, save the model",
        description="Train a network on a CSV file with a live progress bar, print "
        "test metrics and save the model.", epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("data", help="CSV file with a header row")
    train.add_argument("--target", required=True, help="name of the target column")
    train.add_argument("--hidden", default="100",
                       help="hidden layer sizes, comma-separated (default: 100)")
    train.add_argument("--solver", default="adam", choices=["adam", "sgd", "lbfgs"])
    train.add_argument("--max-iter", type=int, default=200)
    train.add_argument("--batch-size", type=_batch_size, default="auto")
    train.add_argument("--task", choices=["classify", "regress"], default=None)
    train.add_argument("--test-size", type=float, default=0.2)
    train.add_argument("--one-hot", action="store_true",
                       help="one-hot encode non-numeric feature columns")
    train.add_argument("--no-early-stopping", action="store_true",
                       help="train for --max-iter epochs without a validation split")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--out", help="where to save the model (*.skops or *.joblib)")
    train.set_defaults(func=_train)

    predict = sub.add_parser("predict", help="predict with a model saved by train")
    predict.add_argument("model", help="model file written by 'cbackprop train'")
    predict.add_argument("data", help="CSV file with the training feature columns")
    predict.add_argument("--out", help="CSV file for the predictions (default: "
                         "standard output)")
    predict.set_defaults(func=_predict)

    demo = sub.add_parser(
        "demo",
        help="train on scikit-learn's digits and compare with scikit-learn",
        description="Train MLPClassifier on load_digits (shipped with "
        "scikit-learn) and print test accuracy and fit time next to "
        "sklearn.neural_network.MLPClassifier with the same parameters and split.",
    )
    demo.add_argument("--solver", default="adam", choices=["adam", "sgd", "lbfgs"])
    demo.add_argument("--max-iter", type=int, default=200)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--repeats", type=int, default=3)
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="quick speed comparison with scikit-learn")
    bench.add_argument("--repeats", type=int, default=3)
    bench.set_defaults(func=_bench)
    return parser


def _batch_size(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("an int or 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def main(argv=None):
    """Entry point of the ``cbackprop`` console script."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"cbackprop: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
