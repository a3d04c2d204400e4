"""One window's features from per-channel slices (shared by streaming and batch).

Example
-------
>>> import numpy as np
>>> t = np.arange(240) * 250_000_000
>>> w = window_features("s1", 0, 60 * 10**9,
...                     {Channel.TEMP: ChannelSamples(t, np.full(240, 33.5), 4.0)})
>>> w.features["temp_mean_degC"], w.coverage["temp"]
(33.5, 1.0)
"""

from __future__ import annotations

import math
from typing import Final

import neurokit2 as nk
import numpy as np

from wearemo.features.config import WindowConfig
from wearemo.features.hrv import (
    HRVTime,
    hrv_frequency_features,
    hrv_nonlinear_features,
    hrv_time_features,
)
from wearemo.features.window import FeatureWindow
from wearemo.samples import Channel, ChannelSamples
from wearemo.signals import (
    MOTION_THRESHOLD_G,
    CleanRR,
    acc_motion,
    eda_decompose,
    linear_slope_per_min,
    ppg_beats,
    rr_clean,
    temp_level,
)

__all__ = ["FEATURE_NAMES", "FEATURE_UNITS", "window_features"]

#: Every feature a window may carry, with its unit (the order of ``windows_to_frame`` columns).
FEATURE_UNITS: dict[str, str] = {
    "hr_mean_bpm": "bpm",
    "hrv_meannn_ms": "ms",
    "hrv_sdnn_ms": "ms",
    "hrv_rmssd_ms": "ms",
    "hrv_pnn50_pct": "%",
    "hrv_sd1_ms": "ms",
    "hrv_sd2_ms": "ms",
    "hrv_vlf_ms2": "ms²",
    "hrv_lf_ms2": "ms²",
    "hrv_hf_ms2": "ms²",
    "hrv_tp_ms2": "ms²",
    "hrv_lfhf_ratio": "1",
    "hrv_lf_nu": "n.u.",
    "hrv_hf_nu": "n.u.",
    "hrv_sampen": "1",
    "hrv_dfa_alpha1": "1",
    "hr_device_mean_bpm": "bpm",
    "eda_scl_mean_uS": "µS",
    "eda_scl_slope_uS_per_min": "µS/min",
    "eda_scr_count": "count",
    "eda_scr_rate_per_min": "1/min",
    "eda_scr_amp_mean_uS": "µS",
    "eda_phasic_auc_uS_s": "µS·s",
    "temp_mean_degC": "°C",
    "temp_slope_degC_per_min": "°C/min",
    "acc_mag_mean_g": "g",
    "acc_activity_g": "g",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_UNITS)

_NK_VERSION = str(nk.__version__)
_PPG_METHOD: Final = "elgendi"



def _coverage(ch: Channel, sl: ChannelSamples, length_ns: int) -> float:
    """Fraction of the window the channel covers (rr: summed intervals over the window)."""
    n = sl.n_samples
    if n == 0:
        return 0.0
    if ch is Channel.RR:
        return float(min(1.0, float(np.sum(sl.values)) * 1e6 / length_ns))
    if sl.rate_hz is not None:
        period_ns = 1e9 / sl.rate_hz
    elif n >= 2:
        period_ns = float(np.median(np.diff(sl.times_ns)))
    else:
        return 0.0
    return float(min(1.0, n * period_ns / length_ns))


def _put(features: dict[str, float], name: str, value: float) -> None:
    """Store only real numbers: a feature that could not be computed stays absent."""
    if math.isfinite(value):
        features[name] = float(value)


def _put_hrv(features: dict[str, float], h: HRVTime) -> None:
    _put(features, "hr_mean_bpm", h.hr_mean_bpm)
    _put(features, "hrv_meannn_ms", h.meannn_ms)
    _put(features, "hrv_sdnn_ms", h.sdnn_ms)
    _put(features, "hrv_rmssd_ms", h.rmssd_ms)
    _put(features, "hrv_pnn50_pct", h.pnn50_pct)
    _put(features, "hrv_sd1_ms", h.sd1_ms)
    _put(features, "hrv_sd2_ms", h.sd2_ms)


def _put_hrv_domains(
    features: dict[str, float], methods: dict[str, str], clean: CleanRR, window_s: float
) -> None:
    """Frequency and nonlinear HRV; each absent value's reason goes into ``methods``."""
    f = hrv_frequency_features(clean, window_s=window_s)
    _put(features, "hrv_vlf_ms2", f.vlf_ms2)
    _put(features, "hrv_lf_ms2", f.lf_ms2)
    _put(features, "hrv_hf_ms2", f.hf_ms2)
    _put(features, "hrv_tp_ms2", f.tp_ms2)
    _put(features, "hrv_lfhf_ratio", f.lf_hf)
    _put(features, "hrv_lf_nu", f.lf_nu)
    _put(features, "hrv_hf_nu", f.hf_nu)
    methods["hrv_frequency"] = "; ".join(("welch_hann cubic_4hz", *f.notes))
    nl = hrv_nonlinear_features(clean)
    _put(features, "hrv_sampen", nl.sampen)
    _put(features, "hrv_dfa_alpha1", nl.dfa_alpha1)
    methods["hrv_nonlinear"] = "; ".join(("sampen_m2_r0.2sd dfa_alpha1_4-16", *nl.notes))


def window_features(
    subject_id: str,
    start_ns: int,
    end_ns: int,
    slices: dict[Channel, ChannelSamples],
    *,
    config: WindowConfig | None = None,
) -> FeatureWindow:
    """Compute the features of one window ``[start_ns, end_ns)``.

    Beat intervals come from the device (channel ``rr``) when they cover at least
    ``config.min_coverage`` of the window, else from PPG peaks (:func:`ppg_beats`). Features
    that cannot be computed (too few beats, channel absent, flat signal) are absent.

    Parameters
    ----------
    subject_id
        Subject of the window.
    start_ns, end_ns
        Window bounds, unix ns.
    slices
        Channel -> samples inside the window (channels with no samples may be given empty).
    config
        Window parameters (for ``min_coverage``); default ``WindowConfig()``.

    Returns
    -------
    FeatureWindow

    Example
    -------
    >>> window_features("s1", 0, 60 * 10**9, {}).features
    {}
    """
    cfg = config or WindowConfig()
    length_ns = end_ns - start_ns
    features: dict[str, float] = {}
    counts: dict[str, int] = {}
    coverage: dict[str, float] = {}
    quality: dict[str, float] = {}
    methods: dict[str, str] = {"neurokit2": _NK_VERSION, "hrv": "task_force_1996"}
    for ch, sl in slices.items():
        counts[ch.value] = sl.n_samples
        coverage[ch.value] = _coverage(ch, sl, length_ns)

    # Beats: device RR preferred when it covers the window.
    beat_source, n_beats = "none", 0
    rr_sl = slices.get(Channel.RR)
    if rr_sl is not None and rr_sl.n_samples and coverage["rr"] >= cfg.min_coverage:
        clean = rr_clean(rr_sl.values, rr_sl.times_ns)
        h = hrv_time_features(clean)
        quality["rr_kept_fraction"] = clean.n_intervals / rr_sl.n_samples
        if math.isfinite(h.meannn_ms):
            beat_source, n_beats = "rr", clean.n_intervals
            _put_hrv(features, h)
            _put_hrv_domains(features, methods, clean, length_ns / 1e9)
    ppg_sl = slices.get(Channel.PPG)
    if beat_source == "none" and ppg_sl is not None and ppg_sl.n_samples >= 2:
        ppg_rate = ppg_sl.rate_hz or 1e9 / float(np.median(np.diff(ppg_sl.times_ns)))
        beats = ppg_beats(ppg_sl.values, rate_hz=ppg_rate, method=_PPG_METHOD)
        methods.update(ppg_clean="elgendi", ppg_peaks=_PPG_METHOD, ppg_fixpeaks="kubios")
        quality["ppg"] = beats.quality
        quality["ppg_corrected_fraction"] = beats.corrected_fraction
        if beats.n_beats >= 2:
            peak_t = ppg_sl.times_ns[beats.peak_indices]
            # Intervals from peak times: a gap in the PPG stream then shows as a gap.
            clean = rr_clean(np.diff(peak_t) / 1e6, peak_t[1:])
            h = hrv_time_features(clean)
            if math.isfinite(h.meannn_ms):
                beat_source, n_beats = "ppg", clean.n_intervals
                _put_hrv(features, h)
                _put_hrv_domains(features, methods, clean, length_ns / 1e9)
    methods["beats"] = beat_source

    hr_sl = slices.get(Channel.HR)
    if hr_sl is not None and hr_sl.n_samples:
        _put(features, "hr_device_mean_bpm", float(np.mean(hr_sl.values)))

    eda_sl = slices.get(Channel.EDA)
    if eda_sl is not None and eda_sl.n_samples >= 2:
        rate = eda_sl.rate_hz or 1e9 / float(np.median(np.diff(eda_sl.times_ns)))
        comp = eda_decompose(eda_sl.values, rate_hz=rate)
        methods.update(eda_clean="butter_lowpass_1hz", eda_phasic="smoothmedian",
                       eda_peaks="neurokit")
        minutes = length_ns / 60e9
        _put(features, "eda_scl_mean_uS", float(np.mean(comp.tonic_us)))
        _put(features, "eda_scl_slope_uS_per_min",
             linear_slope_per_min(comp.tonic_us, eda_sl.times_ns))
        if comp.decomposed:
            features["eda_scr_count"] = float(comp.n_scr)
            features["eda_scr_rate_per_min"] = comp.n_scr / minutes
            if comp.n_scr:
                _put(features, "eda_scr_amp_mean_uS", float(np.mean(comp.scr_amplitudes_us)))
            # Rectangle-rule integral of the positive phasic component, µS·s.
            _put(features, "eda_phasic_auc_uS_s",
                 float(np.sum(np.clip(comp.phasic_us, 0.0, None)) / rate))

    temp_sl = slices.get(Channel.TEMP)
    if temp_sl is not None and temp_sl.n_samples:
        lv = temp_level(temp_sl.values, temp_sl.times_ns)
        _put(features, "temp_mean_degC", lv.mean_degC)
        _put(features, "temp_slope_degC_per_min", lv.slope_degC_per_min)

    motion = False
    acc_sl = slices.get(Channel.ACC)
    if acc_sl is not None and acc_sl.n_samples:
        m = acc_motion(acc_sl.values, rate_hz=acc_sl.rate_hz)
        _put(features, "acc_mag_mean_g", m.mag_mean_g)
        _put(features, "acc_activity_g", m.activity_g)
        motion = m.motion
        methods["motion"] = f"acc_mag_std>{MOTION_THRESHOLD_G}g"

    return FeatureWindow(
        subject_id=subject_id,
        start_ns=start_ns,
        end_ns=end_ns,
        features=features,
        sample_counts=counts,
        coverage=coverage,
        quality=quality,
        motion=motion,
        beat_source=beat_source,
        n_beats=n_beats,
        methods=methods,
    )
