"""scikit-learn's own API conformance suite, run on both estimators.

No check is marked as an expected failure.
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from cbackprop import MLPClassifier, MLPRegressor


@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
