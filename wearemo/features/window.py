"""The feature window: what the features stage hands to the model and the store.

Windows are stamped at their end (``end_ns``) and aligned to multiples of the step on the unix
epoch, so a live stream and a re-run over the same recording cut identical windows.

Example
-------
>>> w = FeatureWindow(subject_id="s1", start_ns=0, end_ns=60 * 10**9,
...                   features={"hrv_rmssd_ms": 42.0})
>>> w.feature("hrv_rmssd_ms"), math.isnan(w.feature("eda_scl_mean_us"))
(42.0, True)
"""

from __future__ import annotations

import math  # noqa: F401 (used by the module doctest)
from dataclasses import dataclass, field

__all__ = ["FeatureWindow"]


@dataclass(frozen=True, slots=True)
class FeatureWindow:
    """Features of one subject over ``[start_ns, end_ns)``.

    Attributes
    ----------
    subject_id
        Pseudonymous subject id.
    start_ns, end_ns
        Window bounds, unix ns; the window is stamped at ``end_ns``.
    features
        Feature name -> value in the unit its name carries (``_ms``, ``_bpm``, ``_us``...).
        A feature that could not be computed is absent or NaN, never a made-up number.
    sample_counts
        Channel value (``"ppg"``...) -> samples inside the window.
    coverage
        Channel value -> fraction of the window the channel's samples cover (0..1).
    quality
        Signal quality indices (``"ppg"``: 0..1 beat-interval plausibility, ...).
    motion
        True when accelerometer activity is high enough to gate HRV/EDA interpretation.
    beat_source
        Where beat intervals came from: ``"rr"`` (device), ``"ppg"`` (derived) or ``"none"``.
    n_beats
        Beat intervals used for HRV.
    methods
        Stage -> method name (e.g. ``"ppg_peaks": "elgendi"``) and ``"neurokit2"`` -> version.
    reasons
        Feature group (``"hrv"``, ``"eda"``, ``"eda_scr"``, ``"temp"``, ``"acc"``) -> why its
        features are absent (e.g. ``"ppg: no beats found (flat, invalid or too short)"``).
    """

    subject_id: str
    start_ns: int
    end_ns: int
    features: dict[str, float] = field(default_factory=dict)
    sample_counts: dict[str, int] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    motion: bool = False
    beat_source: str = "none"
    n_beats: int = 0
    methods: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def feature(self, name: str) -> float:
        """Value of ``name``, NaN when it was not computed."""
        value = self.features.get(name)
        return float("nan") if value is None else float(value)
