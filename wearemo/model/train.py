"""Training and leave-one-subject-out (LOSO) evaluation of the stress model.

Every window of every subject goes through the same :class:`SubjectEstimator` gating and personal
baseline as in live use; only windows that would be estimated live are used for training and
scored. LOSO trains on all subjects but one and scores that one, for each subject in turn; the
held-out subject never contributes to training, calibration or the choice of model.

Example
-------
>>> data = [LabelledWindows("s1", windows, labels, tasks, train_mask)]  # doctest: +SKIP
>>> report = loso_evaluate(data)  # doctest: +SKIP
>>> model = fit_model(data)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from threadpoolctl import ThreadpoolController

from wearemo.features.window import FeatureWindow
from wearemo.model.artifact import StressModel
from wearemo.model.baseline import BaselineConfig
from wearemo.model.estimator import DEFAULT_FEATURES, GateConfig, SubjectEstimator
from wearemo.model.selection import ModelSearch

__all__ = [
    "LabelledWindows",
    "LosoReport",
    "confusion",
    "expected_calibration_error",
    "external_evaluate",
    "fit_model",
    "loso_evaluate",
    "make_classifier",
    "reliability",
]


@dataclass(slots=True)
class LabelledWindows:
    """One subject's feature windows (time order) with their labels.

    ``labels[i]`` is ``"stress"``, ``"non_stress"`` or ``None`` (unlabelled); ``tasks[i]`` the
    protocol task; ``train_mask[i]`` is True when the window lies (almost) wholly in one labelled
    segment, so windows straddling a task boundary are scored but not learned from.
    """

    subject_id: str
    windows: list[FeatureWindow]
    labels: list[str | None]
    tasks: list[str | None]
    train_mask: list[bool]


@dataclass(slots=True)
class _Design:
    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    groups: np.ndarray
    tasks: np.ndarray
    end_ns: np.ndarray
    withheld: dict[str, dict[str, int]] = field(default_factory=dict)


def _design(
    data: Sequence[LabelledWindows],
    *,
    feature_names: Sequence[str],
    gate: GateConfig,
    baseline: BaselineConfig,
) -> _Design:
    rows: list[list[float]] = []
    y: list[int] = []
    train: list[bool] = []
    groups: list[str] = []
    tasks: list[str] = []
    ends: list[int] = []
    withheld: dict[str, dict[str, int]] = {}
    for subj in data:
        est = SubjectEstimator.with_baseline(
            subj.subject_id, classifier=None, feature_names=feature_names, version="train",
            gate=gate, baseline=baseline,
        )
        counts: dict[str, int] = {}
        for w, label, task, pure in zip(
            subj.windows, subj.labels, subj.tasks, subj.train_mask, strict=True
        ):
            inputs, reason = est.assess(w)
            if inputs is None:
                key = (reason or "").split(":")[0].split(" (")[0]
                counts[key] = counts.get(key, 0) + 1
                continue
            if label is None:
                continue
            rows.append([inputs.get(n, math.nan) for n in feature_names])
            y.append(1 if label == "stress" else 0)
            train.append(pure)
            groups.append(subj.subject_id)
            tasks.append(task or "")
            ends.append(w.end_ns)
        withheld[subj.subject_id] = counts
    return _Design(
        x=np.asarray(rows, dtype=float).reshape(-1, len(feature_names)),
        y=np.asarray(y, dtype=int),
        train=np.asarray(train, dtype=bool),
        groups=np.asarray(groups),
        tasks=np.asarray(tasks),
        end_ns=np.asarray(ends, dtype=np.int64),
        withheld=withheld,
    )


def make_classifier(*, seed: int = 0) -> ModelSearch:
    """The pre-registered classifier: a :class:`~wearemo.model.selection.ModelSearch` over a
    few model families, chosen by AUROC on held-out subjects of the training data and
    sigmoid-calibrated across subjects (pass ``groups=`` to ``fit``).

    >>> make_classifier(seed=1).random_state
    1
    """
    return ModelSearch(random_state=seed)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> float:
    """Expected calibration error of stress probabilities (equal-width bins; Guo et al. 2017).

    >>> round(expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])), 3)
    0.0
    """
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def _scores(y: np.ndarray, p: np.ndarray, threshold: np.ndarray | float) -> dict[str, float | None]:
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "n": len(y),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else None,
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "macro_f1": float(f1_score(y, pred, average="macro")) if both else None,
        "auroc": float(roc_auc_score(y, p)) if both else None,
        "ece": expected_calibration_error(y, p) if len(y) else None,
    }


def _bootstrap_ci(values: Sequence[float], *, n: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of the mean over subjects (subjects resampled)."""
    if len(values) < 3:
        return None
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n, len(v)))
    means = v[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Counts of true/false stress/non-stress decisions (stress is the positive class).

    >>> confusion(np.array([0, 1, 1]), np.array([0, 1, 0]))
    {'tn': 1, 'fp': 0, 'fn': 1, 'tp': 1}
    """
    y, pred = np.asarray(y, dtype=bool), np.asarray(pred, dtype=bool)
    return {"tn": int((~y & ~pred).sum()), "fp": int((~y & pred).sum()),
            "fn": int((y & ~pred).sum()), "tp": int((y & pred).sum())}


def reliability(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> list[dict[str, float]]:
    """Reliability-diagram bins: windows, mean predicted probability, observed stress rate.

    >>> reliability(np.array([0, 1]), np.array([0.05, 0.95]), n_bins=2)[1]["observed"]
    1.0
    """
    bins = np.clip((np.asarray(p) * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = bins == b
        if m.any():
            out.append({"low": b / n_bins, "high": (b + 1) / n_bins, "n": int(m.sum()),
                        "mean_p": float(np.mean(p[m])), "observed": float(np.mean(y[m]))})
    return out


@dataclass(slots=True)
class LosoReport:
    """Evaluation results (leave-one-subject-out, or a fixed model on new data): pooled, per
    subject and per task, with the pooled confusion matrix and reliability bins."""

    pooled: dict[str, float | None]
    per_subject: dict[str, dict[str, float | None]]
    per_task_stress_rate: dict[str, float]
    withheld: dict[str, dict[str, int]]
    predictions: dict[str, list[tuple[int, int, float, str]]]
    protocol: str = "leave-one-subject-out; windows 60 s every 5 s; labels by majority"
    confusion: dict[str, int] = field(default_factory=dict)
    reliability: list[dict[str, float]] = field(default_factory=list)
    selected: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what goes into the manifest and the README)."""
        bal = [s["balanced_accuracy"] for s in self.per_subject.values()
               if s["balanced_accuracy"] is not None]
        scored = {k: v["balanced_accuracy"] for k, v in self.per_subject.items()
                  if v["balanced_accuracy"] is not None}
        worst = min(scored, key=lambda k: scored[k]) if scored else None
        return {
            "protocol": self.protocol,
            "pooled": self.pooled,
            "confusion": self.confusion,
            "reliability": self.reliability,
            "per_subject_balanced_accuracy": {
                k: v["balanced_accuracy"] for k, v in self.per_subject.items()
            },
            "per_subject_balanced_accuracy_mean": float(np.mean(bal)) if bal else None,
            "per_subject_balanced_accuracy_ci95": _bootstrap_ci(bal),
            "per_subject_balanced_accuracy_sd": (
                float(np.std(bal, ddof=1)) if len(bal) > 1 else None
            ),
            "worst_subject": worst,
            "per_task_predicted_stress_rate": self.per_task_stress_rate,
            "per_subject": self.per_subject,
            "withheld": self.withheld,
            "selected_model_per_fold": self.selected,
            "selected_model_counts": {
                name: sum(1 for v in self.selected.values() if v == name)
                for name in sorted(set(self.selected.values()))
            },
        }


def loso_evaluate(
    data: Sequence[LabelledWindows],
    *,
    feature_names: Sequence[str] = DEFAULT_FEATURES,
    gate: GateConfig | None = None,
    baseline: BaselineConfig | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    make: Callable[[int], Any] | None = None,
    on_fold: Callable[[str], None] | None = None,
) -> LosoReport:
    """Score the pre-registered model leave-one-subject-out on ``data``.

    Each fold fits ``make(seed)`` (default :func:`make_classifier`, whose model search then
    runs inside the fold, on its training subjects only) and scores the held-out subject. Each
    fold's state threshold is the stress prevalence of that fold's training windows, as
    :func:`fit_model` sets it for a shipped model. ``on_fold(subject)`` is called as folds
    finish (progress bars).
    """
    from joblib import Parallel, delayed

    gate = gate or GateConfig()
    baseline = baseline or BaselineConfig()
    build = make or (lambda s: make_classifier(seed=s))
    d = _design(data, feature_names=feature_names, gate=gate, baseline=baseline)
    subjects = sorted(set(d.groups.tolist()))  # subjects with estimated labelled windows

    def fold(subject: str) -> tuple[str, np.ndarray, float, str]:
        tr = (d.groups != subject) & d.train
        # Parallel folds each get one OpenMP thread: oversubscribed tree fitting spins badly.
        with ThreadpoolController().limit(limits=1 if n_jobs != 1 else None, user_api="openmp"):
            clf = build(seed).fit(d.x[tr], d.y[tr], groups=d.groups[tr])
            te = d.groups == subject
            return (subject, clf.predict_proba(d.x[te])[:, 1], float(d.y[tr].mean()),
                    str(getattr(clf, "best_name_", type(clf).__name__)))

    if len(np.unique(d.y)) < 2:
        raise ValueError(
            "no labelled windows of both classes to evaluate (labels that cover no estimated "
            f"window?): {int(d.y.size)} labelled windows"
        )
    results = []
    for r in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        delayed(fold)(s) for s in subjects
    ):
        results.append(r)
        if on_fold is not None:
            on_fold(r[0])
    results.sort(key=lambda r: r[0])
    report = _report(d, [r[:3] for r in results],
                     protocol="leave-one-subject-out, model selection nested in each fold; "
                     "windows 60 s every 5 s; labels by majority")
    report.selected = {r[0]: r[3] for r in results}
    return report


def _report(
    d: _Design, results: Sequence[tuple[str, np.ndarray, float]], *, protocol: str
) -> LosoReport:
    p_all = np.full(len(d.y), np.nan)
    thr_all = np.full(len(d.y), np.nan)
    per_subject: dict[str, dict[str, float | None]] = {}
    predictions: dict[str, list[tuple[int, int, float, str]]] = {}
    for subject, p, threshold in results:
        te = d.groups == subject
        p_all[te] = p
        thr_all[te] = threshold
        per_subject[subject] = _scores(d.y[te], p, threshold)
        predictions[subject] = [
            (int(e), int(y), float(q), str(t))
            for e, y, q, t in zip(d.end_ns[te], d.y[te], p, d.tasks[te], strict=True)
        ]
    for subject in d.withheld:  # subjects with no estimated labelled window: say so
        per_subject.setdefault(subject, _scores(np.zeros(0, int), np.zeros(0), 0.5))
    pred = p_all >= thr_all
    per_task = {t: float(pred[d.tasks == t].mean()) for t in sorted(set(d.tasks.tolist())) if t}
    return LosoReport(
        pooled=_scores(d.y, p_all, thr_all),
        per_subject=per_subject,
        per_task_stress_rate=per_task,
        withheld=d.withheld,
        predictions=predictions,
        protocol=protocol,
        confusion=confusion(d.y, pred),
        reliability=reliability(d.y, p_all),
    )


def external_evaluate(data: Sequence[LabelledWindows], model: StressModel) -> LosoReport:
    """Score a fixed, already-trained model on labelled recordings it never saw.

    Every window goes through the model's own gate, personal baseline and threshold, exactly as
    in live use (external validation: nothing is fitted on ``data``).

    Example
    -------
    >>> external_evaluate(data, load_model("default")).pooled  # doctest: +SKIP
    """
    if model.classifier is None:
        raise ValueError("the model has no classifier to evaluate")
    d = _design(data, feature_names=model.feature_names, gate=model.gate,
                baseline=model.baseline)
    if d.y.size == 0:
        raise ValueError("no labelled window was estimated: nothing to evaluate (labels that "
                         "cover no window, or every window withheld)")
    threshold = model.gate.stress_threshold
    results = []
    for subject in sorted(set(d.groups.tolist())):
        te = d.groups == subject
        with ThreadpoolController().limit(limits=1, user_api="openmp"):
            p = model.classifier.predict_proba(d.x[te])[:, 1]
        results.append((subject, p, threshold))
    return _report(d, results, protocol=f"fixed model {model.version} applied to held-out "
                   "recordings (external validation); windows 60 s every 5 s")


def fit_model(
    data: Sequence[LabelledWindows],
    *,
    feature_names: Sequence[str] = DEFAULT_FEATURES,
    gate: GateConfig | None = None,
    baseline: BaselineConfig | None = None,
    seed: int = 0,
) -> StressModel:
    """Fit the pre-registered model on all of ``data`` (for shipping, not for scoring)."""
    gate = gate or GateConfig()
    baseline = baseline or BaselineConfig()
    d = _design(data, feature_names=feature_names, gate=gate, baseline=baseline)
    gate = replace(gate, stress_threshold=float(d.y[d.train].mean()))
    if len(np.unique(d.y[d.train])) < 2:
        raise ValueError("training data needs both stress and non_stress windows")
    clf = make_classifier(seed=seed).fit(d.x[d.train], d.y[d.train],
                                         groups=d.groups[d.train])
    manifest: dict[str, Any] = {
        "training_subjects": sorted(set(d.groups.tolist())),
        "training_windows": int(d.train.sum()),
        "seed": seed,
        "classifier": f"ModelSearch -> {clf.best_name_} (StressClassifier "
                      f"{clf.best_estimator_.get_params()['family']}) + sigmoid calibration "
                      "(GroupKFold by subject)",
        "selection_inner_auroc": clf.cv_auroc_,
    }
    return StressModel(
        classifier=clf, feature_names=list(feature_names), gate=gate, baseline=baseline,
        manifest=manifest,
    )
