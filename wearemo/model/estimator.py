"""Per-subject state estimation: gating, personal baseline, channel variants and explanations.

One :class:`SubjectEstimator` per subject turns the feature windows of that subject, in time
order, into :class:`~wearemo.model.state.StateEstimate`s. The same object serves the live
pipeline and batch prediction/training (through :meth:`SubjectEstimator.assess`), so a recording
replayed live and processed from disk gets the same states.

Withholding comes first: a window with neither usable beats (enough of them, PPG quality) nor
EDA, with motion, or falling in the warm-up of the personal baseline is ``withheld`` with a reason,
never guessed. Otherwise each model (a :class:`Head`: stress, affect or valence) scores the window
with the first of its **variants** whose channels the window has: ``full`` (beats and EDA),
``hr_eda`` (the device's own heart rate and EDA: a wristband without beat-to-beat data),
``cardiac`` (beats only: a chest strap) or ``eda`` (EDA only). Each variant is a classifier
trained on exactly its features, so a device with fewer channels is scored by a model that
learned from those channels, not by a full model guessing at missing inputs.

Example
-------
>>> from wearemo.features.window import FeatureWindow
>>> est = SubjectEstimator("s1")
>>> est.update(FeatureWindow(subject_id="s1", start_ns=0, end_ns=60 * 10**9)).reason
'missing channels: beats, eda'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from wearemo.features.compute import FEATURE_UNITS
from wearemo.features.window import FeatureWindow
from wearemo.model.arousal import ArousalConfig, arousal_score
from wearemo.model.baseline import RELATIVE_FEATURES, BaselineConfig, PersonalBaseline
from wearemo.model.state import Contribution, StateEstimate

__all__ = [
    "ABSOLUTE_FEATURES",
    "CARDIAC_FEATURES",
    "CONTEXT_FEATURES",
    "DEFAULT_FEATURES",
    "EDA_FEATURES",
    "TARGETS",
    "VARIANTS",
    "GateConfig",
    "Group",
    "Head",
    "ProbabilisticClassifier",
    "SubjectEstimator",
    "Target",
    "Variant",
    "VariantSpec",
    "channels_of",
    "decide",
    "describe_deviation",
    "route",
]

#: What a model estimates: ``stress`` (stress vs non_stress from the ``label`` column),
#: ``affect`` (the classes of a dataset's ``label`` column, e.g. baseline/stress/amusement),
#: ``task`` (the classes of the ``task`` column) or ``valence`` (low/high from valence ratings).
Target = Literal["stress", "affect", "task", "valence"]
TARGETS: tuple[str, ...] = ("stress", "affect", "task", "valence")

#: Channel groups a variant can require: usable beats (HR + HRV), usable EDA, the device's own
#: heart rate (``hr`` channel).
Group = Literal["beats", "eda", "hr"]

#: Features used as they are: within-window slopes carry no person-level offset.
ABSOLUTE_FEATURES: tuple[str, ...] = (
    "eda_scl_slope_uS_per_min",
    "temp_slope_degC_per_min",
)

#: Beat-derived inputs (heart rate and time-domain HRV from usable beats).
CARDIAC_FEATURES: tuple[str, ...] = (
    "rel_hr_mean_bpm", "rel_hrv_meannn_ms", "rel_hrv_sdnn_ms", "rel_hrv_rmssd_ms",
    "rel_hrv_pnn50_pct", "rel_hrv_sd1_ms", "rel_hrv_sd2_ms",
)
#: Electrodermal inputs (tonic level, responses, within-window slope).
EDA_FEATURES: tuple[str, ...] = (
    "rel_eda_scl_mean_uS", "rel_eda_scr_rate_per_min", "rel_eda_scr_amp_mean_uS",
    "rel_eda_phasic_auc_uS_s", "eda_scl_slope_uS_per_min",
)
#: Inputs any variant may use when present (activity, skin-temperature slope). The skin
#: temperature *level* is left out: it drifts with wear time, which in a fixed protocol tracks
#: the labels.
CONTEXT_FEATURES: tuple[str, ...] = ("rel_acc_activity_g", "temp_slope_degC_per_min")

#: Model inputs of the ``full`` variant (session time is deliberately absent: the Stress-Predict
#: protocol is fixed, so time alone would "predict" stress).
DEFAULT_FEATURES: tuple[str, ...] = (*CARDIAC_FEATURES, *EDA_FEATURES, *CONTEXT_FEATURES)

# The feature whose presence (finite, baseline-relative) shows a group is usable in a window.
_ANCHOR: dict[str, str] = {
    "beats": "hr_mean_bpm", "eda": "eda_scl_mean_uS", "hr": "hr_device_mean_bpm",
}


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """A model variant before fitting: the channel groups it needs and its inputs.

    Attributes
    ----------
    name
        ``full``, ``hr_eda``, ``cardiac``, ``eda`` (or your own).
    requires
        Channel groups (:data:`Group`) a window must have for this variant to score it.
    feature_names
        Its inputs, in column order (``rel_`` names are baseline-relative).
    """

    name: str
    requires: tuple[str, ...]
    feature_names: tuple[str, ...]

    def raw(self) -> VariantSpec:
        """The same variant on raw levels (the no-personal-baseline ablation).

        >>> VARIANTS[3].raw().feature_names[0]
        'eda_scl_mean_uS'
        """
        return VariantSpec(self.name, self.requires,
                           tuple(n.removeprefix("rel_") for n in self.feature_names))


#: The variants a trained model has, in routing order: the first whose groups a window has
#: scores it.
VARIANTS: tuple[VariantSpec, ...] = (
    VariantSpec("full", ("beats", "eda"), DEFAULT_FEATURES),
    VariantSpec("hr_eda", ("hr", "eda"),
                ("rel_hr_device_mean_bpm", *EDA_FEATURES, *CONTEXT_FEATURES)),
    VariantSpec("cardiac", ("beats",), (*CARDIAC_FEATURES, *CONTEXT_FEATURES)),
    VariantSpec("eda", ("eda",), (*EDA_FEATURES, *CONTEXT_FEATURES)),
)


# One row at a time gains nothing from OpenMP threads, and on a busy machine the tree
# ensemble's parallel regions made single-row predictions 100x slower (seen under test load).
_THREADS = ThreadpoolController()


class ProbabilisticClassifier(Protocol):
    """What the estimator needs of a fitted scikit-learn classifier."""

    def predict_proba(self, x: Any) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Variant:
    """A fitted variant: its spec, classifier and the class prevalences it was trained on.

    ``priors`` set the decision (:func:`decide`): with calibrated probabilities, choosing the
    class with the largest ``p / prior`` weighs every class's misses equally (it maximises
    balanced accuracy); for two classes it is ``p_stress >= stress prevalence``.
    """

    spec: VariantSpec
    classifier: ProbabilisticClassifier
    priors: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Head:
    """One model's contribution to a state.

    Attributes
    ----------
    target
        What it estimates (:data:`Target`).
    classes
        Class names in probability-column order (``("non_stress", "stress")`` for stress,
        ``("low", "high")`` for valence).
    variants
        Fitted variants in routing order.
    version
        The artifact version.
    """

    target: str
    classes: tuple[str, ...]
    variants: tuple[Variant, ...]
    version: str


@dataclass(frozen=True, slots=True)
class GateConfig:
    """When a window is withheld instead of estimated.

    Attributes
    ----------
    min_coverage
        Fraction of the window a required channel must cover.
    min_ppg_quality
        Lowest PPG beat quality (0..1) accepted when beats come from PPG.
    min_beats
        Fewest beat intervals needed for HRV over the window.
    """

    min_coverage: float = 0.8
    min_ppg_quality: float = 0.5
    min_beats: int = 20


def route(inputs: Mapping[str, float], variants: Sequence[Variant]) -> Variant | None:
    """The first variant whose channel groups are all present in ``inputs`` (or None).

    A group is present when its anchor input is finite: the window's channel passed the gate and
    the personal baseline has a level for it.

    >>> spec = VariantSpec("eda", ("eda",), ("rel_eda_scl_mean_uS",))
    >>> route({"rel_eda_scl_mean_uS": 0.1}, [Variant(spec, None, (0.5, 0.5))]).spec.name
    'eda'
    >>> route({"rel_eda_scl_mean_uS": math.nan}, [Variant(spec, None, (0.5, 0.5))]) is None
    True
    """
    have = _groups(inputs)
    for v in variants:
        if have.issuperset(v.spec.requires):
            return v
    return None


def _groups(inputs: Mapping[str, float]) -> set[str]:
    out = set()
    for group, anchor in _ANCHOR.items():
        value = inputs.get(f"rel_{anchor}", inputs.get(anchor, math.nan))
        if math.isfinite(value):
            out.add(group)
    return out


def decide(p: np.ndarray, priors: Sequence[float]) -> int:
    """Index of the class with the largest ``p / prior`` (prior-corrected arg-max).

    >>> decide(np.array([0.6, 0.4]), [0.7, 0.3])  # 0.4 >= the 0.3 stress prevalence
    1
    """
    pri = np.maximum(np.asarray(priors, dtype=float), 1e-12)
    return int(np.argmax(np.asarray(p, dtype=float) / pri))


@dataclass(slots=True)
class SubjectEstimator:
    """Online state estimator for one subject; feed windows in time order.

    Attributes
    ----------
    subject_id
        The subject.
    heads
        The models that score each window: at most one per target; the ``stress`` head sets
        ``state`` and ``p_stress``. Empty for gating and baseline only (training).
    gate
        When windows are withheld.
    baseline
        The subject's personal baseline (learned during warm-up or from a calibration).
    arousal
        Configuration of the a-priori arousal score (None: not computed).
    """

    subject_id: str
    heads: Sequence[Head] = ()
    gate: GateConfig = field(default_factory=GateConfig)
    baseline: PersonalBaseline = field(default_factory=PersonalBaseline)
    arousal: ArousalConfig | None = field(default_factory=ArousalConfig)

    @classmethod
    def with_baseline(
        cls,
        subject_id: str,
        *,
        heads: Sequence[Head] = (),
        gate: GateConfig,
        baseline: BaselineConfig,
    ) -> SubjectEstimator:
        """Build an estimator with a fresh personal baseline of the given configuration."""
        return cls(subject_id, tuple(heads), gate, PersonalBaseline(baseline))

    @property
    def version(self) -> str:
        """The versions of the heads, ``+``-joined (``"none"`` without heads)."""
        return "+".join(h.version for h in self.heads) or "none"

    def _beats_problem(self, w: FeatureWindow) -> str | None:
        """Why the window's HRV cannot be used (None when it can)."""
        g = self.gate
        beats_cov = max(w.coverage.get("rr", 0.0) if w.beat_source == "rr" else 0.0,
                        w.coverage.get("ppg", 0.0) if w.beat_source == "ppg" else 0.0)
        if w.beat_source == "none" or beats_cov < g.min_coverage or w.n_beats < g.min_beats:
            return "beats"
        quality = w.quality.get("ppg", math.nan)
        if w.beat_source == "ppg" and not (quality >= g.min_ppg_quality):
            return f"poor signal quality (ppg {quality:.2f} < {g.min_ppg_quality:.2f})"
        return None

    def _usable(self, w: FeatureWindow) -> tuple[dict[str, float] | None, str | None]:
        """The window's usable features, or the reason it is withheld.

        HRV, EDA and the device heart rate each count only when their channel is good enough;
        a window with beats or EDA is estimated (by the variant its channels allow), a window
        with neither is withheld.
        """
        beats = self._beats_problem(w)
        eda_ok = w.coverage.get("eda", 0.0) >= self.gate.min_coverage
        if beats is not None and not eda_ok:
            if beats == "beats":
                return None, "missing channels: beats, eda"
            return None, f"{beats}; missing channels: eda"
        if w.motion:
            return None, "motion"
        drop: tuple[str, ...] = ()
        if beats is not None:
            drop += ("hr_mean_bpm", "hrv_")
        if not eda_ok:
            drop += ("eda_",)
        if w.coverage.get("hr", 0.0) < self.gate.min_coverage:
            drop += ("hr_device_",)
        if not drop:
            return w.features, None
        return {k: v for k, v in w.features.items() if not k.startswith(drop)}, None

    def assess(self, window: FeatureWindow) -> tuple[dict[str, float] | None, str | None]:
        """Gate one window and express it against the baseline.

        Returns ``(model_inputs, None)`` when the window can be estimated, else
        ``(None, reason)``. Updates the personal baseline during warm-up, so call it once per
        window, in time order.
        """
        features, reason = self._usable(window)
        if features is None:
            return None, reason
        if not self.baseline.ready:
            self.baseline.observe(window.end_ns, features)
            if not self.baseline.ready:
                done = self.baseline.progress_s(window.end_ns)
                total = self.baseline.config.warmup_s
                return None, f"warm-up: personal baseline {done:.0f}/{total:.0f} s"
        inputs = self.baseline.relative(features)
        for name in ABSOLUTE_FEATURES:
            inputs[name] = features.get(name, math.nan)
        return inputs, None

    def calibrate(self, windows: Sequence[FeatureWindow]) -> int:
        """Set the personal baseline from the windows of a labelled calibration period.

        The windows pass the same gate as live use: withheld ones (missing channels, poor
        signal, motion) do not count. Returns how many windows were used; raises
        ``ValueError`` (baseline unchanged) when fewer than ``min_windows`` are usable.

        Example
        -------
        >>> est = SubjectEstimator("s1")
        >>> est.calibrate([])
        Traceback (most recent call last):
        ValueError: calibration period has 0 usable windows; the baseline needs at least 12
        """
        rows = [f for f, _ in map(self._usable, windows) if f is not None]
        self.baseline.calibrate(rows)
        return len(rows)

    def _not_estimated(self) -> dict[str, str]:
        have = {h.target for h in self.heads}
        out: dict[str, str] = {}
        if "stress" not in have:
            out["p_stress"] = "no stress model is loaded"
        if not have & {"affect", "task"}:
            out["affect"] = ("no affect model is loaded (train one on a dataset's own labels "
                             "with `wearemo train --target affect`)")
        if "valence" not in have:
            out["valence"] = ("not estimated: valence needs a model trained on valence labels "
                              "(`wearemo train --target valence`); arousal is not valence")
        if self.arousal is None:
            out["arousal"] = "arousal score turned off"
        return out

    def update(self, window: FeatureWindow) -> StateEstimate:
        """Estimate the state for the next window of this subject.

        Example
        -------
        >>> est = SubjectEstimator("s1")
        >>> w = FeatureWindow(subject_id="s1", start_ns=0, end_ns=60 * 10**9, motion=True,
        ...                   coverage={"eda": 1.0}, features={"eda_scl_mean_uS": 2.0})
        >>> s = est.update(w)
        >>> s.state, s.reason, s.channels_used
        ('withheld', 'motion', ['eda'])
        """
        return self.update_many([window])[0]

    def update_many(self, windows: Sequence[FeatureWindow]) -> list[StateEstimate]:
        """Estimate the states of the next windows of this subject, in order.

        The same states as calling :meth:`update` on each window in turn (gating, baseline and
        arousal run window by window), but each stress variant scores all its rows, the
        windows' and their explanations', in one ``predict_proba`` call: a forest's per-call
        overhead is paid once per batch of windows instead of once per window.

        Example
        -------
        >>> est = SubjectEstimator("s1")
        >>> w = FeatureWindow(subject_id="s1", start_ns=0, end_ns=60 * 10**9, motion=True,
        ...                   coverage={"eda": 1.0}, features={"eda_scl_mean_uS": 2.0})
        >>> [s.reason for s in est.update_many([w, w])]
        ['motion', 'motion']
        """
        out: list[StateEstimate | None] = []
        pending: list[tuple[int, Variant, np.ndarray, list[int], dict[str, Any]]] = []
        stress = next((h for h in self.heads if h.target == "stress"), None)
        for window in windows:
            inputs, reason = self.assess(window)
            common: dict[str, Any] = {
                "subject_id": self.subject_id, "window_start_ns": window.start_ns,
                "window_end_ns": window.end_ns, "model_version": self.version,
            }
            not_estimated = self._not_estimated()
            variant = None if inputs is None or stress is None else route(inputs, stress.variants)
            if inputs is None or stress is None or variant is None:
                channels = sorted(k for k, v in window.coverage.items()
                                  if v >= self.gate.min_coverage)
                if inputs is not None and stress is not None:
                    reason = (f"no variant of model {stress.version} for the channels of this "
                              f"window ({', '.join(sorted(_groups(inputs))) or 'none'})")
                out.append(StateEstimate(**common, channels_used=channels, state="withheld",
                                         reason=reason or "no model",
                                         not_estimated=not_estimated))
                continue
            x = _row(inputs, variant.spec.feature_names)
            channels = channels_of(
                [n for n, v in zip(variant.spec.feature_names, x, strict=True)
                 if math.isfinite(v)],
                beat_source=window.beat_source,
            )
            outputs: dict[str, Any] = {}
            with _THREADS.limit(limits=1, user_api="openmp"):
                for head in self.heads:
                    if head.target == "stress":
                        continue
                    hv = route(inputs, head.variants)
                    if hv is None:
                        not_estimated[_output(head.target)] = (
                            f"no variant of model {head.version} for the channels of this "
                            "window")
                        continue
                    q = np.asarray(hv.classifier.predict_proba(
                        _row(inputs, hv.spec.feature_names)[None, :]))[0]
                    if head.target == "valence":
                        outputs["valence"] = _unit(float(q[head.classes.index("high")]))
                    else:
                        outputs["affect"] = head.classes[decide(q, hv.priors)]
                        outputs["affect_p"] = {c: _unit(float(v))
                                               for c, v in zip(head.classes, q, strict=True)}
            arousal = None
            if self.arousal is not None:
                arousal = arousal_score(inputs, self.baseline, config=self.arousal)
                if arousal is None:
                    not_estimated["arousal"] = "no cardiac or EDA deviation in this window"
            rows, idx = _occlusions(variant, x)
            pending.append((len(out), variant, rows, idx, {
                **common, "channels_used": channels, "variant": variant.spec.name,
                "arousal": arousal, "not_estimated": not_estimated, **outputs}))
            out.append(None)
        if pending and stress is not None:
            k = stress.classes.index("stress")
            by_variant: dict[int, list[int]] = {}
            for j, item in enumerate(pending):
                by_variant.setdefault(id(item[1]), []).append(j)
            for js in by_variant.values():
                variant = pending[js[0]][1]
                with _THREADS.limit(limits=1, user_api="openmp"):
                    proba = np.asarray(variant.classifier.predict_proba(
                        np.concatenate([pending[j][2] for j in js])))
                at = 0
                for j in js:
                    slot, _, rows, idx, fields = pending[j]
                    p = proba[at:at + len(rows)]
                    at += len(rows)
                    contributions = _contributions(variant, rows[0], idx, p, k)
                    top = contributions[:3]
                    out[slot] = StateEstimate(
                        **fields,
                        state="stress" if decide(p[0], variant.priors) == k else "non_stress",
                        p_stress=_unit(float(p[0, k])),
                        top_features={c.feature: c.deviation for c in top},
                        explanation=top,
                    )
        return [s for s in out if s is not None]


def _output(target: str) -> str:
    return {"affect": "affect", "task": "affect", "valence": "valence"}.get(target, target)


def _unit(p: float) -> float:
    return min(max(p, 0.0), 1.0)


def _row(inputs: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    return np.array([inputs.get(n, math.nan) for n in names], dtype=float)


def _neutral(name: str) -> float:
    # The input a feature has when it sits at the wearer's baseline: zero deviation, or a flat
    # within-window slope. Raw levels (no personal baseline) have no neutral value.
    return 0.0 if name.startswith("rel_") or name in ABSOLUTE_FEATURES else math.nan


def _occlusions(variant: Variant, x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """A window's row followed by one row per present input moved back to the baseline.

    The effect of an input is how much ``p_stress`` drops when only that input is moved back to
    the wearer's baseline (an occlusion attribution, Zeiler & Fergus 2014); all rows go through
    one ``predict_proba`` call with the other windows' rows.
    """
    names = variant.spec.feature_names
    idx = [i for i, v in enumerate(x) if math.isfinite(v) and math.isfinite(_neutral(names[i]))
           and x[i] != _neutral(names[i])]
    rows = np.repeat(x[None, :], 1 + len(idx), axis=0)
    for j, i in enumerate(idx, start=1):
        rows[j, i] = _neutral(names[i])
    return rows, idx


def _contributions(
    variant: Variant, x: np.ndarray, idx: Sequence[int], proba: np.ndarray, k: int
) -> list[Contribution]:
    """Each occluded input's effect on class ``k``, largest first (see :func:`_occlusions`)."""
    names = variant.spec.feature_names
    out = []
    for j, i in enumerate(idx, start=1):
        shown, unit, text = describe_deviation(names[i], float(x[i]))
        out.append(Contribution(feature=names[i], deviation=shown, unit=unit,
                                effect=round(float(proba[0, k] - proba[j, k]), 4), text=text))
    out.sort(key=lambda c: (-abs(c.effect), c.feature))
    return out


#: Short human names of the model inputs, for explanations.
_LABELS: dict[str, str] = {
    "hr_mean_bpm": "heart rate", "hr_device_mean_bpm": "heart rate (device)",
    "hrv_meannn_ms": "mean beat interval", "hrv_sdnn_ms": "SDNN", "hrv_rmssd_ms": "RMSSD",
    "hrv_pnn50_pct": "pNN50", "hrv_sd1_ms": "SD1", "hrv_sd2_ms": "SD2",
    "eda_scl_mean_uS": "skin conductance level", "eda_scr_rate_per_min": "skin conductance "
    "responses", "eda_scr_amp_mean_uS": "skin conductance response amplitude",
    "eda_phasic_auc_uS_s": "phasic skin conductance", "temp_mean_degC": "skin temperature",
    "acc_activity_g": "movement", "eda_scl_slope_uS_per_min": "skin conductance trend",
    "temp_slope_degC_per_min": "skin temperature trend",
}


def describe_deviation(name: str, value: float) -> tuple[float, str, str]:
    """``(shown value, unit, sentence)`` for one model input.

    Log-ratio inputs become percent changes, differences stay in the feature's unit, slopes
    are shown as they are.

    >>> describe_deviation("rel_hrv_rmssd_ms", math.log(0.62))
    (-38.0, '%', 'RMSSD 38% below your baseline')
    >>> describe_deviation("rel_hr_mean_bpm", 12.0)
    (12.0, 'bpm', 'heart rate 12 bpm above your baseline')
    >>> describe_deviation("eda_scl_slope_uS_per_min", 0.05)
    (0.05, 'µS/min', 'skin conductance trend rising 0.05 µS/min')
    """
    base = name.removeprefix("rel_")
    label = _LABELS.get(base, base)
    unit = FEATURE_UNITS.get(base, "")
    if name.startswith("rel_") and base in RELATIVE_FEATURES:
        kind, _ = RELATIVE_FEATURES[base]
        shown = round((math.exp(value) - 1.0) * 100.0, 1) if kind == "logratio" else round(
            value, 2)
        unit = "%" if kind == "logratio" else unit
        word = "above" if shown > 0 else "below" if shown < 0 else "at"
        amount = f"{abs(shown):.0f}%" if unit == "%" else f"{abs(shown):.3g} {unit}"
        if word == "at":
            return shown, unit, f"{label} at your baseline"
        return shown, unit, f"{label} {amount} {word} your baseline"
    shown = round(value, 3)
    word = "rising" if shown > 0 else "falling" if shown < 0 else "flat"
    return shown, unit, f"{label} {word} {abs(shown):.3g} {unit}".rstrip()


def channels_of(feature_names: Sequence[str], *, beat_source: str) -> list[str]:
    """The channels behind the given model inputs (what an estimate actually used).

    >>> channels_of(["rel_hrv_rmssd_ms", "rel_eda_scl_mean_uS"], beat_source="ppg")
    ['eda', 'ppg']
    """
    out: set[str] = set()
    for name in feature_names:
        base = name.removeprefix("rel_")
        if base.startswith("hr_device"):
            out.add("hr")
        elif base.startswith(("hr_mean", "hrv_")) and beat_source in ("ppg", "rr"):
            out.add(beat_source)
        elif base.startswith(("eda_", "acc_", "temp_")):
            out.add(base.split("_", 1)[0])
    return sorted(out)
