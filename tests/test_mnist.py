"""End to end on real data: the MNIST test set shipped in ../shared."""

import os
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SkMLP

from cbackprop import MLPClassifier

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benches"))
from mnist import DEFAULT_DIR, load_mnist10k  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(DEFAULT_DIR, "t10k-images-idx3-ubyte.gz")),
    reason="MNIST files not found next to the checkout",
)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist10k()


def test_loader(mnist):
    X, y = mnist
    assert X.shape == (10000, 784) and y.shape == (10000,)
    assert X.min() == 0 and X.max() == 1 and set(np.unique(y)) == set(range(10))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_learns_mnist(mnist, dtype):
    X, y = mnist
    X = X.astype(dtype)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X[:4000], y[:4000])
    assert clf.score(X[8000:], y[8000:]) > 0.9


def test_same_trajectory_as_sklearn_on_mnist(mnist):
    X, y = mnist
    params = dict(hidden_layer_sizes=(32,), solver="sgd", batch_size=32, max_iter=3,
                  learning_rate_init=0.05, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**params).fit(X[:2000], y[:2000])
        theirs = SkMLP(**params).fit(X[:2000], y[:2000])
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-8)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8 * np.abs(b).max())
