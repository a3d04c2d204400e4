"""Training and leave-one-subject-out (LOSO) evaluation of state models.

Every window of every subject goes through the same :class:`SubjectEstimator` gating and personal
baseline as in live use; only windows that would be estimated live are used for training and
scored. Each channel variant (:data:`~wearemo.model.estimator.VARIANTS`) is trained on every
window that has its channels, and a window is scored by the variant live use would route it to.
LOSO trains on all subjects but one and scores that one, for each subject in turn; the held-out
subject never contributes to training, calibration or the choice of model (the model search of
:func:`make_classifier` runs inside each fold, on the fold's training subjects only).

Targets (:data:`~wearemo.model.estimator.Target`): ``stress`` (a window is ``stress`` when its
label is ``stress``, ``non_stress`` otherwise), ``affect`` (the classes of the ``label`` column,
e.g. WESAD's baseline / stress / amusement), ``task`` (the classes of the ``task`` column) and
``valence`` (``high`` / ``low`` valence ratings around the scale's midpoint).

Example
-------
>>> data = [LabelledWindows("s1", windows, labels, tasks, train_mask)]  # doctest: +SKIP
>>> report = loso_evaluate(data)  # doctest: +SKIP
>>> model = fit_model(data)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from threadpoolctl import ThreadpoolController

from wearemo.features.window import FeatureWindow
from wearemo.model.artifact import StressModel
from wearemo.model.baseline import BaselineConfig
from wearemo.model.estimator import (
    TARGETS,
    VARIANTS,
    GateConfig,
    SubjectEstimator,
    Variant,
    VariantSpec,
    route,
)
from wearemo.model.selection import ModelSearch

__all__ = [
    "VALENCE_MIDPOINT",
    "FixedModelReport",
    "LabelledWindows",
    "LosoReport",
    "confusion",
    "evaluate_fixed",
    "expected_calibration_error",
    "external_evaluate",
    "fit_model",
    "loso_evaluate",
    "make_classifier",
    "reliability",
    "target_classes",
]

#: Default midpoint of valence ratings: the 9-point Self-Assessment Manikin (Bradley & Lang
#: 1994), used by DEAP and WESAD; ratings above it are ``high``, below it ``low``, at it unused.
VALENCE_MIDPOINT = 5.0


@dataclass(slots=True)
class LabelledWindows:
    """One subject's feature windows (time order) with their labels.

    ``labels[i]`` is the window's label (``"stress"``, ``"non_stress"``, a dataset's own affect
    label, or ``None``: unlabelled); ``tasks[i]`` the protocol task; ``train_mask[i]`` is True
    when the window lies (almost) wholly in one labelled segment, so windows straddling a
    boundary are scored but not learned from; ``valence[i]`` the valence rating of the
    window's segment, when the dataset has ratings.
    """

    subject_id: str
    windows: list[FeatureWindow]
    labels: list[str | None]
    tasks: list[str | None]
    train_mask: list[bool]
    valence: list[float | None] | None = None


def _window_targets(
    lw: LabelledWindows, target: str, valence_midpoint: float
) -> list[str | None]:
    if target == "stress":
        return [None if lab is None else "stress" if lab == "stress" else "non_stress"
                for lab in lw.labels]
    if target == "affect":
        return list(lw.labels)
    if target == "task":
        return [t or None for t in lw.tasks]
    if target == "valence":
        ratings = lw.valence or [None] * len(lw.windows)
        return [None if v is None or not math.isfinite(v) or v == valence_midpoint
                else "high" if v > valence_midpoint else "low" for v in ratings]
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def target_classes(
    data: Sequence[LabelledWindows], target: str, *, valence_midpoint: float = VALENCE_MIDPOINT
) -> tuple[str, ...]:
    """The classes a model of ``target`` has on ``data`` (probability-column order).

    ``stress`` is always ``("non_stress", "stress")`` and ``valence`` ``("low", "high")``;
    ``affect`` and ``task`` take the sorted labels present.

    >>> lw = LabelledWindows("s", [], ["amusement", "stress", None], ["a", "b", ""], [])
    >>> target_classes([lw], "affect"), target_classes([lw], "stress")
    (('amusement', 'stress'), ('non_stress', 'stress'))
    """
    if target == "stress":
        return ("non_stress", "stress")
    if target == "valence":
        return ("low", "high")
    found = {t for lw in data for t in _window_targets(lw, target, valence_midpoint) if t}
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return tuple(sorted(found))


@dataclass(slots=True)
class _Design:
    x: np.ndarray  # rows x names
    names: list[str]
    y: np.ndarray  # class index
    classes: tuple[str, ...]
    train: np.ndarray
    groups: np.ndarray
    tasks: np.ndarray
    end_ns: np.ndarray
    avail: np.ndarray  # rows x variants: the window has the variant's channels
    withheld: dict[str, dict[str, int]] = field(default_factory=dict)

    def cols(self, spec: VariantSpec) -> list[int]:
        return [self.names.index(n) for n in spec.feature_names]


def _design(
    data: Sequence[LabelledWindows],
    *,
    specs: Sequence[VariantSpec],
    gate: GateConfig,
    baseline: BaselineConfig,
    target: str = "stress",
    valence_midpoint: float = VALENCE_MIDPOINT,
) -> _Design:
    names = list(dict.fromkeys(n for s in specs for n in s.feature_names))
    classes = target_classes(data, target, valence_midpoint=valence_midpoint)
    index = {c: i for i, c in enumerate(classes)}
    # Routing needs only each variant's channel groups; a stub per spec does it.
    stubs = [Variant(s, None, ()) for s in specs]  # type: ignore[arg-type]
    rows: list[list[float]] = []
    y: list[int] = []
    train: list[bool] = []
    groups: list[str] = []
    tasks: list[str] = []
    ends: list[int] = []
    avail: list[list[bool]] = []
    withheld: dict[str, dict[str, int]] = {}
    for subj in data:
        est = SubjectEstimator.with_baseline(subj.subject_id, gate=gate, baseline=baseline)
        counts: dict[str, int] = {}
        targets = _window_targets(subj, target, valence_midpoint)
        for w, label, task, pure in zip(subj.windows, targets, subj.tasks, subj.train_mask,
                                        strict=True):
            inputs, reason = est.assess(w)
            if inputs is None:
                key = (reason or "").split(":")[0].split(" (")[0]
                counts[key] = counts.get(key, 0) + 1
                continue
            ok = [route(inputs, [v]) is not None for v in stubs]
            if not any(ok):
                counts["no variant for the channels"] = counts.get(
                    "no variant for the channels", 0) + 1
                continue
            if label is None:
                continue
            rows.append([inputs.get(n, math.nan) for n in names])
            y.append(index[label])
            train.append(pure)
            groups.append(subj.subject_id)
            tasks.append(task or "")
            ends.append(w.end_ns)
            avail.append(ok)
        withheld[subj.subject_id] = counts
    return _Design(
        x=np.asarray(rows, dtype=float).reshape(-1, len(names)),
        names=names,
        y=np.asarray(y, dtype=int),
        classes=classes,
        train=np.asarray(train, dtype=bool),
        groups=np.asarray(groups),
        tasks=np.asarray(tasks),
        end_ns=np.asarray(ends, dtype=np.int64),
        avail=np.asarray(avail, dtype=bool).reshape(-1, len(specs)),
        withheld=withheld,
    )


def _specs(
    variants: Sequence[VariantSpec] | None, feature_names: Sequence[str] | None
) -> tuple[VariantSpec, ...]:
    if feature_names is not None:
        if variants is not None:
            raise ValueError("give variants or feature_names, not both")
        return (VariantSpec("custom", (), tuple(feature_names)),)
    specs = tuple(variants if variants is not None else VARIANTS)
    if not specs:
        raise ValueError("need at least one variant")
    return specs


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

    For more than two classes pass ``y`` = whether the top class was right and ``p`` its
    probability (top-label calibration).

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


def _calibration_pair(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, probability) pairs the calibration is measured on: p(stress) for two classes,
    the top-label confidence and whether it was right otherwise."""
    if proba.shape[1] == 2:
        return y.astype(float), proba[:, 1]
    top = np.argmax(proba, axis=1)
    return (top == y).astype(float), proba[np.arange(len(y)), top]


def _predict(proba: np.ndarray, priors: np.ndarray) -> np.ndarray:
    return np.argmax(proba / np.maximum(priors, 1e-12), axis=1)


def _scores(y: np.ndarray, proba: np.ndarray, priors: np.ndarray) -> dict[str, float | None]:
    """Pooled metrics of class probabilities ``proba`` (rows x classes) with per-row priors."""
    n_classes = proba.shape[1]
    if len(y) == 0:
        return {"n": 0, "balanced_accuracy": None, "accuracy": None, "macro_f1": None,
                "auroc": None, "ece": None}
    pred = _predict(proba, priors)
    present = np.unique(y)
    several = present.size >= 2
    auroc = None
    if n_classes == 2 and several:
        auroc = float(roc_auc_score(y, proba[:, 1]))
    elif several and present.size == n_classes:
        norm = proba / np.maximum(proba.sum(axis=1, keepdims=True), 1e-12)
        auroc = float(roc_auc_score(y, norm, multi_class="ovr", average="macro"))
    outcome, conf = _calibration_pair(y, proba)
    return {
        "n": len(y),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if several else None,
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=present)) if several
        else None,
        "auroc": auroc,
        "ece": expected_calibration_error(outcome, conf),
    }


def _bootstrap_ci(values: Sequence[float], *, n: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of the mean over subjects (subjects resampled)."""
    if len(values) < 3:
        return None
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n, len(v)))
    means = v[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _pooled_ci(
    y: np.ndarray, proba: np.ndarray, priors: np.ndarray, groups: np.ndarray, *,
    n: int = 500, seed: int = 0,
) -> dict[str, list[float]]:
    """95% cluster-bootstrap intervals of the pooled metrics (subjects resampled with their
    windows; Field & Welsh 2007), so the interval reflects how much the score depends on
    which people were recruited."""
    subjects = np.unique(groups)
    if subjects.size < 3:
        return {}
    rows = [np.flatnonzero(groups == s) for s in subjects]
    rng = np.random.default_rng(seed)
    keys = ("balanced_accuracy", "macro_f1", "auroc", "ece")
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n):
        pick = np.concatenate([rows[i] for i in rng.integers(0, subjects.size, subjects.size)])
        s = _scores(y[pick], proba[pick], priors[pick])
        for k in keys:
            v = s[k]
            if v is not None:
                draws[k].append(v)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            for k, v in draws.items() if len(v) >= n // 2}


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
    subject, per task and per channel variant, with the pooled confusion matrix and
    reliability bins.

    ``per_variant`` scores each variant on *every* window that has its channels (what a device
    with only those channels would get); ``routed`` counts the windows each variant scored in
    the pooled figures (what live routing does with this data).
    """

    target: str
    classes: tuple[str, ...]
    pooled: dict[str, float | None]
    pooled_ci95: dict[str, list[float]]
    per_subject: dict[str, dict[str, float | None]]
    per_task: dict[str, dict[str, float]]
    withheld: dict[str, dict[str, int]]
    predictions: dict[str, list[tuple[int, int, list[float], str, str]]]
    protocol: str
    confusion_matrix: list[list[int]] = field(default_factory=list)
    reliability: list[dict[str, float]] = field(default_factory=list)
    per_variant: dict[str, dict[str, float | None]] = field(default_factory=dict)
    routed: dict[str, int] = field(default_factory=dict)
    selected: dict[str, dict[str, str]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what goes into the manifest and the README)."""
        bal = [s["balanced_accuracy"] for s in self.per_subject.values()
               if s["balanced_accuracy"] is not None]
        scored = {k: v["balanced_accuracy"] for k, v in self.per_subject.items()
                  if v["balanced_accuracy"] is not None}
        worst = min(scored, key=lambda k: scored[k]) if scored else None
        counts: dict[str, dict[str, int]] = {}
        for chosen in self.selected.values():
            for variant, name in chosen.items():
                counts.setdefault(variant, {})
                counts[variant][name] = counts[variant].get(name, 0) + 1
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "target": self.target,
            "classes": list(self.classes),
            "pooled": self.pooled,
            "pooled_ci95": self.pooled_ci95,
            "confusion_matrix": {"classes": list(self.classes), "rows_true_cols_predicted":
                                 self.confusion_matrix},
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
            "per_task_predicted": self.per_task,
            "per_variant": self.per_variant,
            "routed_windows": self.routed,
            "per_subject": self.per_subject,
            "withheld": self.withheld,
            "selected_model_per_fold": self.selected,
            "selected_model_counts": counts,
        }
        if self.classes == ("non_stress", "stress"):
            m = self.confusion_matrix
            out["confusion"] = ({"tn": m[0][0], "fp": m[0][1], "fn": m[1][0], "tp": m[1][1]}
                                if m else {})
            out["per_task_predicted_stress_rate"] = {
                t: rates.get("stress", 0.0) for t, rates in self.per_task.items()}
        return out


def _fold_probabilities(clf: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` spread onto all classes (a fold may lack a class in training)."""
    p = np.asarray(clf.predict_proba(x))
    out = np.zeros((x.shape[0], n_classes))
    out[:, np.asarray(clf.classes_, dtype=int)] = p
    return out


@dataclass(slots=True)
class _Fold:
    subject: str
    # variant name -> (test-row indices it can score, probabilities, training priors, model)
    scored: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]]


def loso_evaluate(
    data: Sequence[LabelledWindows],
    *,
    target: str = "stress",
    variants: Sequence[VariantSpec] | None = None,
    feature_names: Sequence[str] | None = None,
    gate: GateConfig | None = None,
    baseline: BaselineConfig | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    make: Callable[[int], Any] | None = None,
    on_fold: Callable[[str], None] | None = None,
    valence_midpoint: float = VALENCE_MIDPOINT,
) -> LosoReport:
    """Score the pre-registered model leave-one-subject-out on ``data``.

    In each fold every variant fits ``make(seed)`` (default :func:`make_classifier`, whose
    model search runs inside the fold, on its training subjects only) on the training subjects'
    windows that have its channels, and scores the held-out subject. Each held-out window is
    then scored by the variant live routing picks for it, and classes are decided with the
    training class prevalences of that variant, as :func:`fit_model` sets them for a shipped
    model. ``feature_names`` instead of ``variants`` makes one variant that needs no channel
    group. ``on_fold(subject)`` is called as folds finish (progress bars).

    Example
    -------
    >>> loso_evaluate(data, n_jobs=2).summary()["pooled"]["balanced_accuracy"]  # doctest: +SKIP
    0.7
    """
    from joblib import Parallel, delayed

    gate = gate or GateConfig()
    baseline = baseline or BaselineConfig()
    specs = _specs(variants, feature_names)
    build = make or (lambda s: make_classifier(seed=s))
    d = _design(data, specs=specs, gate=gate, baseline=baseline, target=target,
                valence_midpoint=valence_midpoint)
    n_classes = len(d.classes)
    subjects = sorted(set(d.groups.tolist()))  # subjects with estimated labelled windows
    if len(np.unique(d.y)) < 2:
        raise ValueError(
            f"no labelled windows of two {target} classes to evaluate (labels that cover no "
            f"estimated window?): {int(d.y.size)} labelled windows, classes found "
            f"{sorted({d.classes[i] for i in d.y.tolist()})}"
        )

    def fold(subject: str) -> _Fold:
        out = _Fold(subject, {})
        # Parallel folds each get one OpenMP thread: oversubscribed tree fitting spins badly.
        with ThreadpoolController().limit(limits=1 if n_jobs != 1 else None, user_api="openmp"):
            for k, spec in enumerate(specs):
                tr = (d.groups != subject) & d.train & d.avail[:, k]
                te = np.flatnonzero((d.groups == subject) & d.avail[:, k])
                if te.size == 0 or np.unique(d.y[tr]).size < 2:
                    continue
                cols = d.cols(spec)
                clf = build(seed).fit(d.x[tr][:, cols], d.y[tr], groups=d.groups[tr])
                priors = np.bincount(d.y[tr], minlength=n_classes) / tr.sum()
                proba = _fold_probabilities(clf, d.x[te][:, cols], n_classes)
                out.scored[spec.name] = (te, proba, priors,
                                         str(getattr(clf, "best_name_", type(clf).__name__)))
        return out

    folds: list[_Fold] = []
    for f in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        delayed(fold)(s) for s in subjects
    ):
        folds.append(f)
        if on_fold is not None:
            on_fold(f.subject)
    folds.sort(key=lambda f: f.subject)
    report = _report(d, specs, folds, target=target,
                     protocol="leave-one-subject-out, model selection nested in each fold; "
                     "windows 60 s every 5 s; labels by majority")
    report.selected = {f.subject: {v: s[3] for v, s in f.scored.items()} for f in folds}
    return report


def _report(
    d: _Design, specs: Sequence[VariantSpec], folds: Sequence[_Fold], *, target: str,
    protocol: str,
) -> LosoReport:
    n, c = len(d.y), len(d.classes)
    proba = np.full((n, c), np.nan)
    priors = np.full((n, c), np.nan)
    used = np.full(n, "", dtype=object)
    per_variant_rows: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for f in folds:
        for spec in specs:  # routing order: the first variant that scored a row keeps it
            if spec.name not in f.scored:
                continue
            rows, p, pri, _ = f.scored[spec.name]
            per_variant_rows.setdefault(spec.name, []).append((rows, p, pri))
            free = np.isnan(proba[rows, 0])
            proba[rows[free]] = p[free]
            priors[rows[free]] = pri
            used[rows[free]] = spec.name
    scored = ~np.isnan(proba[:, 0])  # rows of subjects with no usable fold stay unscored
    y, pr, pi = d.y[scored], proba[scored], priors[scored]
    per_subject: dict[str, dict[str, float | None]] = {}
    predictions: dict[str, list[tuple[int, int, list[float], str, str]]] = {}
    for subject in sorted(set(d.groups.tolist()) | set(d.withheld)):
        m = scored & (d.groups == subject)
        per_subject[subject] = _scores(d.y[m], proba[m], priors[m])
        predictions[subject] = [
            (int(e), int(t), [round(float(v), 6) for v in q], str(task), str(v))
            for e, t, q, task, v in zip(d.end_ns[m], d.y[m], proba[m], d.tasks[m], used[m],
                                        strict=True)
        ]
    pred = _predict(pr, pi) if len(y) else np.zeros(0, int)
    tasks = d.tasks[scored]
    per_task = {
        t: {d.classes[k]: float((pred[tasks == t] == k).mean()) for k in range(c)}
        for t in sorted(set(tasks.tolist())) if t
    }
    matrix = [[int(((y == i) & (pred == j)).sum()) for j in range(c)] for i in range(c)]
    outcome, conf = _calibration_pair(y, pr) if len(y) else (np.zeros(0), np.zeros(0))
    per_variant = {}
    for name, parts in per_variant_rows.items():
        rows = np.concatenate([r for r, _, _ in parts])
        p = np.concatenate([q for _, q, _ in parts])
        pri = np.concatenate([np.repeat(q[None], len(r), axis=0) for r, _, q in parts])
        per_variant[name] = _scores(d.y[rows], p, pri)
    return LosoReport(
        target=target,
        classes=d.classes,
        pooled=_scores(y, pr, pi),
        pooled_ci95=_pooled_ci(y, pr, pi, d.groups[scored]),
        per_subject=per_subject,
        per_task=per_task,
        withheld=d.withheld,
        predictions=predictions,
        protocol=protocol,
        confusion_matrix=matrix,
        reliability=reliability(outcome, conf),
        per_variant=per_variant,
        routed={s.name: int((used == s.name).sum()) for s in specs if (used == s.name).any()},
    )


def external_evaluate(
    data: Sequence[LabelledWindows], model: StressModel, *,
    valence_midpoint: float = VALENCE_MIDPOINT, protocol: str | None = None,
) -> LosoReport:
    """Score a fixed, already-trained model on labelled recordings it never saw.

    Every window goes through the model's own gate, personal baseline, variant routing and
    class priors, exactly as in live use (external validation: nothing is fitted on ``data``).
    Whether the model really never saw ``data`` is the caller's to check (see
    :func:`evaluate_fixed`); ``protocol`` replaces the report's protocol sentence.

    Example
    -------
    >>> external_evaluate(data, load_model("default")).pooled  # doctest: +SKIP
    """
    specs = [v.spec for v in model.variants]
    d = _design(data, specs=specs, gate=model.gate, baseline=model.baseline,
                target=model.target, valence_midpoint=valence_midpoint)
    if d.y.size == 0:
        raise ValueError("no labelled window was estimated: nothing to evaluate (labels that "
                         "cover no window, or every window withheld)")
    unknown = set(d.classes) - set(model.classes)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not classes of model {model.version} "
                         f"({list(model.classes)})")
    # Re-index the data's classes onto the model's.
    remap = np.array([model.classes.index(c) for c in d.classes], dtype=int)
    d.y = remap[d.y]
    d.classes = tuple(model.classes)
    folds = []
    for subject in sorted(set(d.groups.tolist())):
        f = _Fold(subject, {})
        for k, v in enumerate(model.variants):
            rows = np.flatnonzero((d.groups == subject) & d.avail[:, k])
            if rows.size == 0:
                continue
            with ThreadpoolController().limit(limits=1, user_api="openmp"):
                p = _fold_probabilities(v.classifier, d.x[rows][:, d.cols(v.spec)],
                                        len(model.classes))
            f.scored[v.spec.name] = (rows, p, np.asarray(v.priors), "fixed")
        folds.append(f)
    return _report(d, specs, folds, target=model.target,
                   protocol=protocol or f"fixed model {model.version} applied to held-out "
                   "recordings (external validation); windows 60 s every 5 s")


@dataclass(slots=True)
class FixedModelReport:
    """A fixed model scored on recordings, split by whether it was trained on them.

    Only ``unseen`` is external validation; ``seen`` holds the recordings the model was
    trained on, scored the same way but in-sample (optimistic, not validation).

    Attributes
    ----------
    model_version
        The scored model.
    unseen, seen
        The two parts' reports (None when a part is empty or has no scorable window).
    overlap
        Evaluated subject -> the training subject whose data it holds.
    unseen_subjects
        Evaluated subjects not in the training data.
    method
        How seen recordings were told apart (content fingerprints or subject ids).
    notes
        Why a non-empty part has no report.
    """

    model_version: str
    unseen: LosoReport | None
    seen: LosoReport | None
    overlap: dict[str, str]
    unseen_subjects: list[str]
    method: str
    notes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``external_validation`` (unseen) and ``in_sample`` (seen) summaries."""
        n_seen, n_unseen = len(self.overlap), len(self.unseen_subjects)
        first = self.unseen or self.seen
        out: dict[str, Any] = {
            "protocol": f"fixed model {self.model_version} applied to {n_seen + n_unseen} "
                        f"recordings: {n_unseen} not in its training data (external "
                        f"validation), {n_seen} in its training data (in-sample, not "
                        "validation); windows 60 s every 5 s",
            "target": first.target if first else None,
            "classes": list(first.classes) if first else [],
            "training_overlap": {"method": self.method, "seen": dict(self.overlap),
                                 "unseen": list(self.unseen_subjects)},
            "external_validation": self.unseen.summary() if self.unseen else None,
            "in_sample": self.seen.summary() if self.seen else None,
        }
        if self.notes:
            out["notes"] = dict(self.notes)
        return out


def evaluate_fixed(
    data: Sequence[LabelledWindows],
    model: StressModel,
    *,
    seen: Mapping[str, str],
    method: str,
    valence_midpoint: float = VALENCE_MIDPOINT,
) -> FixedModelReport:
    """Score a fixed model on recordings, the ones it was trained on apart from the others.

    ``seen`` maps the subjects of ``data`` whose recordings are in the model's training data
    to the training subject they match (``wearemo.batch.training_overlap``); ``method`` says
    how that was decided. Each part is scored as :func:`external_evaluate` does; only the
    unseen part is external validation.

    Raises
    ------
    ValueError
        Neither part has a labelled window the model estimates.

    Example
    -------
    >>> r = evaluate_fixed(data, load_model("default"), seen={"X9": "S02"},
    ...                    method="recording content")                   # doctest: +SKIP
    >>> r.summary()["in_sample"]["per_subject"].keys()                    # doctest: +SKIP
    dict_keys(['X9'])
    """
    unseen_data = [d for d in data if d.subject_id not in seen]
    seen_data = [d for d in data if d.subject_id in seen]
    parts: dict[str, LosoReport | None] = {}
    notes: dict[str, str] = {}
    protocols = {
        "external_validation": f"fixed model {model.version} applied to recordings it was not "
                               "trained on (external validation); windows 60 s every 5 s",
        "in_sample": f"fixed model {model.version} applied to recordings it was trained on "
                     "(in-sample: optimistic, NOT validation); windows 60 s every 5 s",
    }
    for name, part in (("external_validation", unseen_data), ("in_sample", seen_data)):
        parts[name] = None
        if not part:
            continue
        try:
            parts[name] = external_evaluate(part, model, valence_midpoint=valence_midpoint,
                                            protocol=protocols[name])
        except ValueError as exc:
            notes[name] = str(exc)
    if parts["external_validation"] is None and parts["in_sample"] is None:
        raise ValueError("; ".join(notes.values()) or "no recordings to evaluate")
    return FixedModelReport(
        model_version=model.version, unseen=parts["external_validation"],
        seen=parts["in_sample"],
        overlap={d.subject_id: seen[d.subject_id] for d in seen_data},
        unseen_subjects=[d.subject_id for d in unseen_data], method=method, notes=notes)


def fit_model(
    data: Sequence[LabelledWindows],
    *,
    target: str = "stress",
    variants: Sequence[VariantSpec] | None = None,
    feature_names: Sequence[str] | None = None,
    gate: GateConfig | None = None,
    baseline: BaselineConfig | None = None,
    seed: int = 0,
    valence_midpoint: float = VALENCE_MIDPOINT,
    make: Callable[[int], Any] | None = None,
) -> StressModel:
    """Fit the pre-registered model on all of ``data`` (for shipping, not for scoring).

    Each variant is fitted on every training window that has its channels; a variant with no
    such windows of two classes is left out (the model then cannot score those channels and
    says so in its states).

    Example
    -------
    >>> model = fit_model(data, target="affect")  # doctest: +SKIP
    >>> model.classes                             # doctest: +SKIP
    ('amusement', 'baseline', 'stress')
    """
    gate = gate or GateConfig()
    baseline = baseline or BaselineConfig()
    specs = _specs(variants, feature_names)
    d = _design(data, specs=specs, gate=gate, baseline=baseline, target=target,
                valence_midpoint=valence_midpoint)
    if len(np.unique(d.y[d.train])) < 2:
        raise ValueError(f"training data needs windows of at least two {target} classes "
                         f"(found {sorted({d.classes[i] for i in d.y[d.train].tolist()})})")
    fitted: list[Variant] = []
    info: list[dict[str, Any]] = []
    for k, spec in enumerate(specs):
        tr = d.train & d.avail[:, k]
        if np.unique(d.y[tr]).size < 2:
            continue
        clf = (make or (lambda s: make_classifier(seed=s)))(seed).fit(
            d.x[tr][:, d.cols(spec)], d.y[tr], groups=d.groups[tr])
        priors = tuple(float(v) for v in np.bincount(d.y[tr], minlength=len(d.classes))
                       / tr.sum())
        fitted.append(Variant(spec, clf, priors))
        chosen: Any = getattr(clf, "best_estimator_", clf)
        info.append({
            "name": spec.name, "training_windows": int(tr.sum()),
            "training_subjects": len(set(d.groups[tr].tolist())),
            "selected": f"{getattr(clf, 'best_name_', type(clf).__name__)} (StressClassifier "
                        f"{chosen.get_params().get('family', '?')}) + sigmoid calibration "
                        "(GroupKFold by subject)",
            "selection_inner_auroc": getattr(clf, "cv_auroc_", {}),
        })
    manifest: dict[str, Any] = {
        "training_subjects": sorted(set(d.groups.tolist())),
        "training_windows": int(d.train.sum()),
        "seed": seed,
        "classifier": "ModelSearch per variant (model family and settings chosen by inner "
                      "group-wise AUROC), sigmoid-calibrated across subjects",
        "variant_training": info,
    }
    if target == "valence":
        manifest["valence_midpoint"] = valence_midpoint
    return StressModel(variants=fitted, target=target, classes=d.classes, gate=gate,
                       baseline=baseline, manifest=manifest)
