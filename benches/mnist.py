"""Loader for the MNIST IDX files in ../shared/data/mnist10k (no download)."""

import gzip
import os

import numpy as np

DEFAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                           "shared", "data", "mnist10k")


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist10k(directory=None, dtype=np.float64):
    """The 10,000 MNIST test digits as (X scaled to [0, 1], y) arrays."""
    directory = directory or os.environ.get("CBACKPROP_MNIST_DIR", DEFAULT_DIR)
    X = _read_idx(os.path.join(directory, "t10k-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"))
    return (X.reshape(X.shape[0], -1) / 255.0).astype(dtype), y.astype(np.int64)
