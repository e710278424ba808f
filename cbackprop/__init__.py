"""cbackprop: fast, exact CPU backpropagation behind scikit-learn's MLP API.

``MLPClassifier`` and ``MLPRegressor`` are drop-in replacements for
scikit-learn's, trained by typed ``nogil`` Cython kernels.
``loss_and_gradients`` and ``check_gradients`` expose the exact gradient the
solvers use, for inspection and finite-difference checks.
"""

from cbackprop._config import show_config
from cbackprop._display import LossCurveDisplay
from cbackprop._gradcheck import check_gradients, loss_and_gradients
from cbackprop._mlp import MLPClassifier, MLPRegressor

__version__ = "0.1.0"

__all__ = [
    "LossCurveDisplay",
    "MLPClassifier",
    "MLPRegressor",
    "check_gradients",
    "loss_and_gradients",
    "show_config",
    "__version__",
]
