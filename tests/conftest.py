import os

import numpy as np
import pytest
from hypothesis import settings

# Deterministic, bounded property tests for CI.
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                         "mnist10k")


@pytest.fixture
def rng():
    return np.random.RandomState(0)


@pytest.fixture(params=["blas", "own"])
def products(request):
    """Run a test with BLAS for every product, then with cbackprop's own
    AVX-512 products (skipped where the CPU has none); yields which."""
    from cbackprop import _blas

    own = request.param == "own"
    if own and not _blas.own_gemm_ready():
        pytest.skip("no AVX-512 on this CPU: products always run on BLAS")
    before = _blas._set_own_gemm(own)
    yield request.param
    _blas._set_own_gemm(before)
