"""Fit times of cbackprop against scikit-learn, same parameters, same run.

Usage::

    python benches/compare_sklearn.py [--repeats 3] [--quick]

Prints a markdown table of median fit times and ratios for

* scikit-learn's defaults on ``load_digits`` (whole fit, same result), and
* MNIST (``../shared/data/mnist10k``: 8,000 train / 2,000 test), 784-100-10,
  ``solver='sgd'``, batch sizes 1, 32 and 200, float64 and float32.

Timings are medians of ``--repeats`` runs; the machine is named in the header.
"""

import argparse
import os
import platform
import sys

import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier as SkMLP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mnist import load_mnist10k  # noqa: E402

import cbackprop  # noqa: E402
from cbackprop import MLPClassifier  # noqa: E402
from cbackprop._cli import _median_fit_time  # noqa: E402


def _median_fit(cls, params, X, y, repeats):
    # The same timing loop as `cbackprop demo` / `cbackprop bench`.
    return _median_fit_time(lambda: cls(**params), X, y, repeats)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples and epochs, for a smoke run")
    args = ap.parse_args(argv)

    print(f"# cbackprop {cbackprop.__version__} vs scikit-learn {sklearn.__version__}")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"median of {args.repeats} fits\n")
    print("| scenario | dtype | epochs | scikit-learn | cbackprop | speed-up | "
          "accuracy (sk / cb) |")
    print("|---|---|---|---|---|---|---|")

    X, y = load_digits(return_X_y=True)
    params = dict(random_state=0)
    t_sk, sk = _median_fit(SkMLP, params, X, y, args.repeats)
    t_cb, cb = _median_fit(MLPClassifier, params, X, y, args.repeats)
    same = all(np.allclose(a, b, rtol=1e-6, atol=1e-9) for a, b in zip(cb.coefs_,
                                                                       sk.coefs_))
    print(f"| load_digits, scikit-learn defaults{' (same weights)' if same else ''} "
          f"| float64 | {cb.n_iter_} | {t_sk:.3f} s | {t_cb:.3f} s | "
          f"{t_sk / t_cb:.1f}x | {sk.score(X, y):.4f} / {cb.score(X, y):.4f} |")

    X, y = load_mnist10k()
    n_train = 2000 if args.quick else 8000
    X_tr, y_tr, X_te, y_te = X[:n_train], y[:n_train], X[8000:], y[8000:]
    for batch_size, epochs in ((1, 1), (32, 3), (200, 5)):
        for dtype in (np.float64, np.float32):
            params = dict(hidden_layer_sizes=(100,), solver="sgd", batch_size=batch_size,
                          learning_rate_init=0.01 if batch_size == 1 else 0.1,
                          max_iter=1 if args.quick else epochs, random_state=0,
                          tol=0.0, n_iter_no_change=10**6)
            Xd = X_tr.astype(dtype)
            t_sk, sk = _median_fit(SkMLP, params, Xd, y_tr, args.repeats)
            t_cb, cb = _median_fit(MLPClassifier, params, Xd, y_tr, args.repeats)
            n_seen = cb.n_iter_ * n_train
            print(f"| MNIST 784-100-10 sgd, batch {batch_size} | "
                  f"{np.dtype(dtype).name} | {cb.n_iter_} | "
                  f"{t_sk:.3f} s ({1e6 * t_sk / n_seen:.1f} us/sample) | "
                  f"{t_cb:.3f} s ({1e6 * t_cb / n_seen:.1f} us/sample) | "
                  f"{t_sk / t_cb:.1f}x | "
                  f"{sk.score(X_te.astype(dtype), y_te):.4f} / "
                  f"{cb.score(X_te.astype(dtype), y_te):.4f} |")


if __name__ == "__main__":
    main()
