"""Beats shared by every beat source (PPG systolic peaks, ECG R-peaks): the container, the
plausibility quality index and the Lipponen–Tarvainen (Kubios) artefact correction.

Example
-------
>>> peaks = np.arange(0, 64 * 60, 48)  # 60 s at 64 Hz, a beat every 0.75 s
>>> beat_quality(peaks, 64 * 60, 64.0) > 0.98
True
>>> fixed, n = beats_correct(peaks, rate_hz=64.0, n_samples=64 * 60)
>>> n
0
"""

from __future__ import annotations

from dataclasses import dataclass

import neurokit2 as nk
import numpy as np

from wearemo.signals._util import quiet
from wearemo.signals.rr import RR_MAX_MS, RR_MIN_MS

__all__ = ["Beats", "beat_quality", "beats_correct"]

# Intervals further than this from the segment median count as implausible for quality.
_MEDIAN_DEVIATION = 0.3
# Kubios needs a few beats to estimate its thresholds.
_MIN_BEATS_TO_CORRECT = 8
_NK_ERRORS = (ValueError, IndexError, TypeError, ZeroDivisionError)


@dataclass(frozen=True, slots=True)
class Beats:
    """Detected (and corrected) beats of a segment and their intervals.

    Attributes
    ----------
    peak_indices
        Sample indices of the (corrected) fiducial peaks into the input signal.
    rr_ms
        ``len(peak_indices) - 1`` intervals between corrected peaks, ms (by sample index and
        ``rate_hz``; for timestamped input derive intervals from the peak times instead).
    n_corrected
        Beats changed by the correction: ``max(#corrected peaks not detected, #detected peaks
        not kept)``, i.e. moved beats plus inserted or removed ones (0 without correction).
    corrected_fraction
        ``n_corrected / number of detected peaks`` (0 when none were detected).
    quality
        0..1: the fraction of the segment's duration spanned by plausible raw intervals
        (300–2000 ms and within ±30 % of the segment's median interval), before correction.
        Flat, clipped or noisy stretches lower it.
    method
        Peak detector used.
    """

    peak_indices: np.ndarray
    rr_ms: np.ndarray
    n_corrected: int
    corrected_fraction: float
    quality: float
    method: str

    @property
    def n_beats(self) -> int:
        """Number of peaks."""
        return int(self.peak_indices.shape[0])


def beat_quality(peaks: np.ndarray, n_samples: int, rate_hz: float) -> float:
    """Fraction (0..1) of a segment spanned by plausible intervals between detected peaks.

    An interval is plausible within 300–2000 ms and ±30 % of the segment's median interval.
    """
    raw_rr = np.diff(peaks) * (1000.0 / rate_hz)
    if raw_rr.size == 0:
        return 0.0
    med = float(np.median(raw_rr))
    plausible = (
        (raw_rr >= RR_MIN_MS)
        & (raw_rr <= RR_MAX_MS)
        & (np.abs(raw_rr - med) <= _MEDIAN_DEVIATION * med)
    )
    return float(min(1.0, raw_rr[plausible].sum() / (n_samples * 1000.0 / rate_hz)))


def beats_correct(
    peaks: np.ndarray, *, rate_hz: float, n_samples: int
) -> tuple[np.ndarray, int]:
    """Lipponen–Tarvainen (Kubios) correction of detected peaks: ``(fixed, n_changed)``.

    ``nk.signal_fixpeaks(method="Kubios", iterative=True)`` corrects ectopic, missed, extra and
    long/short beats (Lipponen & Tarvainen 2019, J Med Eng Technol 43(3):173-181). The number
    changed is counted from the peaks themselves: with ``iterative=True`` NeuroKit2 reports only
    the last pass's artefacts, not all the beats it changed. Too few beats, or a NeuroKit2
    failure, leave the peaks as they are.
    """
    if peaks.size < _MIN_BEATS_TO_CORRECT:
        return peaks, 0
    with quiet():
        try:
            _, fixed_peaks = nk.signal_fixpeaks(
                peaks, sampling_rate=rate_hz, method="Kubios", iterative=True, show=False
            )
        except _NK_ERRORS:
            return peaks, 0
    fixed = np.unique(np.asarray(fixed_peaks, dtype=np.int64))
    fixed = fixed[(fixed >= 0) & (fixed < n_samples)]
    n = max(int(np.setdiff1d(fixed, peaks).size), int(np.setdiff1d(peaks, fixed).size))
    return fixed, n
