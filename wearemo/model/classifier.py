"""The stress classifier as a scikit-learn estimator: one of a few model families (gradient-boosted
trees, a random forest, logistic regression), calibrated across people.

A plain scikit-learn estimator (parameters only in ``__init__``, ``fit`` returns ``self``,
fitted attributes end in ``_``; ``tests/model/test_classifier.py`` runs scikit-learn's
``parametrize_with_checks`` on it), so it composes with pipelines, grid searches and
cross-validation, and a trial team can swap it for their own.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(400, 3))
>>> y = (x[:, 0] + 0.3 * rng.normal(size=400) > 0).astype(int)
>>> clf = StressClassifier().fit(x, y, groups=np.repeat(np.arange(8), 50))
>>> bool(clf.predict_proba(x[:5]).shape == (5, 2))
True
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["Family", "StressClassifier"]

Family = Literal["hgb", "forest", "logistic"]
_FAMILIES: tuple[str, ...] = ("hgb", "forest", "logistic")


class StressClassifier(ClassifierMixin, BaseEstimator):
    """A classifier of the chosen family with sigmoid calibration on held-out people.

    ``fit(X, y, groups=...)`` calibrates on folds split by ``groups`` (subjects, ``GroupKFold``),
    so the calibrator sees probabilities for people the trees did not train on, as in
    deployment; without groups it falls back to stratified folds. Missing values (NaN) are
    handled natively by the trees; a column with no value at all in training is ignored (set to
    0, which carries no information) because scikit-learn's binning rejects it.

    Parameters
    ----------
    family
        ``"hgb"``: :class:`~sklearn.ensemble.HistGradientBoostingClassifier`; ``"forest"``:
        :class:`~sklearn.ensemble.RandomForestClassifier` (Schmidt et al. 2018's WESAD
        baseline family); ``"logistic"``: median imputation with missing-value indicators,
        standardisation and L2 :class:`~sklearn.linear_model.LogisticRegression`. All with
        balanced class weights.
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization
        Tree parameters (``hgb``; ``forest`` uses ``min_samples_leaf`` and ``n_estimators``).
        ``min_samples_leaf`` is capped at 5 % of the training windows so tiny data sets can
        still split (no effect at real data sizes).
    n_estimators
        Trees of the forest.
    C
        Inverse L2 strength of the logistic regression.
    calibration
        ``"sigmoid"`` (Platt scaling on held-out groups) or ``"none"`` (raw scores; what the
        nested model search ranks by AUROC, which calibration would not change).
    calibration_folds
        Folds of the sigmoid calibration (fewer when there are fewer groups or samples).
    ensemble
        ``False`` (default): the calibrator learns from out-of-fold predictions and one model
        refitted on all rows serves (one model to store and run per prediction); ``True``:
        one calibrated model per fold, averaged (``calibration_folds`` times the cost of every
        prediction and of the file).
    random_state
        Seed of the trees.

    Attributes
    ----------
    classes_
        Class labels seen in ``fit``.
    n_features_in_
        Number of input features.
    calibrated_
        The fitted :class:`~sklearn.calibration.CalibratedClassifierCV` (or, with
        ``calibration="none"``, the fitted base model).
    empty_columns_
        Boolean mask of the columns that had no finite value in training.
    n_iter_
        Boosting iterations of the largest calibration fold's trees (0 for other families).
    """

    def __init__(
        self,
        *,
        family: Family = "hgb",
        max_iter: int = 200,
        learning_rate: float = 0.05,
        max_leaf_nodes: int = 15,
        min_samples_leaf: int = 40,
        l2_regularization: float = 1.0,
        n_estimators: int = 100,
        C: float = 0.1,  # noqa: N803 (scikit-learn's name)
        calibration: Literal["sigmoid", "none"] = "sigmoid",
        calibration_folds: int = 5,
        ensemble: bool = False,
        random_state: int | None = 0,
    ) -> None:
        self.family = family
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.n_estimators = n_estimators
        self.C = C
        self.calibration = calibration
        self.calibration_folds = calibration_folds
        self.ensemble = ensemble
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _splits(self, y: np.ndarray, groups: np.ndarray | None) -> list[Any]:
        idx = np.zeros(len(y))
        if groups is not None and len(np.unique(groups)) >= 2:
            k = min(self.calibration_folds, len(np.unique(groups)))
            return list(GroupKFold(n_splits=k).split(idx, y, groups=groups))
        smallest = int(np.min(np.unique(y, return_counts=True)[1]))
        k = max(2, min(self.calibration_folds, smallest))
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=0).split(idx, y))

    def fit(
        self, X: Any, y: Any, groups: Any | None = None  # noqa: N803 (scikit-learn naming)
    ) -> StressClassifier:
        """Fit trees and calibration; ``groups`` (one id per row, e.g. the subject) keeps each
        calibration fold's people out of its trees' training."""
        x, yv = validate_data(self, X, y, ensure_all_finite="allow-nan")
        check_classification_targets(yv)
        self.classes_ = np.unique(yv)
        if self.classes_.size < 2:
            raise ValueError(
                f"StressClassifier needs at least 2 classes in y, got {self.classes_.size} "
                f"class: {self.classes_.tolist()}"
            )
        g = None if groups is None else np.asarray(groups)
        if g is not None and g.shape[0] != x.shape[0]:
            raise ValueError(f"groups has {g.shape[0]} entries for {x.shape[0]} rows")
        self.empty_columns_ = ~np.isfinite(x).any(axis=0)
        base = self._base(x.shape[0])
        if self.calibration == "none":
            self.calibrated_ = base.fit(self._fill(x), yv)
            self.n_iter_ = int(getattr(base, "n_iter_", 0))
            return self
        if self.calibration != "sigmoid":
            raise ValueError(f"calibration must be 'sigmoid' or 'none', got {self.calibration!r}")
        self.calibrated_ = CalibratedClassifierCV(
            base, method="sigmoid", cv=self._splits(yv, g), ensemble=self.ensemble
        ).fit(self._fill(x), yv)
        fitted = self.calibrated_.calibrated_classifiers_
        self.n_iter_ = max(int(getattr(c.estimator, "n_iter_", 0)) for c in fitted)
        return self

    def _base(self, n_rows: int) -> BaseEstimator:
        leaf = max(1, min(self.min_samples_leaf, n_rows // 20))
        if self.family == "hgb":
            return HistGradientBoostingClassifier(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_leaf_nodes=self.max_leaf_nodes,
                min_samples_leaf=leaf,
                l2_regularization=self.l2_regularization,
                class_weight="balanced",
                random_state=self.random_state,
            )
        if self.family == "forest":
            # Half-size bootstrap samples: as accurate here and twice as fast to fit.
            return RandomForestClassifier(
                n_estimators=self.n_estimators, min_samples_leaf=leaf, max_samples=0.5,
                class_weight="balanced_subsample", n_jobs=1, random_state=self.random_state,
            )
        if self.family == "logistic":
            return make_pipeline(
                SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                StandardScaler(),
                LogisticRegression(C=self.C, class_weight="balanced", max_iter=1000),
            )
        raise ValueError(f"family must be one of {_FAMILIES}, got {self.family!r}")

    def _fill(self, x: np.ndarray) -> np.ndarray:
        if not self.empty_columns_.any():
            return x
        x = np.array(x, dtype=float, copy=True)
        x[:, self.empty_columns_] = 0.0
        return x

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803 (scikit-learn naming)
        """Calibrated class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        x = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return np.asarray(self.calibrated_.predict_proba(self._fill(x)))

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803 (scikit-learn naming)
        """Most probable class (the service thresholds ``p_stress`` itself; see GateConfig)."""
        check_is_fitted(self)
        proba = self.predict_proba(X)
        return np.asarray(self.classes_[np.argmax(proba, axis=1)])
