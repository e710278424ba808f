"""What the toolbox costs: fit time of dropout, maxout, L1 and gradient
clipping relative to a plain relu fit, same network, same data, same run.

Usage::

    python benches/toolbox_cost.py [--repeats 3] [--quick]

MNIST (``../shared/data/mnist10k``, 8,000 samples; 2,000 in online mode),
784-100-10, ``solver='sgd'``, one epoch per fit, batch sizes 1, 32 and 200,
float32 and float64.  Prints a markdown table of median microseconds per
sample and the ratio to relu in the same column.  maxout uses 2 pieces, so
its first layer does twice the arithmetic of relu's.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare_sklearn import _cpu_name  # noqa: E402
from mnist import load_mnist10k  # noqa: E402

from cbackprop import MLPClassifier  # noqa: E402
from cbackprop._cli import _median_fit_time  # noqa: E402

VARIANTS = [
    ("relu", {}),
    ("dropout=0.5", {"dropout": 0.5}),
    ("maxout (2 pieces)", {"activation": "maxout"}),
    ("l1=1e-4", {"l1": 1e-4}),
    ("max_grad_norm=1", {"max_grad_norm": 1.0}),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    args = ap.parse_args(argv)
    X, y = load_mnist10k()
    n = 1000 if args.quick else 8000
    print(f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; "
          f"median of {args.repeats} one-epoch fits, us/sample (ratio to relu)\n")
    columns = [(b, dt) for b in (1, 32, 200) for dt in (np.float64, np.float32)]
    header = " | ".join(f"batch {b} {np.dtype(dt).name}" for b, dt in columns)
    print(f"| variant | {header} |")
    print("|---" * (len(columns) + 1) + "|")
    # One throw-away fit loads BLAS and warms the caches.
    _median_fit_time(lambda: MLPClassifier(hidden_layer_sizes=(100,), max_iter=1),
                     X[:500], y[:500], 1)
    base = {}
    for name, extra in VARIANTS:
        cells = []
        for batch_size, dtype in columns:
            m = n // 4 if batch_size == 1 else n
            Xc = np.ascontiguousarray(X[:m], dtype=dtype)
            params = dict(hidden_layer_sizes=(100,), solver="sgd", max_iter=1,
                          batch_size=batch_size, random_state=0, n_threads=1,
                          learning_rate_init=0.01, **extra)
            t, _ = _median_fit_time(lambda p=params: MLPClassifier(**p), Xc, y[:m],
                                    args.repeats)
            us = t / m * 1e6
            key = (batch_size, dtype)
            base.setdefault(key, us)
            cells.append(f"{us:.2f} ({us / base[key]:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
