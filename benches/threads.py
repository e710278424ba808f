"""Fit time on 1 thread and on every core, MNIST, one network and batch size.

Usage::

    python benches/threads.py [--hidden 512,256] [--batch-size 200]
                              [--solver adam] [--dtype float32] [--epochs 5]
                              [--repeats 5] [--ceiling]

Each round fits on ``n_threads=1`` and on ``n_threads=-1`` (every core),
one after the other with a short pause between, so that a spell of load
from a shared machine's neighbours falls on both sides of the round's
ratio.  Prints each round's ratio and the medians.  The weights are bitwise
the same in both fits.

``--ceiling`` adds, to every round, one one-thread fit in a separate
process alone, then as many *independent* one-thread fits as there are
cores, run at once in separate processes.  They share no data and never
wait for each other, so ``cores x t(alone) / t(each, all at once)`` is the
most any split of one fit across the cores could gain on this machine at
that moment: it counts what the cores share whatever the program does
(memory bandwidth, last-level cache, the host's frequency and neighbours)
and nothing of what splitting a fit adds.  Both sides of that ratio are
fits in fresh child processes (a child's fit ran up to 10% faster than the
parent's own one-thread fit, which had put the ceiling above 2x on two
cores).
"""

import argparse
import os
import subprocess
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mnist import load_mnist10k  # noqa: E402

from cbackprop import MLPClassifier  # noqa: E402


def _data(dtype):
    X, y = load_mnist10k(dtype=np.dtype(dtype))
    return X[:8000], y[:8000]


def _fit_time(args, X, y, threads):
    est = MLPClassifier(hidden_layer_sizes=args.hidden, solver=args.solver,
                        batch_size=args.batch_size, max_iter=args.epochs,
                        tol=0.0, n_iter_no_change=10**9, random_state=0,
                        n_threads=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        est.fit(X, y)
        return time.perf_counter() - t0


def _child(args):
    """One independent one-thread fit, started when the parent says go."""
    X, y = _data(args.dtype)
    _fit_time(args, X[:400], y[:400], 1)  # import and first-call costs
    print("ready", flush=True)
    sys.stdin.readline()
    print(f"{_fit_time(args, X, y, 1):.6f}", flush=True)


def _concurrent(argv, n):
    """Time of each of ``n`` one-thread fits run at once, one per process."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child"]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(n)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a ceiling child process failed to start")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return [float(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="512,256")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--solver", default="adam", choices=["adam", "sgd"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ceiling", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    if args.child:
        _child(args)
        return
    child_argv = [a for a in argv if a != "--ceiling"]
    X, y = _data(args.dtype)
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count()
    _fit_time(args, X[:400], y[:400], -1)
    one, many, each, alone = [], [], [], []
    print(f"784-{'-'.join(map(str, args.hidden))}-10 {args.solver} batch "
          f"{args.batch_size} {args.dtype}, {args.epochs}-epoch fits, {n_cpu} cores")
    for r in range(args.repeats):
        time.sleep(0.5)
        one.append(_fit_time(args, X, y, 1))
        time.sleep(0.5)
        many.append(_fit_time(args, X, y, -1))
        line = (f"round {r + 1}: 1 thread {one[-1]:.3f} s, {n_cpu} threads "
                f"{many[-1]:.3f} s, {one[-1] / many[-1]:.2f}x")
        if args.ceiling:
            time.sleep(0.5)
            alone.append(_concurrent(child_argv, 1)[0])
            time.sleep(0.5)
            ts = _concurrent(child_argv, n_cpu)
            each.append(float(np.median(ts)))
            line += (f"; 1-thread fit alone {alone[-1]:.3f} s, {n_cpu} at once "
                     f"{' '.join(f'{t:.3f}' for t in ts)} s, ceiling "
                     f"{n_cpu * alone[-1] / each[-1]:.2f}x")
        print(line, flush=True)
    t1, tn = np.median(one), np.median(many)
    per = 1e6 / (X.shape[0] * args.epochs)
    print(f"median: 1 thread {t1 * per:.2f} us/sample, {n_cpu} threads "
          f"{tn * per:.2f} us/sample, {t1 / tn:.2f}x (rounds "
          f"{min(o / m for o, m in zip(one, many)):.2f}-"
          f"{max(o / m for o, m in zip(one, many)):.2f}x)")
    if args.ceiling:
        ceiling = n_cpu * np.median(alone) / np.median(each)
        print(f"ceiling (independent fits): {ceiling:.2f}x (rounds "
              f"{min(n_cpu * a / e for a, e in zip(alone, each)):.2f}-"
              f"{max(n_cpu * a / e for a, e in zip(alone, each)):.2f}x); "
              f"scaling reached {t1 / tn / ceiling:.0%} of it")


if __name__ == "__main__":
    main()
