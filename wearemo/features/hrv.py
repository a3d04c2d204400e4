"""HRV time-domain and Poincaré features from clean beat intervals (Task Force 1996 formulas).

Numerically identical to ``nk.hrv_time`` / ``nk.hrv_nonlinear`` (MeanNN, SDNN, RMSSD, pNN50,
SD1, SD2) on the same intervals, at a fraction of the cost; successive differences use only
truly successive beats (:class:`~wearemo.signals.rr.CleanRR`), as NeuroKit2 does with
``intervals_time``.

Example
-------
>>> import numpy as np
>>> from wearemo.signals import rr_clean
>>> rr = np.array([800.0, 850, 790, 860, 800, 820, 810, 830, 790, 800, 840])
>>> h = hrv_time_features(rr_clean(rr, np.cumsum(rr).astype(np.int64) * 10**6))
>>> round(h.rmssd_ms, 3)
43.359
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wearemo.signals.rr import CleanRR

__all__ = ["MIN_INTERVALS", "HRVTime", "hrv_time_features"]

#: Fewer kept intervals than this and no HRV feature is reported (they would not be estimates).
MIN_INTERVALS = 10


@dataclass(frozen=True, slots=True)
class HRVTime:
    """Time-domain and Poincaré HRV (ms, %, bpm); NaN when not computable."""

    hr_mean_bpm: float
    meannn_ms: float
    sdnn_ms: float
    rmssd_ms: float
    pnn50_pct: float
    sd1_ms: float
    sd2_ms: float
    n_intervals: int
    n_successive: int


def hrv_time_features(rr: CleanRR, *, min_intervals: int = MIN_INTERVALS) -> HRVTime:
    """Compute HRV from clean intervals.

    Definitions (Task Force 1996; Brennan et al. 2001 for SD1/SD2; NeuroKit2 conventions):
    MeanNN = mean(NN); SDNN = std(NN, ddof=1); RMSSD = sqrt(mean(ΔNN²)); pNN50 = 100 ·
    #(|ΔNN| > 50 ms) / (#ΔNN + 1) (NN50 over the number of NN intervals, as Task Force and
    NeuroKit2); SD1 = std(ΔNN / √2, ddof=1); SD2 = std((NN_i + NN_{i+1}) / √2, ddof=1);
    HR = 60000 / MeanNN. ΔNN are differences of successive beats only.

    Parameters
    ----------
    rr
        Output of :func:`~wearemo.signals.rr.rr_clean`.
    min_intervals
        Minimum number of intervals (and successive pairs for ΔNN-based features).

    Returns
    -------
    HRVTime

    References
    ----------
    Task Force of the ESC and NASPE (1996). Circulation 93(5):1043-1065.
    Shaffer F., Ginsberg J.P. (2017). An overview of heart rate variability metrics and norms.
    Front Public Health 5:258.
    Brennan M., Palaniswami M., Kamen P. (2001). Do existing measures of Poincaré plot geometry
    reflect nonlinear features of heart rate variability? IEEE TBME 48(11):1342-1347.

    Example
    -------
    >>> from wearemo.signals import rr_clean
    >>> math.isnan(hrv_time_features(rr_clean(np.array([800.0]), np.array([0]))).sdnn_ms)
    True
    """
    nan = math.nan
    x = rr.rr_ms
    n = int(x.size)
    if n < min_intervals:
        return HRVTime(nan, nan, nan, nan, nan, nan, nan, n, 0)
    meannn = float(np.mean(x))
    sdnn = float(np.std(x, ddof=1))
    a, b = x[:-1][rr.successive], x[1:][rr.successive]
    m = int(a.size)
    rmssd = pnn50 = sd1 = sd2 = nan
    if m >= min_intervals - 1:
        d = b - a
        rmssd = float(np.sqrt(np.mean(d * d)))
        pnn50 = float(np.sum(np.abs(d) > 50.0) / (m + 1) * 100.0)
        sd1 = float(np.std(d / np.sqrt(2.0), ddof=1))
        sd2 = float(np.std((a + b) / np.sqrt(2.0), ddof=1))
    return HRVTime(60000.0 / meannn, meannn, sdnn, rmssd, pnn50, sd1, sd2, n, m)
