"""asv benchmarks: time and peak memory of fit over dtype x batch size x
threads x depth, on synthetic data shaped like MNIST (784 features, 10 classes,
about 19% non-zero pixels) so that the suite needs no files.

Run from ``benches/``:  ``asv run --python=same --quick`` (current install) or
``asv continuous main HEAD`` (compare commits).
"""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from cbackprop import MLPClassifier


def _mnist_like(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 784), dtype=np.float64)
    X[X < 0.81] = 0.0
    y = (X[:, ::80].sum(axis=1) * 3).astype(int) % 10
    return X.astype(dtype), y


def _fit(X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(random_state=0, tol=0.0, n_iter_no_change=10**9,
                             **params).fit(X, y)


class FitMiniBatch:
    """One epoch of mini-batch training."""

    params = (["float32", "float64"], [1, 32, 200, 2000], [1, 2],
              [(100,), (512, 256)])
    param_names = ["dtype", "batch_size", "n_threads", "hidden"]
    timeout = 300

    def setup(self, dtype, batch_size, n_threads, hidden):
        n = 2000 if batch_size == 1 else 8000
        self.X, self.y = _mnist_like(n, np.dtype(dtype))

    def time_fit(self, dtype, batch_size, n_threads, hidden):
        _fit(self.X, self.y, hidden_layer_sizes=hidden, solver="sgd",
             batch_size=batch_size, max_iter=1, n_threads=n_threads,
             learning_rate_init=0.01)

    def peakmem_fit(self, dtype, batch_size, n_threads, hidden):
        _fit(self.X, self.y, hidden_layer_sizes=hidden, solver="sgd",
             batch_size=batch_size, max_iter=1, n_threads=n_threads,
             learning_rate_init=0.01)


class FitDense:
    """One epoch of adam on dense inputs (no zeros: the first layer runs on
    BLAS), one hidden layer: 512 units train unit-split, 100 in row
    chunks."""

    params = (["float32", "float64"], [1, 2], [(100,), (512,)])
    param_names = ["dtype", "n_threads", "hidden"]
    timeout = 300

    def setup(self, dtype, n_threads, hidden):
        X, self.y = _mnist_like(8000, np.dtype(dtype))
        self.X = X + X.dtype.type(0.01)

    def time_fit(self, dtype, n_threads, hidden):
        _fit(self.X, self.y, hidden_layer_sizes=hidden, solver="adam",
             batch_size=200, max_iter=1, n_threads=n_threads)

    def peakmem_fit(self, dtype, n_threads, hidden):
        _fit(self.X, self.y, hidden_layer_sizes=hidden, solver="adam",
             batch_size=200, max_iter=1, n_threads=n_threads)


class FitLbfgs:
    """Full-batch loss and gradient evaluations through L-BFGS."""

    params = (["float32", "float64"], [1, 2])
    param_names = ["dtype", "n_threads"]

    def setup(self, dtype, n_threads):
        self.X, self.y = _mnist_like(4000, np.dtype(dtype))

    def time_fit(self, dtype, n_threads):
        _fit(self.X, self.y, hidden_layer_sizes=(100,), solver="lbfgs", max_iter=10,
             n_threads=n_threads)


class Predict:
    params = ([1, 2],)
    param_names = ["n_threads"]

    def setup(self, n_threads):
        X, y = _mnist_like(4000, np.float32)
        self.model = _fit(X, y, hidden_layer_sizes=(256,), max_iter=1,
                          n_threads=n_threads)
        self.X = np.concatenate([X] * 5)

    def time_predict_proba(self, n_threads):
        self.model.predict_proba(self.X)
