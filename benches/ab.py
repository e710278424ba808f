"""Paired A/B timing of two builds of cbackprop on the same fit.

Usage::

    git worktree add /tmp/old <commit>
    (cd /tmp/old && python setup.py build_ext --inplace)
    python benches/ab.py /tmp/old . --hidden 512,256 --batch-size 200 \\
        --solver adam --epochs 3 --threads 2 --rounds 10
    python benches/ab.py /tmp/old . --data digits --threads 2 --rounds 20

Two long-lived worker processes import cbackprop from the two source trees
(``PYTHONPATH``) and fit the same MNIST model in turn, alternating which
goes first; the first round warms up and is not counted.  On a shared
machine whose speed drifts by tens of percent within minutes, sequential
"before / after" runs mislead; paired rounds see the same drift.  Prints
both sides' minimum and median, the ratio of the minima and the median of
the per-round ratios (old / new: above 1 means the new build is faster),
and whether the fitted weights are bitwise equal.
"""

import argparse
import os
import statistics
import subprocess
import sys


def _worker(args):
    import hashlib
    import time
    import warnings

    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mnist import load_mnist10k

    from cbackprop import MLPClassifier

    if args.data == "digits":
        # compare.py's digits scenario: scikit-learn's defaults, whole fit.
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        params = dict(random_state=0, n_threads=args.threads)
    else:
        X, y = load_mnist10k(dtype=np.dtype(args.dtype))
        X, y = X[:8000], y[:8000]
        if args.data == "mnist-dense":
            X = X + X.dtype.type(0.01)
        params = dict(hidden_layer_sizes=tuple(int(h) for h in args.hidden.split(",")),
                      solver=args.solver, batch_size=args.batch_size,
                      max_iter=args.epochs, tol=0.0, n_iter_no_change=10**9,
                      random_state=0, n_threads=args.threads)
    warnings.simplefilter("ignore")
    print("ready", flush=True)
    for _ in sys.stdin:
        est = MLPClassifier(**params)
        t0 = time.perf_counter()
        est.fit(X, y)
        t = time.perf_counter() - t0
        digest = np.concatenate([c.ravel() for c in est.coefs_]).view(np.uint8)
        print(f"{t:.6f} {hashlib.sha1(digest.tobytes()).hexdigest()}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="source tree of the old build")
    ap.add_argument("new", help="source tree of the new build")
    ap.add_argument("--data", default="mnist", choices=["mnist", "mnist-dense", "digits"],
                    help="digits: scikit-learn's defaults on load_digits (the "
                         "options below but --threads are ignored); mnist-dense: "
                         "MNIST with 0.01 added to every pixel, so that no input "
                         "is zero and the first layer runs on BLAS")
    ap.add_argument("--hidden", default="100")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--solver", default="sgd", choices=["adam", "sgd"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=-1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    procs = {}
    for name, tree in (("old", args.old), ("new", args.new)):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        procs[name] = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv, "--worker"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    times = {name: [] for name in procs}
    digests = {}
    try:
        for p in procs.values():
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker failed to start")
        for r in range(args.rounds + 1):
            order = list(procs.items())
            for name, p in (order if r % 2 == 0 else order[::-1]):
                p.stdin.write("go\n")
                p.stdin.flush()
                t, digest = p.stdout.readline().split()
                if r > 0:
                    times[name].append(float(t))
                digests[name] = digest
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    old, new = times["old"], times["new"]
    ratios = [a / b for a, b in zip(old, new)]
    print(f"old min {min(old):.4f} s, median {statistics.median(old):.4f} s | "
          f"new min {min(new):.4f} s, median {statistics.median(new):.4f} s | "
          f"old/new: minima {min(old) / min(new):.3f}x, paired median "
          f"{statistics.median(ratios):.3f}x | same weights: "
          f"{digests['old'] == digests['new']}")


if __name__ == "__main__":
    main()
