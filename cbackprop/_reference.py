"""A pure-NumPy reference implementation of the network: the test oracle.

It is written independently of the kernels on purpose: derivatives are taken
from the pre-activations ``z`` (the kernels use the activations), the losses
use log-softmax / log-sigmoid of ``z`` (the kernels clip probabilities), and
everything is plain array code that is easy to read against the textbook.
Where probabilities are clipped in the kernels (below machine epsilon) the two
differ; the tests keep away from that region.  Output errors of the
non-canonical pairs (squared error on logistic / softmax outputs) are taken
through the written-out Jacobian of the output activation, maxout routes by
an explicit argmax, and dropout masks come from a vectorised twin of the
kernels' counter-based generator (``src/cbp_rng.h``).
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


def per_sample_loss(loss, out_activation, z, Y, huber_delta=1.0):
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
    if loss == "absolute_error":
        return np.sum(np.abs(z - Y), axis=1)
    if loss == "huber":
        r = np.abs(z - Y)
        return np.sum(np.where(r <= huber_delta, 0.5 * r * r,
                               huber_delta * (r - 0.5 * huber_delta)), axis=1)
    if loss == "hinge":
        t = 2 * Y - 1
        return np.sum(np.maximum(0, 1 - t * z), axis=1)
    if loss == "multiclass_hinge":
        true = np.sum(z * Y, axis=1, keepdims=True)
        margins = np.maximum(0, z - true + 1) * (1 - Y)
        return margins.sum(axis=1)
    raise ValueError(f"unknown loss {loss!r} with output {out_activation!r}")


def output_error(loss, out_activation, z, Y, huber_delta=1.0):
    """dloss/dz of every sample (unweighted)."""
    p = output_activation(out_activation, z)
    if loss == "squared_error" and out_activation == "logistic":
        return (p - Y) * p * (1 - p)
    if loss == "squared_error" and out_activation == "softmax":
        # J = diag(p) - p p^T is symmetric: dloss/dz = J (p - y).
        J = np.einsum("ij,jk->ijk", p, np.eye(p.shape[1])) - p[:, :, None] * p[:, None]
        return np.einsum("ijk,ik->ij", J, p - Y)
    if loss == "absolute_error":
        return np.sign(z - Y)
    if loss == "huber":
        return np.clip(z - Y, -huber_delta, huber_delta)
    if loss == "hinge":
        t = 2 * Y - 1
        return np.where(t * z < 1, -t, 0.0)
    if loss == "multiclass_hinge":
        true = np.sum(z * Y, axis=1, keepdims=True)
        active = ((z - true + 1 > 0) & (Y == 0)).astype(float)
        return active - Y * active.sum(axis=1, keepdims=True)
    # Canonical pairs (squared error / identity, log-loss / softmax or
    # logistic, Poisson / exp): prediction minus target.
    return p - Y


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(z):
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_uniform(seed, a, b, c):
    """The kernels' counter-based uniform draw, broadcast over a, b, c."""
    a, b, c = (np.asarray(v, dtype=np.uint64) for v in (a, b, c))
    h = _mix64(np.full(np.broadcast(a, b, c).shape, seed, dtype=np.uint64))
    h = _mix64(h ^ a)
    h = _mix64(h ^ b)
    bits = _mix64(h ^ c)
    return (bits >> np.uint64(11)).astype(np.float64) / 9007199254740992.0


def dropout_scale(rate, seed, step0, n_rows, layer, n_units):
    """Inverted-dropout factors (0 or 1 / (1 - rate)) of one hidden layer
    for rows at epoch positions 0 .. n_rows - 1."""
    rows = (step0 + np.arange(n_rows, dtype=np.uint64))[:, None]
    units = np.arange(n_units, dtype=np.uint64)[None, :]
    keep = rng_uniform(seed, rows, np.uint64(layer), units) >= rate
    return np.where(keep, 1.0 / (1.0 - rate), 0.0)


def _activations(activation, n_hidden):
    if isinstance(activation, str):
        return [activation] * n_hidden
    return list(activation)


def forward(coefs, intercepts, X, activation, out_activation, slope=LEAKY_SLOPE,
            dropout=None):
    """Pre-activations, activations (input first) and dropout factors.

    ``dropout`` is ``(rate, seed, step0)`` or None.  A maxout layer's
    activation is the maximum of each unit's ``pieces`` consecutive columns.
    """
    names = _activations(activation, len(coefs) - 1)
    a = [np.asarray(X, dtype=np.float64)]
    zs, scales = [], []
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        z = a[-1] @ W + b
        zs.append(z)
        if i == len(coefs) - 1:
            a.append(output_activation(out_activation, z))
            break
        if names[i] == "maxout":
            units = coefs[i + 1].shape[0]
            h = z.reshape(z.shape[0], units, -1).max(axis=2)
        else:
            h = hidden_activation(names[i], z, slope)
        if dropout is not None and dropout[0] > 0:
            scale = dropout_scale(dropout[0], dropout[1], dropout[2], z.shape[0], i + 1,
                                  h.shape[1])
            h = h * scale
        else:
            scale = None
        scales.append(scale)
        a.append(h)
    return zs, a, scales


def loss_and_gradients(coefs, intercepts, X, Y, activation, out_activation, loss,
                       alpha=0.0, sample_weight=None, slope=LEAKY_SLOPE, l1=0.0,
                       huber_delta=1.0, dropout=None):
    """Full-batch objective and gradient, as the solvers define them.

    Returns ``(loss, coef_grads, intercept_grads)`` where the objective is
    ``(sum_i w_i l_i + 0.5 alpha sum ||W||^2 + l1 sum |W|) / sum_i w_i``.
    """
    coefs = [np.asarray(c, dtype=np.float64) for c in coefs]
    intercepts = [np.asarray(b, dtype=np.float64) for b in intercepts]
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(X.shape[0], -1)
    w = np.ones(X.shape[0]) if sample_weight is None else np.asarray(
        sample_weight, dtype=np.float64)
    sw_sum = w.sum()
    names = _activations(activation, len(coefs) - 1)
    zs, a, scales = forward(coefs, intercepts, X, activation, out_activation, slope,
                            dropout)
    data = np.sum(w * per_sample_loss(loss, out_activation, zs[-1], Y,
                                      huber_delta)) / sw_sum
    penalty = (0.5 * alpha * sum(np.sum(c * c) for c in coefs)
               + l1 * sum(np.sum(np.abs(c)) for c in coefs)) / sw_sum

    delta = output_error(loss, out_activation, zs[-1], Y, huber_delta) \
        * w[:, None] / sw_sum
    coef_grads = [None] * len(coefs)
    intercept_grads = [None] * len(coefs)
    for i in range(len(coefs) - 1, -1, -1):
        coef_grads[i] = a[i].T @ delta + (alpha * coefs[i]
                                          + l1 * np.sign(coefs[i])) / sw_sum
        intercept_grads[i] = delta.sum(axis=0)
        if i == 0:
            break
        g = delta @ coefs[i].T  # dloss / d(activation of hidden layer i)
        if scales[i - 1] is not None:
            g = g * scales[i - 1]
        z = zs[i - 1]
        if names[i - 1] == "maxout":
            units = g.shape[1]
            pieces = z.reshape(z.shape[0], units, -1)
            winner = np.argmax(pieces, axis=2)  # first maximum, as the kernels
            routed = np.zeros_like(pieces)
            np.put_along_axis(routed, winner[:, :, None], g[:, :, None], axis=2)
            delta = routed.reshape(z.shape)
        else:
            delta = g * hidden_derivative(names[i - 1], z, slope)
    return data + penalty, coef_grads, intercept_grads


def predict_output(coefs, intercepts, X, activation, out_activation,
                   slope=LEAKY_SLOPE):
    """Output-layer activations of the network."""
    _, a, _ = forward(coefs, intercepts, X, activation, out_activation, slope)
    return a[-1]
