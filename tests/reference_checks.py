"""Comparing an estimator's kernel objective with the NumPy reference: the
one helper the gradient and toolbox tests share."""

import numpy as np
import pytest

from cbackprop import _reference as ref
from cbackprop import loss_and_gradients


def ref_loss_name(est):
    """The reference's name for the estimator's loss."""
    if est.loss == "hinge" and est._label_binarizer.y_type_ == "multiclass":
        return "multiclass_hinge"
    return est.loss


def targets(est, y, n):
    """``y`` in the network's output encoding."""
    if hasattr(est, "classes_"):
        return est._label_binarizer.transform(y)
    return np.asarray(y, dtype=float).reshape(n, -1)


def reference_objective(est, X, y, sample_weight=None, dropout_step=None):
    """``(loss, coef_grads, intercept_grads)`` of the reference at the
    estimator's weights, with every parameter that shapes the objective."""
    dropout = None
    if dropout_step is not None:
        dropout = (est.dropout, est._dropout_seed, dropout_step)
    return ref.loss_and_gradients(
        est.coefs_, est.intercepts_, X, targets(est, y, X.shape[0]), est.activation,
        est.out_activation_, ref_loss_name(est), est.alpha, sample_weight,
        slope=est.leaky_relu_slope, l1=est.l1,
        huber_delta=getattr(est, "huber_delta", 1.0), dropout=dropout)


def assert_matches_reference(est, X, y, sample_weight=None, dropout_step=None,
                             grad_rtol=None):
    """Kernel loss and gradients equal the reference: to 1e-12 / 1e-10 in
    float64, to float32 precision (gradients at ``grad_rtol``, default 1e-3)
    for a float32 model."""
    loss, cg, ig = loss_and_gradients(est, X, y, sample_weight=sample_weight,
                                      dropout_step=dropout_step)
    rloss, rcg, rig = reference_objective(est, X, y, sample_weight, dropout_step)
    if est.coefs_[0].dtype == np.float32:
        assert all(g.dtype == np.float32 for g in cg + ig)
        assert loss == pytest.approx(rloss, rel=1e-5)
        scale = max(np.max(np.abs(g)) for g in rcg + rig)
        for a, b in zip(cg + ig, rcg + rig):
            np.testing.assert_allclose(a, b, rtol=grad_rtol or 1e-3,
                                       atol=1e-5 * scale)
        return loss
    assert loss == pytest.approx(rloss, rel=1e-12)
    for a, b in zip(cg + ig, rcg + rig):
        np.testing.assert_allclose(a, b, rtol=grad_rtol or 1e-10, atol=1e-13)
    return loss
