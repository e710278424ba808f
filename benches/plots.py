"""Figures for the README: a LossCurveDisplay of a fit on MNIST.

Usage::

    python benches/plots.py [--out benches/loss_curve.png]
"""

import argparse
import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mnist import load_mnist10k  # noqa: E402

from cbackprop import LossCurveDisplay, MLPClassifier  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                  "loss_curve.png"))
    args = ap.parse_args(argv)
    X, y = load_mnist10k()
    est = MLPClassifier(hidden_layer_sizes=(100,), early_stopping=True,
                        n_iter_no_change=5, max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X[:8000], y[:8000])
    disp = LossCurveDisplay.from_estimator(est)
    disp.ax_.set_title("MLPClassifier on MNIST (8,000 digits), adam, early stopping")
    disp.figure_.set_size_inches(6.5, 4)
    disp.figure_.tight_layout()
    disp.figure_.savefig(args.out, dpi=110)
    print(f"{est.n_iter_} epochs, best validation accuracy "
          f"{est.best_validation_score_:.4f}; figure written to {args.out}")


if __name__ == "__main__":
    main()
