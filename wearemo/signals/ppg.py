"""PPG beats: cleaning, systolic peaks, Lipponen–Tarvainen correction, interval quality.

Example
-------
>>> import neurokit2 as nk
>>> ppg = nk.ppg_simulate(duration=60, sampling_rate=64, heart_rate=70, random_state=1)
>>> b = ppg_beats(ppg, rate_hz=64)
>>> round(60000 / float(b.rr_ms.mean()))
70
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import neurokit2 as nk
import numpy as np

from wearemo.signals._util import quiet
from wearemo.signals.rr import RR_MAX_MS, RR_MIN_MS

__all__ = ["PPG_METHODS", "Beats", "ppg_beats"]

PpgMethod = Literal["elgendi", "bishop"]
PPG_METHODS: tuple[str, ...] = get_args(PpgMethod)

# Intervals further than this from the window median count as implausible for quality.
_MEDIAN_DEVIATION = 0.3


@dataclass(frozen=True, slots=True)
class Beats:
    """Systolic peaks of a PPG segment and their intervals.

    Attributes
    ----------
    peak_indices
        Sample indices of the (corrected) systolic peaks into the input signal.
    rr_ms
        ``len(peak_indices) - 1`` intervals between corrected peaks, ms (by sample index and
        ``rate_hz``; for timestamped input derive intervals from the peak times instead).
    n_corrected
        Peaks flagged and corrected by the Kubios (Lipponen–Tarvainen) method
        (ectopic + missed + extra + long/short).
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


def _empty(method: str) -> Beats:
    return Beats(np.zeros(0, dtype=np.int64), np.zeros(0), 0, 0.0, 0.0, method)


def ppg_beats(
    ppg: np.ndarray,
    *,
    rate_hz: float,
    method: PpgMethod = "elgendi",
    correct: bool = True,
) -> Beats:
    """Detect and correct systolic peaks of a PPG segment.

    ``nk.ppg_clean`` (band-pass 0.5–8 Hz, Elgendi 2013) and ``nk.ppg_findpeaks`` find the
    peaks; ``nk.signal_fixpeaks(method="Kubios")`` then corrects ectopic, missed, extra and
    long/short beats (Lipponen & Tarvainen 2019). Flat or too-short input yields no beats
    (quality 0) rather than an error.

    Parameters
    ----------
    ppg
        PPG samples (arbitrary units), regularly sampled.
    rate_hz
        Sampling rate.
    method
        Peak detector: ``"elgendi"`` (Elgendi et al. 2013) or ``"bishop"`` (Bishop & Ercole
        2018).
    correct
        Apply the Kubios artefact correction.

    Returns
    -------
    Beats

    References
    ----------
    Elgendi M., Norton I., Brearley M., Abbott D., Schuurmans D. (2013). Systolic peak detection
    in acceleration photoplethysmograms measured from emergency responders in tropical
    conditions. PLoS ONE 8(10):e76585.
    Lipponen J.A., Tarvainen M.P. (2019). A robust algorithm for heart rate variability time
    series artefact correction using novel beat classification. J Med Eng Technol 43(3):173-181.
    Makowski D. et al. (2021). NeuroKit2: A Python toolbox for neurophysiological signal
    processing. Behav Res Methods 53:1689-1696.

    Example
    -------
    >>> ppg_beats(np.zeros(640), rate_hz=64).n_beats
    0
    """
    if method not in PPG_METHODS:
        raise ValueError(f"ppg_beats: unknown method {method!r}; choose one of {PPG_METHODS}")
    x = np.asarray(ppg, dtype=np.float64).reshape(-1)
    if x.size < 4 * rate_hz or not np.all(np.isfinite(x)) or np.ptp(x) == 0.0:
        return _empty(method)
    with quiet():
        try:
            clean = nk.ppg_clean(x, sampling_rate=rate_hz, method="elgendi")
            peaks = np.asarray(
                nk.ppg_findpeaks(clean, sampling_rate=rate_hz, method=method)["PPG_Peaks"],
                dtype=np.int64,
            )
        except (ValueError, IndexError, TypeError, ZeroDivisionError):
            return _empty(method)
    if peaks.size < 2:
        return _empty(method)
    raw_rr = np.diff(peaks) * (1000.0 / rate_hz)
    med = float(np.median(raw_rr))
    plausible = (
        (raw_rr >= RR_MIN_MS)
        & (raw_rr <= RR_MAX_MS)
        & (np.abs(raw_rr - med) <= _MEDIAN_DEVIATION * med)
    )
    duration_ms = x.size * 1000.0 / rate_hz
    quality = float(min(1.0, raw_rr[plausible].sum() / duration_ms))
    n_corrected = 0
    fixed = peaks
    # Kubios needs a few beats to estimate its thresholds.
    if correct and peaks.size >= 8:
        with quiet():
            try:
                info, fixed_peaks = nk.signal_fixpeaks(
                    peaks, sampling_rate=rate_hz, method="Kubios", iterative=True, show=False
                )
                fixed = np.unique(np.asarray(fixed_peaks, dtype=np.int64))
                n_corrected = sum(
                    len(info[k]) for k in ("ectopic", "missed", "extra", "longshort")
                )
            except (ValueError, IndexError, TypeError, ZeroDivisionError):
                fixed = peaks
    fixed = fixed[(fixed >= 0) & (fixed < x.size)]
    rr = np.diff(fixed) * (1000.0 / rate_hz)
    return Beats(
        peak_indices=fixed,
        rr_ms=rr,
        n_corrected=int(n_corrected),
        corrected_fraction=float(n_corrected / peaks.size),
        quality=quality,
        method=method,
    )
