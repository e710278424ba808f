"""Peak resident memory of a fit on a large C-contiguous float32 X.

Usage::

    python benches/memory.py [--gib 1.0]

Builds X (dense, ``--gib`` GiB; no zeros unless ``--density`` is below 1,
which keeps that share of entries and makes X zero-heavy, so the fit takes
the CSR-copy path), records the peak RSS before the fit and after it
(``ru_maxrss``), and prints the increase as a share of X's size.
``--batch-size full`` trains on one batch of every row.  Run it in a fresh
process: the peak is per process.
"""

import argparse
import resource
import sys
import time
import warnings

import numpy as np


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak():
    """Start a fresh high-water mark (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes():
    try:
        return _status("VmRSS")
    except (OSError, KeyError):
        return peak_rss_bytes()


def peak_rss_bytes():
    try:
        return _status("VmHWM")
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--batch-size", default="auto", help="an int, auto or full")
    ap.add_argument("--density", type=float, default=1.0)
    args = ap.parse_args(argv)
    from sklearn.exceptions import ConvergenceWarning

    from cbackprop import MLPClassifier

    n_features = 512
    n = int(args.gib * 2**30 / (4 * n_features))
    rng = np.random.default_rng(0)
    X = np.empty((n, n_features), dtype=np.float32)
    for start in range(0, n, 65536):  # filled in pieces: no float64 temporary
        block = rng.random((min(65536, n - start), n_features), dtype=np.float32)
        if args.density < 1:
            block[block >= args.density] = 0
        X[start:start + 65536] = block
    y = (X[:, 0] > 0.5 * min(args.density, 1.0)).astype(np.int64)
    fresh = reset_peak()
    before = current_rss_bytes() if fresh else peak_rss_bytes()
    batch = {"auto": "auto", "full": n}.get(args.batch_size) or int(args.batch_size)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=1, batch_size=batch,
                      random_state=0).fit(X, y)
    elapsed = time.perf_counter() - t0
    after = peak_rss_bytes()
    rise = after - before
    print(f"X: {X.nbytes / 2**30:.2f} GiB float32 ({n} x {n_features}, density "
          f"{args.density:g}), batch {batch}; one epoch "
          f"in {elapsed:.1f} s; RSS before the fit {before / 2**30:.3f} GiB, peak "
          f"during it {after / 2**30:.3f} GiB: +{rise / 2**20:.0f} MiB = "
          f"{100 * rise / X.nbytes:.1f}% of X"
          + ("" if fresh else " (peak not resettable here: upper bound)"))


if __name__ == "__main__":
    main()
