"""The exact training objective and its gradient, for users to inspect.

Both functions evaluate the kernels that the solvers run, at the estimator's
current weights, on the full batch given: the data loss (averaged with the
sample weights) plus ``(0.5 * alpha * ||W||^2 + l1 * |W|_1) / sum(sample_weight)``.
Where L1 and the hinge, absolute and Huber losses have kinks, the kernels use
the subgradient 0; finite differences agree away from the kinks.
"""

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from cbackprop._mlp import _blas_single_thread


def _objective(estimator, X, y, sample_weight, dtype, dropout_step=None):
    check_is_fitted(estimator)
    X = validate_data(estimator, X, accept_sparse=["csr", "csc"], reset=False,
                      dtype=(np.float64, np.float32))
    _, Y = estimator._encode_targets(y, X.shape[0], dtype)
    sw = estimator._check_sample_weight(sample_weight, X.shape[0], dtype)
    if dropout_step is not None:
        if not (isinstance(dropout_step, (int, np.integer)) and dropout_step >= 0):
            raise ValueError(
                f"dropout_step must be None or a non-negative int, got {dropout_step!r}."
            )
        dropout_step = int(dropout_step)
    objective = estimator._objective_setup(X, Y, sw, dtype, estimator._layer_units(),
                                           dropout_step)

    def total(params, need_grad=True):
        data, penalty, grad = objective(params, need_grad)
        return data + penalty, grad

    return total


def _split(estimator, flat):
    units, zw = estimator._layer_units(), estimator._layer_zw()
    _, coef_off, icpt_off, _ = estimator._layout(units, zw)
    coefs, intercepts = [], []
    for i in range(len(units) - 1):
        n = units[i] * zw[i + 1]
        coefs.append(flat[coef_off[i]: coef_off[i] + n].reshape(units[i],
                                                                zw[i + 1]).copy())
        intercepts.append(flat[icpt_off[i]: icpt_off[i] + zw[i + 1]].copy())
    return coefs, intercepts


def loss_and_gradients(estimator, X, y, sample_weight=None, *, dropout_step=None):
    """Full-batch training objective and its gradient at the current weights.

    Parameters
    ----------
    estimator : MLPClassifier or MLPRegressor
        A fitted cbackprop estimator (its ``coefs_`` / ``intercepts_``, as
        they are now, are used).
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Input data.
    y : array-like
        Targets as given to ``fit``: class labels for the classifier.
    sample_weight : array-like of shape (n_samples,), default=None
        Non-negative sample weights.
    dropout_step : int or None, default=None
        None evaluates the whole network, as ``predict`` does. With dropout,
        an int evaluates the thinned network that a training epoch starting
        at this sample counter (``t_``) draws: sample ``i`` of X gets the
        mask of epoch position ``i``. That objective is fixed and
        differentiable, so its gradient can be checked too.

    Returns
    -------
    loss : float
        Data loss plus the L2 and L1 penalties, exactly what the solvers
        minimise.
    coef_grads : list of ndarray
        Gradient with respect to each ``coefs_[i]``.
    intercept_grads : list of ndarray
        Gradient with respect to each ``intercepts_[i]``.
    """
    check_is_fitted(estimator)
    dtype = estimator.coefs_[0].dtype
    objective = _objective(estimator, X, y, sample_weight, dtype, dropout_step)
    params = estimator._pack(dtype)
    with _blas_single_thread():
        loss, grad = objective(params)
    coef_grads, intercept_grads = _split(estimator, grad)
    return float(loss), coef_grads, intercept_grads


def check_gradients(estimator, X, y, sample_weight=None, eps=1e-4, max_params=None,
                    random_state=0, *, dropout_step=None):
    """Largest relative error between the kernel gradient and central
    finite differences.

    The numerical derivative is the fourth-order central difference
    ``(8 (f(w+h) - f(w-h)) - (f(w+2h) - f(w-2h))) / (12 h)``, whose truncation
    error is O(h^4): with the default ``h = 1e-4`` both truncation and
    rounding stay near 1e-11, so an exact gradient scores about 1e-8 or
    better and a wrong one stands out by orders of magnitude.

    The check always runs in float64 (a float32 model is evaluated with its
    weights cast to float64), because float32 finite differences are too
    noisy to say anything about exactness.

    Parameters
    ----------
    estimator : MLPClassifier or MLPRegressor
        A fitted cbackprop estimator.
    X, y, sample_weight
        As for :func:`loss_and_gradients`.
    eps : float, default=1e-4
        Step ``h`` of the central difference.
    max_params : int or None, default=None
        Check only this many parameters, drawn at random; None checks all.
    random_state : int, RandomState instance or None, default=0
        Chooses the parameters when ``max_params`` is set.
    dropout_step : int or None, default=None
        As for :func:`loss_and_gradients`.

    Returns
    -------
    max_rel_error : float
        ``max_i |g_i - n_i| / max(|g_i|, |n_i|, 1e-3 * max_j |g_j|, 1e-12)`` over
        the checked parameters, with ``g`` the analytic and ``n`` the numerical
        gradient. Components a thousand times smaller than the largest are
        judged at that scale, where finite differences can still resolve them.
    """
    check_is_fitted(estimator)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}.")
    objective = _objective(estimator, X, y, sample_weight, np.float64, dropout_step)
    with _blas_single_thread():
        return _finite_differences(objective, estimator._pack(np.float64), eps,
                                   max_params, random_state)


def _finite_differences(objective, params, eps, max_params, random_state):
    _, grad = objective(params)
    grad = grad.copy()
    idx = np.arange(params.shape[0])
    if max_params is not None and max_params < idx.shape[0]:
        rng = check_random_state(random_state)
        idx = np.sort(rng.choice(idx, size=int(max_params), replace=False))
    numerical = np.empty(idx.shape[0])

    def f_at(i, w):
        params[i] = w
        return objective(params, need_grad=False)[0]

    for k, i in enumerate(idx):
        w = params[i]
        d1 = f_at(i, w + eps) - f_at(i, w - eps)
        d2 = f_at(i, w + 2 * eps) - f_at(i, w - 2 * eps)
        params[i] = w
        numerical[k] = (8 * d1 - d2) / (12 * eps)
    analytic = grad[idx]
    floor = max(1e-3 * float(np.max(np.abs(grad))), 1e-12)
    denom = np.maximum(np.maximum(np.abs(analytic), np.abs(numerical)), floor)
    return float(np.max(np.abs(analytic - numerical) / denom)) if idx.size else 0.0
