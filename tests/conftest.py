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
