"""The stress classifier honours scikit-learn's estimator contract and calibrates."""

from __future__ import annotations

import numpy as np
from sklearn.utils.estimator_checks import parametrize_with_checks

from wearemo.model.classifier import StressClassifier
from wearemo.model.train import expected_calibration_error


@parametrize_with_checks([StressClassifier(max_iter=20, calibration_folds=3)])
def test_sklearn_contract(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)


def test_calibrated_on_held_out_people() -> None:
    # 20 "people" with their own offset; the label depends on the feature relative to it only
    # through a noisy link, so a calibrated model's probabilities must match observed rates.
    rng = np.random.default_rng(3)
    n, people = 6000, 20
    g = np.repeat(np.arange(people), n // people)
    x = rng.normal(size=(n, 2))
    p_true = 1 / (1 + np.exp(-1.5 * x[:, 0]))
    y = (rng.random(n) < p_true).astype(int)
    tr, te = g < 15, g >= 15  # held-out people
    clf = StressClassifier(max_iter=60).fit(x[tr], y[tr], groups=g[tr])
    p = clf.predict_proba(x[te])[:, 1]
    assert expected_calibration_error(y[te], p) < 0.04  # tolerance: ECE 0.04 on 1500 windows
    assert np.corrcoef(p, p_true[te])[0, 1] > 0.95


def test_all_nan_column_and_missing_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    x[:, 2] = np.nan  # a channel missing from every training recording
    x[::7, 0] = np.nan
    y = (x[:, 1] > 0).astype(int)
    clf = StressClassifier(max_iter=30).fit(x, y)
    assert clf.empty_columns_.tolist() == [False, False, True]
    assert np.isfinite(clf.predict_proba(x)).all()
