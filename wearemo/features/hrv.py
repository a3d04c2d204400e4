"""HRV time, frequency and nonlinear features from clean beat intervals.

Time domain and Poincaré (MeanNN, SDNN, RMSSD, pNN50, SD1, SD2) are numerically identical to
``nk.hrv_time`` / ``nk.hrv_nonlinear`` on the same intervals, at a fraction of the cost;
successive differences use only truly successive beats (:class:`~wearemo.signals.rr.CleanRR`),
as NeuroKit2 does with ``intervals_time``. Frequency domain (:func:`hrv_frequency_features`)
reports a band only when the window is long enough for it (Task Force 1996) and says why
otherwise; sample entropy (:func:`hrv_sampen`) and DFA α1 (:func:`hrv_dfa_alpha1`) only above
a stated number of beats.

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
from functools import lru_cache
from typing import Final, Literal

import numpy as np
from scipy import interpolate as spi

from wearemo.signals.rr import CleanRR

__all__ = [
    "DFA_MIN_INTERVALS",
    "FREQ_BANDS_HZ",
    "FREQ_MIN_WINDOW_S",
    "MIN_INTERVALS",
    "SAMPEN_MIN_INTERVALS",
    "HRVFrequency",
    "HRVNonlinear",
    "HRVTime",
    "hrv_dfa_alpha1",
    "hrv_frequency_features",
    "hrv_nonlinear_features",
    "hrv_sampen",
    "hrv_time_features",
]

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


# --- Frequency domain -----------------------------------------------------------------------

#: Task Force (1996) bands, Hz, as ``[low, high)``.
FREQ_BANDS_HZ: Final[dict[str, tuple[float, float]]] = {
    "VLF": (0.0033, 0.04),
    "LF": (0.04, 0.15),
    "HF": (0.15, 0.4),
}
#: Shortest window (s) for a band. Task Force (1996), p. 1047: "recording of approximately 1 min
#: is needed to assess the HF components of HRV while approximately 2 min are needed to address
#: the LF component"; "VLF assessed from short-term recordings (e.g. ≤5 min) is a dubious
#: measure and should be avoided". VLF is further bounded by the spectral resolution rule in
#: :func:`hrv_frequency_features` (in practice it needs ≥ ~20 min).
FREQ_MIN_WINDOW_S: Final[dict[str, float]] = {"VLF": 300.0, "LF": 120.0, "HF": 60.0}
#: Longest stretch (s) without a kept beat that may be interpolated over: the period of the
#: fastest frequency analysed (0.4 Hz), so no full HF cycle is ever invented by the spline.
FREQ_MAX_GAP_S: Final = 2.5
_INTERP_ORDER: Final = {"cubic": 3, "quadratic": 2}


@dataclass(frozen=True, slots=True)
class HRVFrequency:
    """Frequency-domain HRV (Task Force 1996); NaN where the band is not valid.

    Attributes
    ----------
    vlf_ms2, lf_ms2, hf_ms2
        Band powers, ms² (integral of the PSD over ``[low, high)``).
    tp_ms2
        VLF + LF + HF (0.0033–0.4 Hz), ms²; only when all three are valid.
    lf_hf
        LF / HF.
    lf_nu, hf_nu
        100 · LF / (LF + HF) and 100 · HF / (LF + HF), normalised units (Task Force: power over
        total power minus VLF).
    span_s
        Time covered by the beats (first interval's opening beat to last beat), s.
    max_gap_s
        Longest interval between consecutive kept beats, s.
    notes
        Why each omitted band or ratio is absent.
    """

    vlf_ms2: float
    lf_ms2: float
    hf_ms2: float
    tp_ms2: float
    lf_hf: float
    lf_nu: float
    hf_nu: float
    span_s: float
    max_gap_s: float
    notes: tuple[str, ...]


@lru_cache(maxsize=64)
def _hann_periodic(n: int) -> tuple[np.ndarray, float]:
    """Periodic Hann window (scipy's default for spectra) and its energy."""
    w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    return w, float(w @ w)


def _welch_nk(x: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD with NeuroKit2's ``signal_psd`` defaults (ms²/Hz), for bit-level agreement.

    Segments are half the series (Hann, 50 % overlap, zero-padded to twice their length), so the
    lowest frequency kept (two cycles per segment) is ``4 / duration``. Written out (equal to
    ``scipy.signal.welch(..., detrend=False, scaling="density")`` to ~1e-15) because scipy's
    generic path costs more than the whole HRV feature set at 60-s windows.
    """
    n = x.shape[0]
    x = x - np.mean(x)
    # Same float expressions as NeuroKit2 so nperseg rounds identically.
    min_f = (2 * rate_hz) / (n / 2)
    nperseg = int((2 / min_f) * rate_hz)
    if nperseg > n / 2:
        nperseg = int(n / 2)
    step = nperseg - nperseg // 2
    n_seg = (n - nperseg) // step + 1
    w, energy = _hann_periodic(nperseg)
    segs = np.lib.stride_tricks.sliding_window_view(x, nperseg)[: n_seg * step : step]
    spec = np.fft.rfft(segs * w, n=2 * nperseg, axis=1)
    p = np.mean(spec.real**2 + spec.imag**2, axis=0) / (rate_hz * energy)
    p[1:-1] *= 2.0  # one-sided; nfft is even, so the last bin (Nyquist) is not doubled
    f = np.arange(p.shape[0]) * (rate_hz / (2 * nperseg))
    keep = f >= min_f
    return f[keep], p[keep]


def hrv_frequency_features(
    rr: CleanRR,
    *,
    window_s: float,
    interpolation_rate_hz: float = 4.0,
    interpolation: Literal["cubic", "quadratic"] = "cubic",
    min_span_fraction: float = 0.9,
    max_gap_s: float = FREQ_MAX_GAP_S,
) -> HRVFrequency:
    """Band powers of the beat-interval series, only where the window supports them.

    The intervals (ms, at the time of their closing beat) are resampled at
    ``interpolation_rate_hz`` with a spline (held constant past the last beat, as NeuroKit2),
    and the PSD is estimated by Welch's method with NeuroKit2's settings (Hann, segments of half
    the series, 50 % overlap, ``nfft`` = 2 · segment). A band is reported only when

    1. ``window_s`` ≥ :data:`FREQ_MIN_WINDOW_S` (HF 60 s, LF 120 s, VLF 300 s; Task Force 1996),
    2. the spectrum resolves the band's lower edge (lowest frequency ``4 / span`` ≤ low edge:
       LF needs a span ≥ 100 s, VLF ≥ 1212 s),
    3. the beats span ≥ ``min_span_fraction`` of the window and no two kept beats are more than
       ``max_gap_s`` apart (nothing long is interpolated), and the intervals are not constant.

    Otherwise the band is NaN and ``notes`` says why. LF/HF and normalised units need LF and HF;
    total power needs all three bands.

    Parameters
    ----------
    rr
        Output of :func:`~wearemo.signals.rr.rr_clean`.
    window_s
        Nominal window length, s.
    interpolation_rate_hz
        Resampling rate, Hz (4 Hz as Kubios; must exceed 2 × 0.4 Hz).
    interpolation
        Spline order: ``"cubic"`` (Kubios) or ``"quadratic"`` (NeuroKit2's default).
    min_span_fraction
        Fraction of the window the beats must span.
    max_gap_s
        Longest allowed stretch between kept beats, s.

    Returns
    -------
    HRVFrequency

    Raises
    ------
    ValueError
        On an unknown ``interpolation`` or a rate ≤ 0.8 Hz.

    References
    ----------
    Task Force of the ESC and NASPE (1996). Circulation 93(5):1043-1065 (bands, normalised units,
    minimum recording lengths).
    Welch P.D. (1967). IEEE Trans Audio Electroacoust 15(2):70-73.
    Tarvainen M.P. et al. (2014). Kubios HRV. Comput Methods Programs Biomed 113(1):210-220.

    Example
    -------
    >>> from wearemo.signals import rr_clean
    >>> rr = 800 + 40 * np.sin(2 * np.pi * 0.25 * np.arange(80) * 0.8)
    >>> f = hrv_frequency_features(rr_clean(rr, (np.cumsum(rr) * 1e6).astype(np.int64)),
    ...                            window_s=60)
    >>> f.hf_ms2 > 0, math.isnan(f.lf_ms2), f.notes[0][:33]
    (True, True, 'VLF omitted: window 60 s < 300 s ')
    """
    if interpolation not in _INTERP_ORDER:
        raise ValueError(
            f"interpolation must be one of {sorted(_INTERP_ORDER)}, got {interpolation!r}"
        )
    if not interpolation_rate_hz > 2 * FREQ_BANDS_HZ["HF"][1]:
        raise ValueError(f"interpolation_rate_hz must exceed 0.8 Hz, got {interpolation_rate_hz}")
    nan = math.nan
    x = rr.rr_ms
    n = int(x.size)
    t = (rr.times_ns - rr.times_ns[0]) / 1e9 if n else np.empty(0)
    span = float(t[-1] + x[0] / 1000.0) if n else 0.0
    max_gap = float(np.max(np.diff(t), initial=0.0)) if n else 0.0
    notes: list[str] = []
    data_ok = True
    if n < MIN_INTERVALS:
        notes.append(f"no bands: {n} intervals < {MIN_INTERVALS}")
        data_ok = False
    elif span < min_span_fraction * window_s:
        notes.append(f"no bands: beats span {span:.1f} s < {min_span_fraction:g} x window")
        data_ok = False
    elif float(np.ptp(x)) == 0.0:  # a flat series is a sensor fault more than zero variability
        notes.append("no bands: intervals constant")
        data_ok = False
    elif max_gap > max_gap_s:
        notes.append(f"no bands: gap of {max_gap:.1f} s between beats > {max_gap_s:g} s")
        data_ok = False
    power = {"VLF": nan, "LF": nan, "HF": nan}
    if data_ok:
        fs = float(interpolation_rate_hz)
        # Resampling grid and end hold exactly as nk.intervals_process / signal_interpolate.
        grid = np.arange(t[0], t[-1] + 1 / fs, 1 / fs)
        spline = spi.make_interp_spline(t, x, k=_INTERP_ORDER[interpolation])
        y = spline(grid)
        y[grid < t[0]] = x[0]
        y[grid > t[-1]] = x[-1]
        f, p = _welch_nk(y, fs)
        f_min = float(f[0]) if f.size else math.inf
        for band, (lo, hi) in FREQ_BANDS_HZ.items():
            need = FREQ_MIN_WINDOW_S[band]
            if window_s < need:
                notes.append(f"{band} omitted: window {window_s:g} s < {need:g} s "
                             "(Task Force 1996)")
            elif f_min > lo:
                notes.append(f"{band} omitted: lowest resolved frequency {f_min:.4f} Hz > "
                             f"{lo:g} Hz (span {span:.0f} s)")
            else:
                sel = (f >= lo) & (f < hi)
                val = float(np.trapezoid(p[sel], f[sel])) if np.count_nonzero(sel) > 1 else 0.0
                if val > 0.0:
                    power[band] = val
                else:
                    notes.append(f"{band} omitted: no power in band")
    vlf, lf, hf = power["VLF"], power["LF"], power["HF"]
    lf_hf = lf_nu = hf_nu = tp = nan
    if math.isfinite(lf) and math.isfinite(hf):
        lf_hf = lf / hf
        lf_nu, hf_nu = 100.0 * lf / (lf + hf), 100.0 * hf / (lf + hf)
        if math.isfinite(vlf):
            tp = vlf + lf + hf
    return HRVFrequency(vlf, lf, hf, tp, lf_hf, lf_nu, hf_nu, span, max_gap, tuple(notes))


# --- Nonlinear: sample entropy and DFA α1 ----------------------------------------------------

#: SampEn needs at least 10^m intervals for m = 2 (the 10^m–30^m rule of Pincus & Goldberger
#: 1994, used for SampEn by Richman & Moorman 2000; Yentes et al. 2013 show its bias grows
#: quickly below ~200 points).
SAMPEN_MIN_INTERVALS: Final = 100
#: DFA α1 (scales 4–16 beats) needs 4 × 16 intervals: at least four disjoint segments of the
#: largest scale (six with 50 % overlap) so F(16) is an average, not one segment's residual.
DFA_MIN_INTERVALS: Final = 64
_DFA_SCALES: Final = tuple(range(4, 17))


def _runs_ok(successive: np.ndarray, length: int, n: int) -> np.ndarray:
    """For each start ``i`` in ``0..n-length``: are beats ``i..i+length-1`` all successive?"""
    bad = np.concatenate([[0], np.cumsum(~successive)])
    return bad[length - 1:n] - bad[: n - length + 1] == 0


def hrv_sampen(
    rr: CleanRR,
    *,
    m: int = 2,
    r_factor: float = 0.2,
    min_intervals: int = SAMPEN_MIN_INTERVALS,
) -> float:
    """Sample entropy of the intervals (Richman & Moorman 2000), NaN where not valid.

    SampEn = −ln(A / B): B counts pairs of distinct templates of ``m`` intervals within
    ``r = r_factor · SD`` (Chebyshev distance, ≤ r; SD with ddof = 1), A the same pairs still
    within r at ``m + 1``. Both use the same N − m templates (as Richman & Moorman and
    NeuroKit2). Templates that would span a gap or dropped beat are left out. NaN when fewer than
    ``min_intervals`` intervals, when SD is 0, or when A or B is 0 (undefined; NeuroKit2 returns
    ±inf).

    Parameters
    ----------
    rr
        Output of :func:`~wearemo.signals.rr.rr_clean`.
    m
        Template length.
    r_factor
        Tolerance as a fraction of the intervals' SD.
    min_intervals
        Fewest intervals for a value.

    Returns
    -------
    float

    References
    ----------
    Richman J.S., Moorman J.R. (2000). Physiological time-series analysis using approximate
    entropy and sample entropy. Am J Physiol Heart Circ Physiol 278(6):H2039-H2049.

    Example
    -------
    >>> from wearemo.signals import rr_clean
    >>> rr = 800 + 50 * np.random.default_rng(0).standard_normal(300)
    >>> round(hrv_sampen(rr_clean(rr, (np.cumsum(rr) * 1e6).astype(np.int64))), 2)
    2.27
    """
    x = rr.rr_ms
    n = int(x.size)
    if n < max(min_intervals, m + 2):
        return math.nan
    r = r_factor * float(np.std(x, ddof=1))
    if r <= 0.0:  # constant series: the tolerance (relative to SD) is degenerate
        return math.nan
    starts = np.flatnonzero(_runs_ok(rr.successive, m + 1, n))
    if starts.size < 2:
        return math.nan
    d = np.zeros((starts.size, starts.size))
    for k in range(m):
        v = x[starts + k]
        np.maximum(d, np.abs(v[:, None] - v[None, :]), out=d)
    match_m = d <= r
    v = x[starts + m]
    match_m1 = match_m & (np.abs(v[:, None] - v[None, :]) <= r)
    b = int(np.count_nonzero(match_m)) - starts.size  # drop self-matches
    a = int(np.count_nonzero(match_m1)) - starts.size
    if a <= 0 or b <= 0:
        return math.nan
    return float(-np.log(a / b))


def hrv_dfa_alpha1(
    rr: CleanRR,
    *,
    scales: tuple[int, ...] = _DFA_SCALES,
    min_intervals: int = DFA_MIN_INTERVALS,
    min_segments: int = 4,
) -> float:
    """Short-term DFA exponent α1 (Peng et al. 1995), NaN where not valid.

    Profile ``y = cumsum(NN − mean NN)``; for each scale ``s`` (beats), segments of ``s`` start
    every ``s // 2`` beats (NeuroKit2's overlapping windows, starts ``0 .. n − s − 1``), each is
    detrended by a least-squares line, and ``F(s) = sqrt(mean residual variance)`` (segments
    with variance ≤ 1e-8 skipped, as NeuroKit2). α1 is the slope of log2 F against log2 s.
    Segments containing a gap or dropped beat are left out.

    Parameters
    ----------
    rr
        Output of :func:`~wearemo.signals.rr.rr_clean`.
    scales
        Box sizes, beats (default 4–16, Peng et al. 1995).
    min_intervals
        Fewest intervals for a value.
    min_segments
        Fewest gap-free segments at every scale.

    Returns
    -------
    float

    References
    ----------
    Peng C.-K., Havlin S., Stanley H.E., Goldberger A.L. (1995). Quantification of scaling
    exponents and crossover phenomena in nonstationary heartbeat time series. Chaos 5(1):82-87.

    Example
    -------
    >>> from wearemo.signals import rr_clean
    >>> rr = 800 + 50 * np.random.default_rng(0).standard_normal(300)  # white noise: α ≈ 0.5
    >>> round(hrv_dfa_alpha1(rr_clean(rr, (np.cumsum(rr) * 1e6).astype(np.int64))), 1)
    0.6
    """
    x = rr.rr_ms
    n = int(x.size)
    if n < min_intervals or n <= max(scales):
        return math.nan
    y = np.cumsum(x - np.mean(x))
    starts, sizes, which = _dfa_segments(n, tuple(scales))
    # Drop segments that contain a gap or dropped beat.
    bad = np.concatenate([[0], np.cumsum(~rr.successive)])
    ok = bad[starts + sizes - 1] == bad[starts]
    starts, sizes, which = starts[ok], sizes[ok], which[ok]
    if np.min(np.bincount(which, minlength=len(scales))) < min_segments:
        return math.nan
    # All segments of all scales at once, padded to the largest scale and masked.
    width = int(max(scales))
    col = np.arange(width)
    mask = col < sizes[:, None]
    seg = y[np.minimum(starts[:, None] + col, n - 1)]
    seg = (seg - seg[:, :1]) * mask  # shift by the first value: well-conditioned sums
    s_f = sizes.astype(np.float64)
    k = (col - (s_f[:, None] - 1) / 2) * mask
    c = (seg - (np.sum(seg, axis=1) / s_f)[:, None]) * mask
    beta = np.sum(c * k, axis=1) / (s_f * (s_f * s_f - 1) / 12)  # LS slope; Σk² closed form
    res = (c - beta[:, None] * k) * mask
    var = np.sum(res * res, axis=1) / s_f
    keep = var > 1e-8
    tot = np.bincount(which[keep], weights=var[keep], minlength=len(scales))
    cnt = np.bincount(which[keep], minlength=len(scales))
    if np.any(cnt == 0):
        return math.nan
    log_f = 0.5 * np.log2(tot / cnt)
    log_s = np.log2(np.asarray(scales, dtype=np.float64))
    log_s -= log_s.mean()
    return float(np.sum(log_s * (log_f - log_f.mean())) / np.sum(log_s * log_s))


@lru_cache(maxsize=256)
def _dfa_segments(n: int, scales: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, size and scale index of every DFA segment (NeuroKit2's overlapping layout)."""
    starts = [np.arange(0, n - s, s // 2) for s in scales]
    sizes = [np.full(a.size, s) for a, s in zip(starts, scales, strict=True)]
    which = [np.full(a.size, i) for i, a in enumerate(starts)]
    return np.concatenate(starts), np.concatenate(sizes), np.concatenate(which)


@dataclass(frozen=True, slots=True)
class HRVNonlinear:
    """Sample entropy and DFA α1; NaN where not valid, with the reason in ``notes``."""

    sampen: float
    dfa_alpha1: float
    notes: tuple[str, ...]


def hrv_nonlinear_features(rr: CleanRR) -> HRVNonlinear:
    """SampEn (m = 2, r = 0.2·SD) and DFA α1 (4–16 beats) with reasons for absent values.

    Example
    -------
    >>> from wearemo.signals import rr_clean
    >>> rr = np.full(70, 800.0) + np.arange(70) % 3
    >>> hrv_nonlinear_features(rr_clean(rr, (np.cumsum(rr) * 1e6).astype(np.int64))).notes[0]
    'SampEn omitted: 70 intervals < 100'
    """
    n = rr.n_intervals
    notes: list[str] = []
    sampen = hrv_sampen(rr)
    if math.isnan(sampen):
        notes.append(f"SampEn omitted: {n} intervals < {SAMPEN_MIN_INTERVALS}"
                     if n < SAMPEN_MIN_INTERVALS else "SampEn omitted: no template matches")
    alpha1 = hrv_dfa_alpha1(rr)
    if math.isnan(alpha1):
        notes.append(f"DFA alpha1 omitted: {n} intervals < {DFA_MIN_INTERVALS}"
                     if n < DFA_MIN_INTERVALS else "DFA alpha1 omitted: too few gap-free segments")
    return HRVNonlinear(sampen, alpha1, tuple(notes))
