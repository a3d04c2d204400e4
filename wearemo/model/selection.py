"""Automated model selection that nests inside leave-one-subject-out evaluation.

:class:`ModelSearch` is itself a scikit-learn classifier: ``fit(X, y, groups=...)`` ranks a few
candidate models (families and settings) by their AUROC on held-out *groups* of its own training
data (inner ``GroupKFold`` over subjects), then refits the winner, calibrated, on all of it.
Used as the classifier of every LOSO fold, the search sees only that fold's training subjects,
so model selection and hyper-parameter choice never touch the subject being scored (Cawley &
Talbot 2010, "On over-fitting in model selection and subsequent selection bias in performance
evaluation", JMLR 11:2079-2107). ``tests/model/test_selection.py`` checks that no test subject's
window ever reaches a ``fit``.

AUROC ranks candidates because it is what calibration cannot change: calibration runs once,
on the winner.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(600, 3))
>>> y = (x[:, 0] + 0.5 * rng.normal(size=600) > 0).astype(int)
>>> search = ModelSearch(candidates=(("small", {"max_iter": 20}),
...                                  ("logistic", {"family": "logistic"})))
>>> search = search.fit(x, y, groups=np.repeat(np.arange(6), 100))
>>> search.best_name_ in ("small", "logistic"), search.predict_proba(x[:2]).shape
(True, (2, 2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from wearemo.model.classifier import StressClassifier

__all__ = ["DEFAULT_CANDIDATES", "Candidate", "ModelSearch"]

#: A candidate: a name and either :class:`StressClassifier` parameters or an estimator.
Candidate = tuple[str, Mapping[str, Any] | BaseEstimator]

#: The pre-registered search space: three families, a small grid (5 candidates), chosen
#: before looking at test subjects. ``hgb`` is the earlier single model.
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    ("hgb", {"family": "hgb"}),
    ("hgb-shallow", {"family": "hgb", "max_leaf_nodes": 7, "min_samples_leaf": 100,
                     "max_iter": 300}),
    ("forest", {"family": "forest", "min_samples_leaf": 20}),
    ("logistic-C0.1", {"family": "logistic", "C": 0.1}),
    ("logistic-C0.01", {"family": "logistic", "C": 0.01}),
)


def _auroc(y: np.ndarray, proba: np.ndarray) -> float:
    # Binary: AUROC of the positive column; more classes: macro one-vs-rest AUROC.
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def _estimator(spec: Mapping[str, Any] | BaseEstimator, **overrides: Any) -> BaseEstimator:
    if isinstance(spec, BaseEstimator):
        est = clone(spec)
        return est.set_params(**{k: v for k, v in overrides.items()
                                 if k in est.get_params()})
    return StressClassifier(**{**dict(spec), **overrides})


class ModelSearch(ClassifierMixin, BaseEstimator):
    """Pick the best candidate by inner group-wise AUROC (macro one-vs-rest for more than two
    classes), then refit it calibrated.

    Parameters
    ----------
    candidates
        ``(name, params-or-estimator)`` pairs; None means :data:`DEFAULT_CANDIDATES`. Params
        build a :class:`StressClassifier`; an estimator is cloned (it must accept ``groups=``
        in ``fit`` and have ``calibration`` / ``random_state`` parameters to receive them).
    inner_folds
        Inner ``GroupKFold`` splits over the training groups (fewer when there are fewer
        groups; stratified folds without groups).
    rule
        ``"one_se"`` (default): keep the first candidate unless another beats it by more than
        one standard error of the per-fold differences; ``"best"``: the highest mean AUROC.
    random_state
        Seed handed to every candidate.

    Attributes
    ----------
    classes_, n_features_in_
        As for any classifier.
    best_name_
        Name of the chosen candidate.
    cv_auroc_
        Candidate name -> mean inner held-out AUROC.
    best_estimator_
        The chosen candidate refitted (calibrated) on all training data.
    """

    def __init__(
        self,
        *,
        candidates: Sequence[Candidate] | None = None,
        inner_folds: int = 3,
        rule: Literal["one_se", "best"] = "one_se",
        random_state: int | None = 0,
    ) -> None:
        self.candidates = candidates
        self.inner_folds = inner_folds
        self.rule = rule
        self.random_state = random_state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def _inner_splits(self, y: np.ndarray, groups: np.ndarray | None) -> list[Any]:
        idx = np.zeros(len(y))
        if groups is not None and len(np.unique(groups)) >= 2:
            k = min(self.inner_folds, len(np.unique(groups)))
            return list(GroupKFold(n_splits=k).split(idx, y, groups=groups))
        smallest = int(np.min(np.unique(y, return_counts=True)[1]))
        k = max(2, min(self.inner_folds, smallest))
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=0).split(idx, y))

    def fit(
        self, X: Any, y: Any, groups: Any | None = None  # noqa: N803 (scikit-learn naming)
    ) -> ModelSearch:
        """Rank the candidates on inner held-out groups, refit the best on everything."""
        x, yv = validate_data(self, X, y, ensure_all_finite="allow-nan")
        check_classification_targets(yv)
        self.classes_ = np.unique(yv)
        if self.classes_.size < 2:
            raise ValueError(
                f"ModelSearch needs at least 2 classes in y, got {self.classes_.size} class: "
                f"{self.classes_.tolist()}"
            )
        g = None if groups is None else np.asarray(groups)
        if g is not None and g.shape[0] != x.shape[0]:
            raise ValueError(f"groups has {g.shape[0]} entries for {x.shape[0]} rows")
        if self.rule not in ("one_se", "best"):
            raise ValueError(f"rule must be 'one_se' or 'best', got {self.rule!r}")
        candidates = list(self.candidates if self.candidates is not None else DEFAULT_CANDIDATES)
        if not candidates:
            raise ValueError("ModelSearch needs at least one candidate")
        names = [name for name, _ in candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        scores: dict[str, list[float]] = {name: [] for name in names}
        if len(candidates) > 1:
            for tr, te in self._inner_splits(yv, g):
                if not (np.array_equal(np.unique(yv[te]), self.classes_)
                        and np.array_equal(np.unique(yv[tr]), self.classes_)):
                    continue  # a fold missing a class cannot rank anything
                for name, spec in candidates:
                    est = _estimator(spec, calibration="none", random_state=self.random_state)
                    est.fit(x[tr], yv[tr], groups=None if g is None else g[tr])
                    scores[name].append(_auroc(yv[te], est.predict_proba(x[te])))
        self.cv_auroc_ = {name: float(np.mean(v)) if v else float("nan")
                          for name, v in scores.items()}
        self.best_name_ = self._choose(names, scores)
        spec = dict(candidates)[self.best_name_]
        self.best_estimator_ = _estimator(spec, random_state=self.random_state).fit(
            x, yv, groups=g
        )
        return self

    def _choose(self, names: list[str], scores: dict[str, list[float]]) -> str:
        """The first candidate (the list order is the preference), unless another beats it.

        With ``rule="one_se"`` a candidate must beat the first by more than one standard error
        of their paired per-fold AUROC differences (the one-standard-error rule, Hastie,
        Tibshirani & Friedman 2009, ESL §7.10): differences within the noise of a few inner
        folds are not worth the selection variance they add to the outer score.
        """
        first = names[0]
        base = np.asarray(scores[first], dtype=float)
        best, best_gain = first, 0.0
        for name in names[1:]:
            v = np.asarray(scores[name], dtype=float)
            if not (v.size and v.size == base.size):
                continue
            diff = v - base
            gain = float(diff.mean())
            se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
            margin = se if self.rule == "one_se" else 0.0
            if gain > margin and gain > best_gain:
                best, best_gain = name, gain
        return best

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803 (scikit-learn naming)
        """Calibrated class probabilities of the chosen model (columns as ``classes_``)."""
        check_is_fitted(self)
        x = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return np.asarray(self.best_estimator_.predict_proba(x))

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803 (scikit-learn naming)
        """Most probable class."""
        proba = self.predict_proba(X)
        return np.asarray(self.classes_[np.argmax(proba, axis=1)])
