"""Personal baseline: features relative to each person's own resting level.

Generic stress models generalise badly across people because resting heart rate, HRV and skin
conductance levels differ far more between people than within a person under stress. wearemo
therefore learns each subject's baseline online from the first minutes of valid data (the
*warm-up*, during which states are withheld) and feeds the model deviations from it: differences
for rate-like features, log-ratios for scale-like ones (HRV, skin conductance level).

The warm-up assumes the wearer is at rest during the first ``warmup_s`` seconds of valid windows
(as in the Stress-Predict and WESAD protocols); a deployment should ask for that.

Example
-------
>>> b = PersonalBaseline(BaselineConfig(warmup_s=10.0, min_windows=2))
>>> for t, hr in [(60, 70.0), (65, 72.0), (70, 71.0)]:
...     b.observe(t * 10**9, {"hr_mean_bpm": hr})
>>> b.ready, b.relative({"hr_mean_bpm": 81.0})["rel_hr_mean_bpm"]
(True, 10.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["RELATIVE_FEATURES", "BaselineConfig", "PersonalBaseline"]

Transform = Literal["diff", "logratio"]

#: Feature -> how a window is expressed against the baseline median. ``logratio`` for strictly
#: positive quantities whose between-person spread is multiplicative (HRV, skin conductance);
#: ``diff`` for rates and slopes. The offset in the log keeps near-zero levels finite.
RELATIVE_FEATURES: dict[str, tuple[Transform, float]] = {
    "hr_mean_bpm": ("diff", 0.0),
    "hr_device_mean_bpm": ("diff", 0.0),
    "hrv_meannn_ms": ("logratio", 1.0),
    "hrv_sdnn_ms": ("logratio", 1.0),
    "hrv_rmssd_ms": ("logratio", 1.0),
    "hrv_pnn50_pct": ("diff", 0.0),
    "hrv_sd1_ms": ("logratio", 1.0),
    "hrv_sd2_ms": ("logratio", 1.0),
    "eda_scl_mean_uS": ("logratio", 0.05),
    "eda_scr_rate_per_min": ("diff", 0.0),
    "eda_scr_amp_mean_uS": ("diff", 0.0),
    "eda_phasic_auc_uS_s": ("diff", 0.0),
    "temp_mean_degC": ("diff", 0.0),
    "acc_activity_g": ("diff", 0.0),
}


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    """How the personal baseline is learned.

    Attributes
    ----------
    warmup_s
        Span of window end times (from the first valid window) that form the baseline; with
        60-s windows, 240 s means the first 5 minutes of valid data.
    min_windows
        Fewest valid windows the baseline needs before it is used.
    personal
        False turns the baseline off (no warm-up; the model sees raw levels under their own
        names): the ablation that shows what the personal baseline is worth.
    """

    warmup_s: float = 240.0
    min_windows: int = 12
    personal: bool = True


@dataclass(slots=True)
class PersonalBaseline:
    """Online per-subject baseline (median of each feature over the warm-up windows)."""

    config: BaselineConfig = field(default_factory=BaselineConfig)
    _first_end_ns: int | None = None
    _rows: list[dict[str, float]] = field(default_factory=list)
    _median: dict[str, float] | None = None
    _spread: dict[str, float] = field(default_factory=dict)
    _source: str = "warm-up"

    @property
    def ready(self) -> bool:
        """True once the warm-up is complete and deviations can be computed."""
        return self._median is not None or not self.config.personal

    @property
    def n_windows(self) -> int:
        """Valid windows collected so far for the baseline."""
        return len(self._rows)

    @property
    def medians(self) -> dict[str, float]:
        """Baseline medians (empty until ready)."""
        return dict(self._median or {})

    @property
    def spreads(self) -> dict[str, float]:
        """Robust spread of each feature over the baseline windows, in the units of its
        ``rel_`` deviation (log units for log-ratio features): 1.4826 × the median absolute
        deviation, so it estimates a standard deviation. Empty until ready; a feature with fewer
        than 3 finite baseline values has no spread."""
        return dict(self._spread)

    @property
    def source(self) -> str:
        """Where the baseline came from: ``"warm-up"`` (first valid minutes) or
        ``"calibration"`` (a labelled calibration period, see :meth:`calibrate`)."""
        return self._source

    def calibrate(self, rows: Sequence[Mapping[str, float]]) -> None:
        """Set the baseline from the windows of a labelled calibration period (e.g. a rest the
        wearer was asked to keep), replacing any warm-up in progress or learned before.

        Raises ``ValueError`` when fewer than ``config.min_windows`` windows are given.

        >>> b = PersonalBaseline(BaselineConfig(min_windows=2))
        >>> b.calibrate([{"hr_mean_bpm": 60.0}, {"hr_mean_bpm": 64.0}])
        >>> b.ready, b.medians["hr_mean_bpm"], b.source
        (True, 62.0, 'calibration')
        """
        if len(rows) < self.config.min_windows:
            raise ValueError(
                f"calibration period has {len(rows)} usable windows; the baseline needs at "
                f"least {self.config.min_windows}"
            )
        self._freeze([{k: float(r[k]) for k in RELATIVE_FEATURES if k in r} for r in rows])
        self._source = "calibration"
        self._rows.clear()

    def progress_s(self, end_ns: int) -> float:
        """Seconds of warm-up covered at a window ending at ``end_ns``."""
        if self._first_end_ns is None:
            return 0.0
        return (end_ns - self._first_end_ns) / 1e9

    def observe(self, end_ns: int, features: Mapping[str, float]) -> None:
        """Feed one valid window during warm-up; freezes the baseline when complete."""
        if self.ready:
            return
        if self._first_end_ns is None:
            self._first_end_ns = end_ns
        self._rows.append({k: float(features[k]) for k in RELATIVE_FEATURES if k in features})
        if (
            self.progress_s(end_ns) >= self.config.warmup_s
            and len(self._rows) >= self.config.min_windows
        ):
            self._freeze(self._rows)
            self._rows.clear()

    def _freeze(self, rows: Sequence[Mapping[str, float]]) -> None:
        med: dict[str, float] = {}
        spread: dict[str, float] = {}
        for name, (kind, eps) in RELATIVE_FEATURES.items():
            vals = np.array([r[name] for r in rows if name in r], dtype=float)
            vals = vals[np.isfinite(vals)]
            if not vals.size:
                continue
            med[name] = float(np.median(vals))
            if vals.size >= 3:
                v = np.log(np.maximum(vals, 0.0) + eps) if kind == "logratio" else vals
                spread[name] = float(1.4826 * np.median(np.abs(v - np.median(v))))
        self._median = med
        self._spread = spread

    def relative(self, features: Mapping[str, float]) -> dict[str, float]:
        """Deviations ``rel_<feature>`` of one window from the baseline (NaN when unknown).

        With ``personal=False`` the raw levels, under their own names.
        """
        if not self.config.personal:
            return {name: float(features.get(name, math.nan)) for name in RELATIVE_FEATURES}
        if self._median is None:
            raise RuntimeError("personal baseline is still warming up")
        out: dict[str, float] = {}
        for name, (kind, eps) in RELATIVE_FEATURES.items():
            x = features.get(name, math.nan)
            m = self._median.get(name, math.nan)
            if not (math.isfinite(x) and math.isfinite(m)):
                out[f"rel_{name}"] = math.nan
            elif kind == "diff":
                out[f"rel_{name}"] = x - m
            else:
                out[f"rel_{name}"] = math.log(max(x, 0.0) + eps) - math.log(max(m, 0.0) + eps)
        return out
