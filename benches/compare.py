"""cbackprop against scikit-learn and PyTorch (CPU), in the same run.

Usage::

    python benches/compare.py [--repeats 3] [--quick] [--plot throughput.png]

Runs the scenarios of the Speed issue and prints a markdown table of medians
and ratios.  PyTorch is optional (a benchmark-only dependency): without it
its column reads "n/a".  Every timing is the median of ``--repeats`` runs of
the whole fit, the libraries taking turns within each round; per-sample
figures divide by the samples processed.

The "GFLOP/s" figures count the dense multiply-adds of the network (2 flops
each): forward ``n * sum(fan_in * fan_out)``, weight gradients the same again,
and the deltas of every layer but the first; cbackprop skips zero inputs, so
on MNIST its effective rate can exceed what the dense work would allow.
"""

import argparse
import os
import platform
import sys
import threading
import time
import warnings

import numpy as np
import sklearn
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkClassifier
from sklearn.neural_network import MLPRegressor as SkRegressor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mnist import load_mnist10k  # noqa: E402

import cbackprop  # noqa: E402
from cbackprop import MLPClassifier, MLPRegressor, _blas  # noqa: E402

try:
    import torch
except ImportError:  # benchmark-only dependency
    torch = None


def median_time(fn, repeats):
    return median_times([fn], repeats)[0]


def median_times(fns, repeats):
    """Median wall time of each of ``fns`` over ``repeats`` rounds.

    The functions take turns within every round (A B C, A B C, ...), so a
    burst of load on a shared machine slows all of them alike instead of
    whichever happened to run during it: the ratios stay comparable.
    ``None`` entries are skipped (their median is ``None``).
    """
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            if fn is None:
                continue
            # Worker threads of the previous library (OpenBLAS, PyTorch's
            # OpenMP pool) spin for a while after their work; on a small
            # machine they would steal a core from whatever runs next.
            # Let them go idle first.
            time.sleep(0.3)
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) if ts else None for ts in times]


def fit_quiet(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def dense_flops(n, units):
    macs = sum(a * b for a, b in zip(units[:-1], units[1:]))
    macs_delta = sum(a * b for a, b in zip(units[1:-1], units[2:]))
    return 2.0 * n * (2 * macs + macs_delta)


def matmul_runner(dtype, threads=None, size=1024, times=1):
    """A function that multiplies two ``size``-square matrices ``times``
    times with numpy's BLAS on ``threads`` threads (None: its default)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.random((size, size)).astype(dtype)
    b = rng.random((size, size)).astype(dtype)

    def run():
        with threadpool_limits(limits=threads, user_api="blas"):
            for _ in range(times):
                a @ b
    return run


def matmul_peak(dtype, threads=None, size=1024, repeats=20):
    """Float matrix-multiply rate of numpy's BLAS (GFLOP/s) over ``repeats``
    products: ``(best, median)``.  The best is the peak the targets are
    measured against (the most the machine gave); the median of a few ~15
    ms products fell to a third of it when a busy spell of the shared host
    hit them, which inflated every "% of peak" of that run."""
    run = matmul_runner(dtype, threads, size)
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 2.0 * size**3 / min(times) / 1e9, 2.0 * size**3 / np.median(times) / 1e9


# ---------------------------------------------------------------------------
# PyTorch equivalents: same architecture, loss, optimiser and batch order.
# ---------------------------------------------------------------------------

def torch_fit(X, y, hidden, *, solver, batch_size, epochs, lr, classify=True,
              threads=None, alpha=1e-4, seed=0):
    if not threads:
        return _torch_fit(X, y, hidden, solver=solver, batch_size=batch_size,
                          epochs=epochs, lr=lr, classify=classify, alpha=alpha, seed=seed)
    # torch.set_num_threads also sets the process's OpenMP thread limit, which
    # cbackprop's n_threads=None follows: put it back, or every later
    # scenario would run both libraries on `threads` threads.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _torch_fit(X, y, hidden, solver=solver, batch_size=batch_size,
                          epochs=epochs, lr=lr, classify=classify, alpha=alpha, seed=seed)
    finally:
        torch.set_num_threads(before)


def _torch_fit(X, y, hidden, *, solver, batch_size, epochs, lr, classify, alpha, seed):
    torch.manual_seed(seed)
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    dtype = Xt.dtype
    n_out = int(y.max()) + 1 if classify else 1
    layers, fan_in = [], X.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(fan_in, h), torch.nn.ReLU()]
        fan_in = h
    layers.append(torch.nn.Linear(fan_in, n_out))
    model = torch.nn.Sequential(*layers).to(dtype)
    if classify:
        yt = torch.from_numpy(y.astype(np.int64))
        loss_fn = torch.nn.CrossEntropyLoss()
    else:
        yt = torch.from_numpy(y.astype(X.dtype).reshape(-1, 1))
        loss_fn = torch.nn.MSELoss()
    if solver == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=alpha)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=alpha)
    n = X.shape[0]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

class Table:
    def __init__(self):
        self.rows = []

    def add(self, scenario, unit, sk, pt, cb, target):
        self.rows.append((scenario, unit, sk, pt, cb, target))
        def fmt(v):
            return "n/a" if v is None else f"{v:.3g}"

        # Two decimals: a ratio of 1.77 must not read as a met 1.8 target.
        r_sk = f"{sk / cb:.2f}x" if sk else "n/a"
        r_pt = f"{pt / cb:.2f}x" if pt else "n/a"
        print(f"| {scenario} | {unit} | {fmt(sk)} | {fmt(pt)} | {fmt(cb)} | "
              f"{r_sk} | {r_pt} | {target} |", flush=True)


def scenario_mnist(table, args, X, y, *, batch_size, dtype, epochs, hidden=(100,),
                   solver="sgd", lr=0.1, label=None, n_sk=None, n_pt=None,
                   torch_dtype=None, threads=None, cb_threads=None, measure="us"):
    Xd = X.astype(dtype)
    units = [X.shape[1], *hidden, 10]
    params = dict(hidden_layer_sizes=hidden, solver=solver, batch_size=batch_size,
                  learning_rate_init=lr, max_iter=epochs, tol=0.0,
                  n_iter_no_change=10**9, random_state=0)

    def per(t, n):
        if measure == "gflops":
            return dense_flops(n * epochs, units) / t / 1e9
        return 1e6 * t / (n * epochs)

    n_sk = n_sk or X.shape[0]
    n_pt = n_pt or X.shape[0]
    Xp = X.astype(torch_dtype or dtype)[:n_pt]

    def fit_sk():
        fit_quiet(SkClassifier(**params), Xd[:n_sk], y[:n_sk])

    def fit_cb():
        fit_quiet(MLPClassifier(n_threads=cb_threads, **params), Xd, y)

    def fit_pt():
        torch_fit(Xp, y[:n_pt], hidden, solver=solver, batch_size=batch_size,
                  epochs=epochs, lr=lr, threads=threads)

    t_sk, t_cb, t_pt = median_times(
        [fit_sk if n_sk > 0 else None, fit_cb, fit_pt if torch is not None else None],
        args.repeats)
    unit = "GFLOP/s" if measure == "gflops" else "us/sample"
    vals = [per(t_sk, n_sk) if t_sk else None,
            per(t_pt, n_pt) if t_pt else None,
            per(t_cb, X.shape[0])]
    if measure == "gflops":
        # Higher is better: report ratios of cbackprop over the others.
        vals = [1 / v if v else None for v in vals]
    return label, unit, vals


def blas_kernels():
    """The BLAS libraries loaded and the kernels they picked (OpenBLAS picks
    by CPU model, or by OPENBLAS_CORETYPE where that is set)."""
    from threadpoolctl import threadpool_info
    libs = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return ", ".join(libs) + (f", OPENBLAS_CORETYPE={forced}" if forced else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller problems")
    ap.add_argument("--plot", default=None, help="PNG of throughput vs batch size")
    args = ap.parse_args(argv)
    q = args.quick

    print(f"# cbackprop {cbackprop.__version__}, scikit-learn {sklearn.__version__}, "
          f"PyTorch {torch.__version__ if torch is not None else 'not installed'}")
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}; medians of {args.repeats} runs")
    print(f"BLAS: {blas_kernels()}; cbackprop's own AVX-512 products: "
          f"{'on' if _blas.own_gemm_enabled() else 'off'}\n")
    peak32, med32 = matmul_peak(np.float32)
    peak32_1, med32_1 = matmul_peak(np.float32, threads=1)
    peak64, med64 = matmul_peak(np.float64)
    print(f"numpy matmul peak (1024^2, best of 20 [median]): float32 {peak32:.0f} "
          f"[{med32:.0f}] GFLOP/s ({peak32_1:.0f} [{med32_1:.0f}] on 1 thread), "
          f"float64 {peak64:.0f} [{med64:.0f}] GFLOP/s\n")
    print("| scenario | unit | scikit-learn | PyTorch | cbackprop | vs sklearn | "
          "vs PyTorch | target |")
    print("|---|---|---|---|---|---|---|---|")
    table = Table()

    X, y = load_mnist10k()
    X, y = X[:8000], y[:8000]

    # 1. online sgd, batch 1 (sklearn and torch on a subset: per-sample cost)
    label, unit, (sk, pt, cb) = scenario_mnist(
        table, args, X, y, batch_size=1, dtype=np.float64, epochs=1, lr=0.01,
        n_sk=1000 if q else 2000, n_pt=1000 if q else 2000, torch_dtype=np.float32)
    table.add("online sgd, batch 1, float64 (PyTorch float32)", unit, sk, pt, cb,
              ">= 25x both")

    # 2. tiny regression net 4-500-1, online
    n_reg = 20000 if q else 100000
    Xr, yr = make_regression(n_samples=n_reg, n_features=4, noise=1.0, random_state=0)
    yr = (yr - yr.mean()) / yr.std()
    rp = dict(hidden_layer_sizes=(500,), solver="sgd", batch_size=1,
              learning_rate_init=1e-3, max_iter=1, tol=0.0, random_state=0)
    n_sub = 2000
    def fit_pt_reg():
        torch_fit(Xr[:n_sub].astype(np.float32), yr[:n_sub], (500,), solver="sgd",
                  batch_size=1, epochs=1, lr=1e-3, classify=False)

    t_sk, t_cb, t_pt = median_times(
        [lambda: fit_quiet(SkRegressor(**rp), Xr[:n_sub], yr[:n_sub]),
         lambda: fit_quiet(MLPRegressor(**rp), Xr, yr),
         fit_pt_reg if torch is not None else None], args.repeats)
    table.add(f"online, regression 4-500-1 ({n_reg} samples)", "us/sample",
              1e6 * t_sk / n_sub, 1e6 * t_pt / n_sub if t_pt else None,
              1e6 * t_cb / n_reg, ">= 100x both")

    # 3./4. mini-batch sgd, float32
    curve = {}
    for bs, target in ((32, ">= 3x both"), (200, ">= 2.5x both")):
        label, unit, (sk, pt, cb) = scenario_mnist(
            table, args, X, y, batch_size=bs, dtype=np.float32, epochs=1 if q else 3)
        table.add(f"sgd, batch {bs}, float32", unit, sk, pt, cb, target)
        curve[bs] = (sk, pt, cb)
    for bs in (8, 64, 512, 2000):
        _, _, vals = scenario_mnist(table, args, X, y, batch_size=bs,
                                    dtype=np.float32, epochs=1 if q else 2)
        curve[bs] = tuple(vals)

    # 5. adam 784-512-256-10, batch 200, float32 (2 threads and 1 thread)
    big = (512, 256)
    label, unit, (sk, pt, cb) = scenario_mnist(
        table, args, X, y, batch_size=200, dtype=np.float32, epochs=1 if q else 2,
        hidden=big, solver="adam", lr=1e-3, n_sk=2000 if q else 4000)
    table.add("adam, batch 200, 784-512-256-10, float32", unit, sk, pt, cb,
              ">= 1.8x PyTorch")
    units = [784, 512, 256, 10]
    cb_rate = dense_flops(1, units) / (cb * 1e-6) / 1e9
    print(f"|   ... cbackprop dense-equivalent rate | GFLOP/s | | | {cb_rate:.0f} | "
          f"{100 * cb_rate / peak32:.0f}% of float32 peak | | >= 65% of peak |")
    # Thread scaling: every variant takes its turn within each round (1 and
    # all threads of cbackprop, of PyTorch, and numpy's float32 matmul as
    # the machine's own ceiling at that moment), so that a burst of load
    # from the VM's neighbours falls on both sides of each ratio.  Fits of
    # 5 epochs: training's scaling, of which a fit's fixed costs
    # (validation, initialisation: ~20 ms that threads barely shorten) take
    # a tenth in the 2-epoch fits of the row above.
    Xs = X.astype(np.float32)
    sparams = dict(hidden_layer_sizes=big, solver="adam", batch_size=200,
                   learning_rate_init=1e-3, max_iter=2 if q else 5, tol=0.0,
                   n_iter_no_change=10**9, random_state=0)

    def cb_fit(threads):
        return lambda: fit_quiet(MLPClassifier(n_threads=threads, **sparams), Xs, y)

    def pt_fit(threads):
        return lambda: torch_fit(Xs, y, big, solver="adam", batch_size=200,
                                 epochs=sparams["max_iter"], lr=1e-3, threads=threads)

    def cb_side_by_side(k):
        # k one-thread fits at once, one per Python thread (the kernels
        # release the GIL): what the machine gives k independent copies of
        # this very work, the ceiling of any split of one fit.
        def run():
            models = [MLPClassifier(n_threads=1, **sparams) for _ in range(k)]
            threads = [threading.Thread(target=m.fit, args=(Xs, y)) for m in models]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        return run

    n_cpu = os.cpu_count()
    have_pt = torch is not None
    cb1, cbn, pt1, ptn, mm1, mmn, cbk = median_times(
        [cb_fit(1), cb_fit(n_cpu), pt_fit(1) if have_pt else None,
         pt_fit(n_cpu) if have_pt else None,
         matmul_runner(np.float32, 1, times=5), matmul_runner(np.float32, n_cpu, times=5),
         cb_side_by_side(n_cpu)],
        args.repeats)
    pt_scaling = f"{pt1 / ptn:.2f}x" if have_pt else "n/a"
    print(f"| thread scaling 1 -> {n_cpu} threads, adam case, "
          f"{sparams['max_iter']}-epoch fits | speed-up | "
          f"| {pt_scaling} | {cb1 / cbn:.2f}x | | | >= 1.8x (same rounds: numpy "
          f"float32 matmul {mm1 / mmn:.2f}x; {n_cpu} one-thread fits side by side "
          f"{n_cpu * cb1 / cbk:.2f}x the throughput of one) |")

    # 6. full batch, float32
    label, unit, (sk, pt, cb) = scenario_mnist(
        table, args, X, y, batch_size=8000, dtype=np.float32, epochs=2 if q else 5,
        measure="gflops")
    print(f"| full batch (8,000), float32, dense-equivalent | GFLOP/s | "
          f"{1 / sk:.0f} | {1 / pt if pt else float('nan'):.0f} | {1 / cb:.0f} | "
          f"{sk and (sk / cb):.2f}x | {pt and (pt / cb):.2f}x | >= 70% of peak "
          f"({0.7 * peak32:.0f}) |")

    # 7. scikit-learn defaults on load_digits
    Xg, yg = load_digits(return_X_y=True)
    t_sk, t_cb = median_times(
        [lambda: fit_quiet(SkClassifier(random_state=0), Xg, yg),
         lambda: fit_quiet(MLPClassifier(random_state=0), Xg, yg)], args.repeats)
    table.add("scikit-learn defaults on load_digits (same result)", "s", t_sk, None,
              t_cb, ">= 8x")

    if args.plot:
        plot(curve, args.plot)


def plot(curve, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    sizes = sorted(curve)
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, name in enumerate(("scikit-learn", "PyTorch", "cbackprop")):
        pts = [(b, 1e6 / curve[b][k]) for b in sizes if curve[b][k]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training throughput (samples / s)")
    ax.set_title("MNIST 784-100-10, sgd, float32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
