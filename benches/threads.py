"""Fit time on 1 thread and on every core, MNIST, one network and batch size.

Usage::

    python benches/threads.py [--hidden 512,256] [--batch-size 200]
                              [--solver adam] [--dtype float32] [--epochs 2]

Prints microseconds per sample for n_threads=1 and n_threads=-1 (medians of
--repeats fits, each after a short pause so no worker thread is still busy)
and their ratio.  The weights are bitwise the same in both.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mnist import load_mnist10k  # noqa: E402

from cbackprop import MLPClassifier  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="512,256")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--solver", default="adam", choices=["adam", "sgd"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    X, y = load_mnist10k(dtype=np.dtype(args.dtype))
    X, y = X[:8000], y[:8000]
    per = {}
    for threads in (1, -1):
        times = []
        for _ in range(args.repeats):
            time.sleep(0.5)
            est = MLPClassifier(hidden_layer_sizes=hidden, solver=args.solver,
                                batch_size=args.batch_size, max_iter=args.epochs,
                                random_state=0, n_threads=threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                est.fit(X, y)
                times.append(time.perf_counter() - t0)
        per[threads] = 1e6 * np.median(times) / (X.shape[0] * args.epochs)
    print(f"784-{'-'.join(map(str, hidden))}-10 {args.solver} batch "
          f"{args.batch_size} {args.dtype}: 1 thread {per[1]:.2f} us/sample, "
          f"{os.cpu_count()} threads {per[-1]:.2f} us/sample, "
          f"{per[1] / per[-1]:.2f}x")


if __name__ == "__main__":
    main()
