"""Model selection is nested: no held-out subject's window ever reaches a fit."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from wearemo.features.window import FeatureWindow
from wearemo.model.baseline import BaselineConfig
from wearemo.model.classifier import StressClassifier
from wearemo.model.estimator import GateConfig
from wearemo.model.selection import ModelSearch
from wearemo.model.train import LabelledWindows, loso_evaluate

SMALL = (("hgb", {"max_iter": 15, "calibration_folds": 3}),
         ("logistic", {"family": "logistic", "calibration_folds": 3}))


@parametrize_with_checks([ModelSearch(candidates=SMALL, inner_folds=2)])
def test_sklearn_contract(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)


@pytest.mark.parametrize("family", ["forest", "logistic"])
def test_other_families_calibrate_and_take_nan(family: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=900) > 0).astype(int)
    x[::5, 1] = np.nan
    groups = np.repeat(np.arange(9), 100)
    clf = StressClassifier(family=family).fit(x, y, groups=groups)  # type: ignore[arg-type]
    p = clf.predict_proba(x)[:, 1]
    assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
    assert ((p >= 0.5) == y).mean() > 0.8


def test_unknown_family_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        StressClassifier(family="svm").fit(np.eye(4), [0, 1, 0, 1])  # type: ignore[arg-type]


def test_search_picks_the_model_that_generalises() -> None:
    # A linear signal: logistic regression must beat a one-iteration tree stump in the inner
    # folds, and the search must report both candidates' inner AUROC.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1200, 4))
    y = (x @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.3 * rng.normal(size=1200) > 0).astype(int)
    search = ModelSearch(candidates=(("stump", {"max_iter": 1, "max_leaf_nodes": 2}),
                                     ("logistic", {"family": "logistic"})))
    search.fit(x, y, groups=np.repeat(np.arange(12), 100))
    assert search.best_name_ == "logistic"
    assert search.cv_auroc_["logistic"] > search.cv_auroc_["stump"] + 0.1


def test_one_se_rule_keeps_the_first_candidate_within_the_noise() -> None:
    # Pure noise: whatever candidate "wins" the inner folds does so by chance. The one-SE rule
    # keeps the preferred (first) candidate; plain arg-max takes the lucky one.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1200, 3))
    y = rng.integers(0, 2, size=1200)
    groups = np.repeat(np.arange(12), 100)
    candidates = (("hgb", {"max_iter": 20}), ("logistic", {"family": "logistic"}),
                  ("forest", {"family": "forest", "n_estimators": 20}))
    kept = ModelSearch(candidates=candidates).fit(x, y, groups=groups)
    assert kept.best_name_ == "hgb"
    lucky = ModelSearch(candidates=candidates, rule="best").fit(x, y, groups=groups)
    assert lucky.best_name_ == max(lucky.cv_auroc_, key=lambda n: lucky.cv_auroc_[n])
    with pytest.raises(ValueError, match="rule must be"):
        ModelSearch(rule="vote").fit(x, y)  # type: ignore[arg-type]


class _Spy(StressClassifier):
    """Records which subjects each fit and each prediction sees (subject id in column 0)."""

    log: ClassVar[list[tuple[str, frozenset[float]]]] = []

    def fit(self, X: Any, y: Any, groups: Any | None = None) -> _Spy:  # noqa: N803
        _Spy.log.append(("fit", frozenset(np.asarray(X)[:, 0].tolist())))
        return super().fit(X, y, groups=groups)  # type: ignore[return-value]

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        _Spy.log.append(("predict", frozenset(np.asarray(X)[:, 0].tolist())))
        return super().predict_proba(X)


def _subjects(n: int) -> list[LabelledWindows]:
    rng = np.random.default_rng(5)
    out = []
    for s in range(n):
        windows, labels = [], []
        for i in range(60):
            stress = 20 <= i < 40
            windows.append(FeatureWindow(
                subject_id=f"s{s}", start_ns=i * 5 * 10**9, end_ns=(i * 5 + 60) * 10**9,
                features={
                    # The spy's subject marker: an absolute feature passed through unchanged.
                    "eda_scl_slope_uS_per_min": float(s),
                    "eda_scl_mean_uS": 2.0 + s + (1.0 if stress else 0.0) + rng.normal(0, 0.3),
                },
                coverage={"eda": 1.0}, beat_source="none",
            ))
            labels.append("stress" if stress else "non_stress")
        out.append(LabelledWindows(f"s{s}", windows, labels, ["t"] * 60, [True] * 60))
    return out


def test_no_test_subject_reaches_training_in_loso() -> None:
    _Spy.log.clear()
    data = _subjects(6)
    names = ["eda_scl_slope_uS_per_min", "rel_eda_scl_mean_uS"]
    report = loso_evaluate(
        data, feature_names=names, gate=GateConfig(min_beats=1),
        baseline=BaselineConfig(warmup_s=60.0, min_windows=5),
        make=lambda seed: ModelSearch(
            candidates=(("a", _Spy(max_iter=10, calibration_folds=2)),
                        ("b", _Spy(family="logistic", calibration_folds=2))),
            inner_folds=2, random_state=seed),
    )
    assert report.pooled["auroc"] is not None and report.pooled["auroc"] > 0.9
    # Outer predictions are the single-subject ones; every fit since the previous outer
    # prediction belongs to that fold and must not contain its held-out subject.
    fits: list[frozenset[float]] = []
    folds = 0
    for kind, seen in _Spy.log:
        if kind == "fit":
            fits.append(seen)
        elif len(seen) == 1 and fits:
            (held_out,) = seen
            assert all(held_out not in f for f in fits), f"subject {held_out} reached training"
            assert len(fits) >= 2 * 2 + 1  # inner folds x candidates + the refit
            folds += 1
            fits = []
    assert folds == 6
