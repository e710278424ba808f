"""Where a fit of scikit-learn's defaults on load_digits spends its time.

Usage::

    python benches/digits_parts.py [--rounds 15]

The README's load_digits target compares whole fits (64-100-10, adam,
batch 200, float64, 130 epochs).  This script takes such a fit apart from
the outside, in one process, with the parts taking turns within each round
(medians over the rounds):

* whole fits on one thread and on all threads (``n_threads``), and the
  speed-up between them;
* a one-epoch fit (``max_iter=1``): the fixed cost of a fit, validation and
  set-up, plus one epoch;
* all threads with the chunks and the optimiser step of a batch in two
  parallel regions instead of one (``_kernels._set_local_step``);
* one-thread numpy products of the shapes one 100-row chunk multiplies
  (forward, backward and gradient), and the same products as the fits make
  them (our own AVX-512 kernels where the CPU has them, else BLAS), timed
  in a loop without Python: the floor a chunk's arithmetic sets;
* the epoch's shuffle (``RandomState.shuffle``-equivalent draws, as the
  kernel makes them).

From these: what a perfect split of the one-thread fit over the cores
would take, and the ratio to scikit-learn's time it would give.
"""

import argparse
import os
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from cbackprop import MLPClassifier, _blas, _kernels


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _per_call(fn, n):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sklearn", action="store_true",
                    help="also time scikit-learn's fit (adds ~0.7 s a round)")
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_digits(return_X_y=True)
    n_cpu = os.cpu_count()

    def fit(**kw):
        return MLPClassifier(random_state=0, **kw).fit(X, y)

    def two_regions():
        old = _kernels._set_local_step(False)
        try:
            fit(n_threads=n_cpu)
        finally:
            _kernels._set_local_step(old)

    parts = {
        "fit, 1 thread": lambda: fit(n_threads=1),
        f"fit, {n_cpu} threads": lambda: fit(n_threads=n_cpu),
        f"fit, {n_cpu} threads, two regions a batch": two_regions,
        "fit, max_iter=1, 1 thread": lambda: fit(n_threads=1, max_iter=1),
    }
    if args.sklearn:
        from sklearn.neural_network import MLPClassifier as SkMLP
        parts["scikit-learn fit"] = lambda: SkMLP(random_state=0).fit(X, y)
    times = {k: [] for k in parts}
    n_iter = fit(n_threads=1).n_iter_
    for _ in range(args.rounds):
        for k, fn in parts.items():
            # OpenBLAS's worker threads spin for about 0.1 s after a
            # multithreaded product (scikit-learn's fit): let them go idle
            # first, as compare.py does.
            time.sleep(0.3)
            times[k].append(_timed(fn))
    med = {k: float(np.median(v)) for k, v in times.items()}

    rng = np.random.default_rng(0)
    x = rng.random((100, 64))
    w0 = rng.random((64, 100))
    a1 = rng.random((100, 100))
    w1 = rng.random((100, 10))
    d2 = rng.random((100, 10))
    d1 = rng.random((100, 100))
    w1t = np.ascontiguousarray(w1.T)
    o1, o2, o3 = np.empty((100, 100)), np.empty((100, 10)), np.empty((64, 100))
    with threadpool_limits(1):
        products = {
            "x @ W0 (100x64x100)": lambda: np.dot(x, w0, out=o1),
            "a1 @ W1 (100x100x10)": lambda: np.dot(a1, w1, out=o2),
            "d2 @ W1^T (100x10x100)": lambda: np.dot(d2, w1t, out=o1),
            "x^T @ d1 (64x100x100)": lambda: np.dot(x.T, d1, out=o3),
            "a1^T @ d2 (100x100x10)": lambda: np.dot(a1.T, d2, out=o2),
        }
        prod = {k: min(_per_call(fn, 2000) for _ in range(3))
                for k, fn in products.items()}
    # The same shapes as the fits make them (our own AVX-512 products where
    # the CPU has them, else BLAS), timed in a loop without Python.
    own_shapes = {
        "x @ W0 (100x64x100)": (x, w0, False),
        "a1 @ W1 (100x100x10)": (a1, w1, False),
        "d2 @ W1^T (100x10x100)": (d2, w1t, False),
        "x^T @ d1 (64x100x100)": (x, d1, True),
        "a1^T @ d2 (100x100x10)": (a1, d2, True),
    }
    kernel = {k: min(_blas._py_time_mm(a, b, t, 2000) for _ in range(3))
              for k, (a, b, t) in own_shapes.items()}
    kernel_path = "own AVX-512" if _blas.own_gemm_enabled() else "BLAS"

    rs = np.random.RandomState(0)
    order = np.arange(X.shape[0], dtype=np.intp)
    gen = rs._bit_generator

    def shuffle():
        with gen.lock:
            _kernels._py_legacy_shuffle(gen.capsule, order)

    t_shuffle = min(_per_call(shuffle, 500) for _ in range(3))

    print(f"load_digits {X.shape}, 64-100-10 adam batch 200, {n_iter} epochs, "
          f"{n_cpu} CPUs; medians of {args.rounds} rounds\n")
    print("| part | time |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.1f} ms |")
    one, many = med["fit, 1 thread"], med[f"fit, {n_cpu} threads"]
    fixed = med["fit, max_iter=1, 1 thread"] - (one - med["fit, max_iter=1, 1 thread"]) \
        / max(n_iter - 1, 1)
    print(f"| fixed cost of a fit (one-epoch fit less an epoch) | {fixed * 1e3:.2f} ms |")
    for k, v in prod.items():
        print(f"| numpy one-thread product {k} | {v * 1e6:.1f} us |")
    print(f"| the five numpy products of one 100-row chunk | "
          f"{sum(prod.values()) * 1e6:.1f} us |")
    for k, v in kernel.items():
        print(f"| kernel product ({kernel_path}) {k} | {v * 1e6:.1f} us |")
    print(f"| the five kernel products of one 100-row chunk | "
          f"{sum(kernel.values()) * 1e6:.1f} us |")
    print(f"| one epoch's shuffle (1,797 rows) | {t_shuffle * 1e6:.1f} us |")
    two = med[f"fit, {n_cpu} threads, two regions a batch"]
    print(f"\nspeed-up {n_cpu} threads over one: {one / many:.2f}x; two regions a batch "
          f"take {two / many:.3f}x the time of one")
    ideal = fixed + (one - fixed) / n_cpu
    line = (f"a perfect split of the one-thread fit over {n_cpu} cores: {ideal * 1e3:.1f} ms "
            f"(the fixed cost not split)")
    if args.sklearn:
        sk = med["scikit-learn fit"]
        line += (f"; scikit-learn {sk:.3f} s: {sk / many:.2f}x now, {sk / ideal:.2f}x with "
                 f"that split")
    print(line)


if __name__ == "__main__":
    main()
