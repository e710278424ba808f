"""The ``cbackprop`` command line."""

import argparse
import sys
import time
import warnings


def _demo(args):
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
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
        times = []
        for _ in range(args.repeats):
            est = cls(**params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                t0 = time.perf_counter()
                est.fit(X_tr, y_tr)
                times.append(time.perf_counter() - t0)
        rows.append((name, est.score(X_te, y_te), float(np.median(times)), est.n_iter_))
    print()
    print(f"{'library':<14}{'test accuracy':>15}{'fit time (s)':>15}{'epochs':>8}")
    for name, acc, t, n_iter in rows:
        print(f"{name:<14}{acc:>15.4f}{t:>15.4f}{n_iter:>8}")
    print(f"\ncbackprop is {rows[1][2] / rows[0][2]:.1f}x faster than scikit-learn "
          f"(median of {args.repeats} fits each)")
    return 0


def main(argv=None):
    """Entry point of the ``cbackprop`` console script."""
    parser = argparse.ArgumentParser(
        prog="cbackprop",
        description="Fast CPU backpropagation with scikit-learn's MLP API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
