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

__all__ = ["Beats", "beat_quality", "beat_times_correct", "beats_correct", "peaks_refine"]

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
        ``len(peak_indices) - 1`` intervals between corrected peaks, ms, from
        ``peak_positions`` and ``rate_hz`` (for timestamped input derive intervals from the
        peak times instead, as the streaming :class:`~wearemo.signals.tracks.PPGTrack` does).
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
    peak_positions
        The same peaks as fractional sample positions (sub-sample fiducials where the detector
        refines them, e.g. PPG; ``rr_ms`` is computed from these).
    """

    peak_indices: np.ndarray
    rr_ms: np.ndarray
    n_corrected: int
    corrected_fraction: float
    quality: float
    method: str
    peak_positions: np.ndarray

    @property
    def n_beats(self) -> int:
        """Number of peaks."""
        return int(self.peak_indices.shape[0])


def beat_quality(peaks: np.ndarray, n_samples: float, rate_hz: float) -> float:
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


def peaks_refine(signal: np.ndarray, peaks: np.ndarray) -> np.ndarray:
    """Sub-sample positions of local maxima by parabolic interpolation over 3 samples.

    At 64 Hz a beat time quantised to the sample is off by up to 7.8 ms, enough for the
    successive differences (RMSSD, the Kubios dRR thresholds) to see the rounding as variability;
    the vertex of the parabola through the peak and its neighbours removes most of it (the usual
    refinement for R-peaks and pulse fiducials, e.g. Laguna P. et al. in Sörnmo & Laguna (2005)
    Bioelectrical Signal Processing in Cardiac and Neurological Applications, ch. 7). Peaks at
    the signal edges, or not local maxima, keep their integer position.

    Example
    -------
    >>> x = np.array([0.0, 1.0, 3.0, 2.0, 0.0])
    >>> float(peaks_refine(x, np.array([2]))[0])
    2.1666666666666665
    """
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    p = np.asarray(peaks, dtype=np.int64).reshape(-1)
    out = p.astype(np.float64)
    inner = (p > 0) & (p < x.size - 1)
    if not np.any(inner):
        return out
    q = p[inner]
    y0, y1, y2 = x[q - 1], x[q], x[q + 1]
    den = y0 - 2.0 * y1 + y2
    ok = (den < 0) & (y1 >= y0) & (y1 >= y2)
    delta = np.zeros_like(den)
    np.divide(0.5 * (y0 - y2), den, out=delta, where=ok)
    out[inner] = q + np.clip(delta, -0.5, 0.5)
    return out


def beat_times_correct(times_us: np.ndarray) -> np.ndarray:
    """Lipponen–Tarvainen (Kubios) correction of beat times given in integer microseconds.

    ``nk.signal_fixpeaks(method="Kubios", iterative=True)`` with a 1 MHz "sampling rate", so
    sub-sample beat times keep their precision through the correction (NeuroKit2 works on
    integer positions). Beats it does not touch come back bit-identical. Fewer than 8 beats, or a
    NeuroKit2 failure, leave the times as they are.

    Example
    -------
    >>> t = np.cumsum(800_000 + 30_000 * np.sin(np.arange(30) / 2.0)).astype(np.int64)
    >>> bad = t.copy()
    >>> bad[15] += 250_000  # one beat displaced by 250 ms
    >>> fixed = beat_times_correct(bad)
    >>> fixed.size, bool(abs(fixed[15] - t[15]) < 100_000)
    (30, True)
    """
    t = np.asarray(times_us, dtype=np.int64).reshape(-1)
    if t.size < _MIN_BEATS_TO_CORRECT:
        return t
    with quiet():
        try:
            _, fixed = nk.signal_fixpeaks(
                t, sampling_rate=1_000_000, method="Kubios", iterative=True, show=False
            )
        except _NK_ERRORS:
            return t
    return np.unique(np.asarray(fixed, dtype=np.int64))


def beats_correct(
    peaks: np.ndarray, *, rate_hz: float, n_samples: int
) -> tuple[np.ndarray, int]:
    """Lipponen–Tarvainen (Kubios) correction of detected peaks: ``(fixed, n_changed)``.

    Corrects ectopic, missed, extra and long/short beats (Lipponen & Tarvainen 2019, J Med Eng
    Technol 43(3):173-181) through :func:`beat_times_correct`, in microseconds, so fractional
    peak positions (from :func:`peaks_refine`) are corrected without rounding to samples. The
    result has the dtype class of ``peaks`` (integer in, integer sample indices out; float in,
    float positions out). The number changed is counted from the peaks themselves: with
    ``iterative=True`` NeuroKit2 reports only the last pass's artefacts, not all the beats it
    changed.

    Example
    -------
    >>> fixed, n = beats_correct(np.arange(0, 64 * 60, 48), rate_hz=64.0, n_samples=64 * 60)
    >>> n
    0
    """
    p = np.asarray(peaks).reshape(-1)
    if p.size < _MIN_BEATS_TO_CORRECT:
        return p, 0
    us = np.round(p.astype(np.float64) * (1e6 / rate_hz)).astype(np.int64)
    fixed_us = beat_times_correct(us)
    n = max(int(np.setdiff1d(fixed_us, us).size), int(np.setdiff1d(us, fixed_us).size))
    pos = np.asarray(fixed_us * (rate_hz / 1e6), dtype=np.float64)
    pos = pos[(pos >= -0.5) & (pos < n_samples - 0.5)]
    if np.issubdtype(p.dtype, np.integer):
        return np.unique(np.round(pos).astype(np.int64)), n
    return pos, n
