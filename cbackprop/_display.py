"""Plots of a fit, in scikit-learn's Display style (matplotlib optional)."""

import numpy as np
from sklearn.utils.validation import check_is_fitted


class LossCurveDisplay:
    """Training loss, and validation score when there is one, per epoch.

    Build it with :meth:`from_estimator`; :meth:`plot` draws it.

    Parameters
    ----------
    loss_curve : array-like of shape (n_epochs,)
        Training loss of each epoch.
    validation_scores : array-like of shape (n_epochs,), default=None
        Validation score of each epoch (early stopping).
    validation_loss_curve : array-like of shape (n_epochs,), default=None
        Validation loss of each epoch, when the estimator records one.
    estimator_name : str, default=None
        Shown in the title.

    Attributes
    ----------
    ax_ : matplotlib Axes
        Axes of the loss curve.
    score_ax_ : matplotlib Axes or None
        Twin axes of the validation score, when plotted.
    figure_ : matplotlib Figure
        The figure.
    lines_ : dict of str to matplotlib Line2D
        The plotted lines by name.
    """

    def __init__(self, loss_curve, validation_scores=None, validation_loss_curve=None,
                 estimator_name=None):
        self.loss_curve = np.asarray(loss_curve, dtype=float)
        self.validation_scores = (None if validation_scores is None
                                  else np.asarray(validation_scores, dtype=float))
        self.validation_loss_curve = (None if validation_loss_curve is None
                                      else np.asarray(validation_loss_curve,
                                                      dtype=float))
        self.estimator_name = estimator_name

    @classmethod
    def from_estimator(cls, estimator, *, ax=None, **plot_kwargs):
        """Plot the curves recorded by a fitted stochastic-solver estimator.

        Parameters
        ----------
        estimator : MLPClassifier or MLPRegressor
            Fitted with ``solver='sgd'`` or ``'adam'`` (lbfgs records no curve).
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.
        **plot_kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        display : LossCurveDisplay
        """
        check_is_fitted(estimator)
        if getattr(estimator, "loss_curve_", None) is None:
            raise ValueError(
                f"{type(estimator).__name__} has no loss_curve_: only the 'sgd' and "
                "'adam' solvers record one per epoch."
            )
        display = cls(estimator.loss_curve_,
                      validation_scores=getattr(estimator, "validation_scores_", None),
                      validation_loss_curve=getattr(estimator,
                                                    "validation_loss_curve_", None),
                      estimator_name=type(estimator).__name__)
        return display.plot(ax=ax, **plot_kwargs)

    def plot(self, ax=None, *, log_loss_axis=False):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.
        log_loss_axis : bool, default=False
            Logarithmic loss axis.

        Returns
        -------
        self : LossCurveDisplay
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "LossCurveDisplay needs matplotlib: pip install matplotlib"
            ) from exc
        if ax is None:
            _, ax = plt.subplots()
        epochs = np.arange(1, self.loss_curve.shape[0] + 1)
        self.lines_ = {}
        (self.lines_["training loss"],) = ax.plot(epochs, self.loss_curve,
                                                  label="training loss")
        if self.validation_loss_curve is not None:
            (self.lines_["validation loss"],) = ax.plot(
                np.arange(1, self.validation_loss_curve.shape[0] + 1),
                self.validation_loss_curve, label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if log_loss_axis:
            ax.set_yscale("log")
        self.score_ax_ = None
        handles = list(self.lines_.values())
        if self.validation_scores is not None:
            self.score_ax_ = ax.twinx()
            (self.lines_["validation score"],) = self.score_ax_.plot(
                np.arange(1, self.validation_scores.shape[0] + 1),
                self.validation_scores, color="tab:green", linestyle="--",
                label="validation score")
            self.score_ax_.set_ylabel("validation score")
            handles.append(self.lines_["validation score"])
        ax.legend(handles=handles,
                  loc="center right" if self.score_ax_ is not None else "best")
        if self.estimator_name:
            ax.set_title(self.estimator_name)
        self.ax_ = ax
        self.figure_ = ax.figure
        return self
