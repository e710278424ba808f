"""Where skipping zero inputs stops paying: sparse first layer vs BLAS.

Usage::

    python benches/density.py [--repeats 3] [--threads 1]

MNIST (784-100-10, float32, sgd) made denser by setting a random share of
its zero pixels to 0.01, then fitted twice per density and batch size: from
CSR (the first layer reads only the non-zeros) and from a dense array held
on BLAS.  Prints us/sample and the BLAS/sparse ratio; the crossover sets
``_SKIP_ZEROS_DENSITY`` in ``cbackprop/_mlp.py``.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mnist import load_mnist10k  # noqa: E402

from cbackprop import MLPClassifier, _mlp  # noqa: E402


def per_sample(X, y, batch_size, epochs, threads, repeats):
    times = []
    for _ in range(repeats):
        est = MLPClassifier(hidden_layer_sizes=(100,), solver="sgd",
                            batch_size=batch_size, max_iter=epochs,
                            learning_rate_init=0.01, random_state=0, tol=0.0,
                            n_iter_no_change=10**9, n_threads=threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            est.fit(X, y)
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times)) / (epochs * X.shape[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args(argv)
    X0, y = load_mnist10k(dtype=np.float32)
    X0, y = X0[:8000], y[:8000]
    rng = np.random.default_rng(0)
    print("| density | batch | sparse us/sample | BLAS us/sample | BLAS / sparse |")
    print("|---|---|---|---|---|")
    base = np.count_nonzero(X0) / X0.size
    for target in (base, 0.25, 0.3, 0.4, 0.5):
        X = X0.copy()
        if target > base:
            zeros = X == 0
            X[zeros & (rng.random(X.shape) < (target - base) / (1 - base))] = 0.01
        density = np.count_nonzero(X) / X.size
        Xs = sp.csr_matrix(X)
        for bs in (1, 32, 200, 8000):
            epochs = 1 if bs == 1 else args.epochs
            t_sp = per_sample(Xs, y, bs, epochs, args.threads, args.repeats)
            saved = _mlp._SKIP_ZEROS_DENSITY
            _mlp._SKIP_ZEROS_DENSITY = {"online": 0.0, "batch": 0.0}
            try:
                t_bl = per_sample(X, y, bs, epochs, args.threads, args.repeats)
            finally:
                _mlp._SKIP_ZEROS_DENSITY = saved
            print(f"| {density:.2f} | {bs} | {t_sp:.2f} | {t_bl:.2f} | "
                  f"{t_bl / t_sp:.2f} |", flush=True)


if __name__ == "__main__":
    main()
