"""ECG beats (e.g. a Polar H10 chest strap): cleaning, R-peaks, Lipponen–Tarvainen correction.

Example
-------
>>> import neurokit2 as nk
>>> ecg = nk.ecg_simulate(duration=60, sampling_rate=250, heart_rate=70, random_state=1)
>>> b = ecg_beats(ecg, rate_hz=250)
>>> round(60000 / float(b.rr_ms.mean()))
70
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import neurokit2 as nk
import numpy as np

from wearemo.signals._util import quiet
from wearemo.signals.beats import Beats, beat_quality, beats_correct

__all__ = ["ECG_METHODS", "EcgBeats", "ecg_beats"]

EcgMethod = Literal["neurokit", "pantompkins1985", "hamilton2002", "elgendi2010", "engzeemod2012"]
ECG_METHODS: tuple[str, ...] = get_args(EcgMethod)

@dataclass(frozen=True, slots=True)
class EcgBeats(Beats):
    """R-peaks of an ECG segment: the :class:`~wearemo.signals.beats.Beats` attributes (R-peaks
    after correction when ``correction == "kubios"``; ``method`` is the NeuroKit2 detector) plus
    what the ECG path adds.

    Attributes
    ----------
    detected_indices
        R-peaks as detected, before correction (true fiducial positions; use these to compare
        with annotations).
    clean_method
        NeuroKit2 ``ecg_clean`` method (the detector's own pre-filter).
    correction
        ``"kubios"`` (Lipponen–Tarvainen, iterative) or ``"none"``.
    """

    detected_indices: np.ndarray
    clean_method: str
    correction: str


def _empty(method: str, correction: str) -> EcgBeats:
    return EcgBeats(
        peak_indices=np.zeros(0, dtype=np.int64),
        rr_ms=np.zeros(0),
        n_corrected=0,
        corrected_fraction=0.0,
        quality=0.0,
        method=method,
        peak_positions=np.zeros(0),
        detected_indices=np.zeros(0, dtype=np.int64),
        clean_method=method,
        correction=correction,
    )


def ecg_beats(
    ecg: np.ndarray,
    *,
    rate_hz: float,
    method: EcgMethod = "neurokit",
    correct: bool = True,
) -> EcgBeats:
    """Detect R-peaks of an ECG segment and optionally correct artefacts and ectopic beats.

    ``nk.ecg_clean`` (with the detector's own pre-filter; for ``"neurokit"`` a 0.5 Hz
    high-pass and 50 Hz powerline notch) and ``nk.ecg_peaks`` find the R-peaks; with
    ``correct``, ``nk.signal_fixpeaks(method="Kubios", iterative=True)`` then corrects ectopic,
    missed, extra and long/short beats (Lipponen & Tarvainen 2019). The correction moves ectopic
    beats and their neighbours to interpolated positions: good for HRV of a stream without
    beat labels, but :attr:`EcgBeats.detected_indices` keeps the detected fiducials. Flat,
    non-finite or too-short (< 4 s) input yields no beats (quality 0) rather than an error.

    Parameters
    ----------
    ecg
        ECG samples (any unit, e.g. mV or ADC counts), regularly sampled, R waves upright.
    rate_hz
        Sampling rate, > 0.
    method
        R-peak detector: ``"neurokit"`` (NeuroKit2 QRS slope method), ``"pantompkins1985"``
        (Pan & Tompkins 1985), ``"hamilton2002"``, ``"elgendi2010"``, ``"engzeemod2012"``.
    correct
        Apply the Kubios artefact correction.

    Returns
    -------
    EcgBeats

    Raises
    ------
    ValueError
        Unknown ``method`` (the message lists the options) or a non-positive ``rate_hz``.

    References
    ----------
    Pan J., Tompkins W.J. (1985). A real-time QRS detection algorithm. IEEE Trans Biomed Eng
    32(3):230-236.
    Lipponen J.A., Tarvainen M.P. (2019). A robust algorithm for heart rate variability time
    series artefact correction using novel beat classification. J Med Eng Technol 43(3):173-181.
    Makowski D. et al. (2021). NeuroKit2: A Python toolbox for neurophysiological signal
    processing. Behav Res Methods 53:1689-1696.

    Example
    -------
    >>> ecg_beats(np.zeros(2500), rate_hz=250).n_beats
    0
    """
    if method not in ECG_METHODS:
        raise ValueError(f"ecg_beats: unknown method {method!r}; choose one of {ECG_METHODS}")
    if not (np.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"ecg_beats: rate_hz must be a positive number, got {rate_hz!r}")
    correction = "kubios" if correct else "none"
    x = np.asarray(ecg, dtype=np.float64).reshape(-1)
    if x.size < 4 * rate_hz or not np.all(np.isfinite(x)) or np.ptp(x) == 0.0:
        return _empty(method, correction)
    with quiet():
        try:
            clean = nk.ecg_clean(x, sampling_rate=rate_hz, method=method)
            _, info = nk.ecg_peaks(clean, sampling_rate=rate_hz, method=method)
            peaks = np.unique(np.asarray(info["ECG_R_Peaks"], dtype=np.int64))
        except (ValueError, IndexError, TypeError, ZeroDivisionError):
            return _empty(method, correction)
    peaks = peaks[(peaks >= 0) & (peaks < x.size)]
    if peaks.size < 2:
        return _empty(method, correction)
    fixed, n_corrected = (
        beats_correct(peaks, rate_hz=rate_hz, n_samples=x.size) if correct else (peaks, 0)
    )
    return EcgBeats(
        peak_indices=fixed,
        rr_ms=np.diff(fixed) * (1000.0 / rate_hz),
        n_corrected=n_corrected,
        corrected_fraction=float(n_corrected / peaks.size),
        quality=beat_quality(peaks, x.size, rate_hz),
        method=method,
        peak_positions=fixed.astype(np.float64),
        detected_indices=peaks,
        clean_method=method,
        correction=correction,
    )
