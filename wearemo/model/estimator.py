"""Per-subject state estimation: gating, personal baseline and the calibrated classifier.

One :class:`SubjectEstimator` per subject turns the feature windows of that subject, in time
order, into :class:`~wearemo.model.state.StateEstimate`s. The same object serves the live
pipeline and batch prediction/training (through :meth:`SubjectEstimator.assess`), so a recording
replayed live and processed from disk gets the same states.

Withholding comes first: a window with neither usable beats (enough of them, PPG quality) nor
EDA, with motion, or falling in the warm-up of the personal baseline is ``withheld`` with a reason,
never guessed. A window with only one of the two is estimated from it, the other's features
taken as missing.

Example
-------
>>> from wearemo.features.window import FeatureWindow
>>> est = SubjectEstimator("s1", classifier=None, feature_names=[], version="none")
>>> est.update(FeatureWindow(subject_id="s1", start_ns=0, end_ns=60 * 10**9)).reason
'missing channels: beats, eda'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from wearemo.features.window import FeatureWindow
from wearemo.model.baseline import RELATIVE_FEATURES, BaselineConfig, PersonalBaseline
from wearemo.model.state import StateEstimate

__all__ = [
    "ABSOLUTE_FEATURES",
    "DEFAULT_FEATURES",
    "GateConfig",
    "ProbabilisticClassifier",
    "SubjectEstimator",
]

#: Features used as they are: within-window slopes and rates carry no person-level offset.
ABSOLUTE_FEATURES: tuple[str, ...] = (
    "eda_scl_slope_uS_per_min",
    "temp_slope_degC_per_min",
)

#: Model inputs of the default feature set (session time is deliberately absent: the
#: Stress-Predict protocol is fixed, so time alone would "predict" stress).
DEFAULT_FEATURES: tuple[str, ...] = (
    *(f"rel_{n}" for n in RELATIVE_FEATURES if n != "temp_mean_degC"),
    *ABSOLUTE_FEATURES,
)


# One row at a time gains nothing from OpenMP threads, and on a busy machine the tree
# ensemble's parallel regions made single-row predictions 100x slower (seen under test load).
_THREADS = ThreadpoolController()


class ProbabilisticClassifier(Protocol):
    """What the estimator needs of a fitted scikit-learn classifier."""

    def predict_proba(self, x: Any) -> np.ndarray: ...


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
    stress_threshold
        ``p_stress`` at or above which the state is ``stress``. Training sets it to the stress
        prevalence of the training windows: with calibrated probabilities that is the cut that
        weighs missed stress and false alarms equally (balanced accuracy), whatever the prior.
    """

    min_coverage: float = 0.8
    min_ppg_quality: float = 0.5
    min_beats: int = 20
    stress_threshold: float = 0.5


@dataclass(slots=True)
class SubjectEstimator:
    """Online state estimator for one subject; feed windows in time order."""

    subject_id: str
    classifier: ProbabilisticClassifier | None
    feature_names: Sequence[str]
    version: str
    gate: GateConfig = field(default_factory=GateConfig)
    baseline: PersonalBaseline = field(default_factory=PersonalBaseline)

    @classmethod
    def with_baseline(
        cls,
        subject_id: str,
        *,
        classifier: ProbabilisticClassifier | None,
        feature_names: Sequence[str],
        version: str,
        gate: GateConfig,
        baseline: BaselineConfig,
    ) -> SubjectEstimator:
        """Build an estimator with a fresh personal baseline of the given configuration."""
        return cls(subject_id, classifier, feature_names, version, gate, PersonalBaseline(baseline))

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

        HRV and EDA each count only when their channel is good enough; a window with one of
        them is estimated from it (the trees take the other as missing, as chest straps
        without EDA need), a window with neither is withheld.
        """
        beats = self._beats_problem(w)
        eda_ok = w.coverage.get("eda", 0.0) >= self.gate.min_coverage
        if beats is not None and not eda_ok:
            if beats == "beats":
                return None, "missing channels: beats, eda"
            return None, f"{beats}; missing channels: eda"
        if w.motion:
            return None, "motion"
        drop = ("hr_mean_bpm", "hrv_") if beats is not None else ("eda_",) if not eda_ok else ()
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
        >>> est = SubjectEstimator("s1", classifier=None, feature_names=[], version="none")
        >>> est.calibrate([])
        Traceback (most recent call last):
        ValueError: calibration period has 0 usable windows; the baseline needs at least 12
        """
        rows = [f for f, _ in map(self._usable, windows) if f is not None]
        self.baseline.calibrate(rows)
        return len(rows)

    def update(self, window: FeatureWindow) -> StateEstimate:
        """Estimate the state for the next window of this subject."""
        inputs, reason = self.assess(window)
        if inputs is None or self.classifier is None:
            channels = sorted(k for k, v in window.coverage.items()
                              if v >= self.gate.min_coverage)
            return StateEstimate(
                subject_id=self.subject_id, window_start_ns=window.start_ns,
                window_end_ns=window.end_ns, model_version=self.version,
                channels_used=channels, state="withheld", reason=reason or "no model",
            )
        x = np.array([[inputs.get(n, math.nan) for n in self.feature_names]], dtype=float)
        channels = channels_of(
            [n for n, v in zip(self.feature_names, x[0], strict=True) if math.isfinite(v)],
            beat_source=window.beat_source,
        )
        with _THREADS.limit(limits=1, user_api="openmp"):
            p = float(self.classifier.predict_proba(x)[0, 1])
        return StateEstimate(
            subject_id=self.subject_id, window_start_ns=window.start_ns,
            window_end_ns=window.end_ns, model_version=self.version, channels_used=channels,
            state="stress" if p >= self.gate.stress_threshold else "non_stress",
            p_stress=min(max(p, 0.0), 1.0),
            top_features=top_deviations(inputs),
        )


def channels_of(feature_names: Sequence[str], *, beat_source: str) -> list[str]:
    """The channels behind the given model inputs (what an estimate actually used).

    >>> channels_of(["rel_hrv_rmssd_ms", "rel_eda_scl_mean_uS"], beat_source="ppg")
    ['eda', 'ppg']
    """
    out: set[str] = set()
    for name in feature_names:
        base = name.removeprefix("rel_")
        if base.startswith(("hr_mean", "hrv_")) and beat_source in ("ppg", "rr"):
            out.add(beat_source)
        elif base.startswith("hr_device"):
            out.add("hr")
        elif base.startswith(("eda_", "acc_", "temp_")):
            out.add(base.split("_", 1)[0])
    return sorted(out)


def top_deviations(inputs: Mapping[str, float], k: int = 3) -> dict[str, float]:
    """The ``k`` baseline-relative inputs furthest from zero, as percent change or difference.

    Cheap enough for every streamed window: log-ratios become percent changes
    (``rel_hrv_rmssd_ms: -38.0`` means RMSSD 38% below the personal baseline), differences stay in
    the feature's unit.

    >>> top_deviations({"rel_hrv_rmssd_ms": math.log(0.62), "rel_hr_mean_bpm": 4.0}, k=1)
    {'rel_hrv_rmssd_ms': -38.0}
    """
    scored: list[tuple[float, str, float]] = []
    for name, value in inputs.items():
        if not name.startswith("rel_") or not math.isfinite(value):
            continue
        kind, _ = RELATIVE_FEATURES[name.removeprefix("rel_")]
        shown = (math.exp(value) - 1.0) * 100.0 if kind == "logratio" else value
        # Rank log-ratios by their percent change and differences by a unit-free proxy.
        score = abs(shown) / 100.0 if kind == "logratio" else abs(value) / (abs(value) + 10.0)
        scored.append((score, name, round(shown, 1)))
    scored.sort(reverse=True)
    return {name: shown for _, name, shown in scored[:k]}
