"""A pure-NumPy reference implementation of the network: the test oracle.

It is written independently of the kernels on purpose: derivatives are taken
from the pre-activations ``z`` (the kernels use the activations), the losses
use log-softmax / log-sigmoid of ``z`` (the kernels clip probabilities), and
everything is plain array code that is easy to read against the textbook.
Where probabilities are clipped in the kernels (below machine epsilon) the two
differ; the tests keep away from that region.
"""

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax

LEAKY_SLOPE = 0.01


def hidden_activation(name, z, slope=LEAKY_SLOPE):
    """f(z) for a hidden activation."""
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    if name == "lecun_tanh":
        return 1.7159 * np.tanh(2.0 * z / 3.0)
    if name == "softplus":
        return np.logaddexp(0.0, z)
    if name == "identity":
        return z.copy()
    if name == "logistic":
        return expit(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    raise ValueError(f"unknown activation {name!r}")


def hidden_derivative(name, z, slope=LEAKY_SLOPE):
    """f'(z) for a hidden activation."""
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, slope)
    if name == "elu":
        return np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))
    if name == "lecun_tanh":
        return 1.7159 * (2.0 / 3.0) * (1 - np.tanh(2.0 * z / 3.0) ** 2)
    if name == "softplus":
        return expit(z)
    if name == "identity":
        return np.ones_like(z)
    if name == "logistic":
        s = expit(z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(z.dtype)
    raise ValueError(f"unknown activation {name!r}")


def output_activation(name, z):
    """Output layer transform."""
    if name == "identity":
        return z.copy()
    if name == "logistic":
        return expit(z)
    if name == "softmax":
        return softmax(z, axis=1)
    if name == "exp":
        return np.exp(z)
    raise ValueError(f"unknown output activation {name!r}")


def per_sample_loss(loss, out_activation, z, Y):
    """Loss of each sample from the output pre-activations ``z``."""
    if loss == "squared_error":
        p = output_activation(out_activation, z)
        return 0.5 * np.sum((Y - p) ** 2, axis=1)
    if loss == "log_loss" and out_activation == "softmax":
        return -np.sum(Y * log_softmax(z, axis=1), axis=1)
    if loss == "log_loss" and out_activation == "logistic":
        return -np.sum(Y * log_expit(z) + (1 - Y) * log_expit(-z), axis=1)
    if loss == "poisson":
        # exp output: y log(y / mu) - y + mu with log mu = z
        logy = np.log(np.where(Y > 0, Y, 1))
        return np.sum(np.where(Y > 0, Y * (logy - z), 0) - Y + np.exp(z), axis=1)
    raise ValueError(f"unknown loss {loss!r} with output {out_activation!r}")


def forward(coefs, intercepts, X, activation, out_activation, slope=LEAKY_SLOPE):
    """Pre-activations and activations of every layer (input first)."""
    a = [np.asarray(X, dtype=np.float64)]
    zs = []
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        z = a[-1] @ W + b
        zs.append(z)
        if i < len(coefs) - 1:
            a.append(hidden_activation(activation, z, slope))
        else:
            a.append(output_activation(out_activation, z))
    return zs, a


def loss_and_gradients(coefs, intercepts, X, Y, activation, out_activation, loss,
                       alpha=0.0, sample_weight=None, slope=LEAKY_SLOPE):
    """Full-batch objective and gradient, as the solvers define them.

    Returns ``(loss, coef_grads, intercept_grads)`` where the objective is
    ``sum_i w_i l_i / sum_i w_i + 0.5 * alpha * sum ||W||^2 / sum_i w_i``.
    """
    coefs = [np.asarray(c, dtype=np.float64) for c in coefs]
    intercepts = [np.asarray(b, dtype=np.float64) for b in intercepts]
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(
        sample_weight, dtype=np.float64)
    sw_sum = w.sum()
    zs, a = forward(coefs, intercepts, X, activation, out_activation, slope)
    data = np.sum(w * per_sample_loss(loss, out_activation, zs[-1], Y)) / sw_sum
    l2 = 0.5 * alpha * sum(np.sum(c * c) for c in coefs) / sw_sum

    # Canonical link: dloss/dz = prediction - target, for every pair we support.
    delta = (a[-1] - Y) * w[:, None] / sw_sum
    coef_grads = [None] * len(coefs)
    intercept_grads = [None] * len(coefs)
    for i in range(len(coefs) - 1, -1, -1):
        coef_grads[i] = a[i].T @ delta + alpha * coefs[i] / sw_sum
        intercept_grads[i] = delta.sum(axis=0)
        if i > 0:
            delta = (delta @ coefs[i].T) * hidden_derivative(activation, zs[i - 1],
                                                             slope)
    return data + l2, coef_grads, intercept_grads


def predict_output(coefs, intercepts, X, activation, out_activation):
    """Output-layer activations of the network."""
    _, a = forward(coefs, intercepts, X, activation, out_activation)
    return a[-1]
