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
from dataclasses import dataclass, field
from typing import Final

import neurokit2 as nk
import numpy as np

from wearemo.features.config import WindowConfig
from wearemo.features.hrv import (
    MIN_INTERVALS,
    HRVTime,
    hrv_frequency_features,
    hrv_nonlinear_features,
    hrv_time_features,
)
from wearemo.features.window import FeatureWindow
from wearemo.samples import Channel, ChannelSamples
from wearemo.signals import (
    MOTION_THRESHOLD_G,
    SCR_MIN_AMPLITUDE_US,
    CleanRR,
    acc_motion,
    linear_slope_per_min,
    rr_clean,
    temp_level,
)
from wearemo.signals.tracks import BeatWindow, EDATrack, EDAWindow, PPGTrack

__all__ = ["FEATURE_NAMES", "FEATURE_UNITS", "HRVMemo", "window_features"]

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
    "eda_scr_rise_mean_s": "s",
    "eda_phasic_auc_uS_s": "µS·s",
    "temp_mean_degC": "°C",
    "temp_slope_degC_per_min": "°C/min",
    "acc_mag_mean_g": "g",
    "acc_activity_g": "g",
    "acc_enmo_mg": "mg",
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


@dataclass(slots=True)
class HRVMemo:
    """The last HRV result of a stream, reused while a sliding window holds the same beats.

    At a 0.25-s step most consecutive 60-s windows contain exactly the same beats; their HRV is
    then identical by definition, so it is copied instead of recomputed. Beats are committed
    once and never change, so ``(source, first and last beat time, count, window length)``
    identifies the input.
    """

    key: tuple[object, ...] | None = None
    features: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    n_beats: int = 0


def _hrv(
    source: str, rr_ms: np.ndarray, times_ns: np.ndarray, window_s: float, memo: HRVMemo | None
) -> tuple[dict[str, float], dict[str, str], int]:
    """HRV of beat intervals (closing-beat times ``times_ns``): features, methods, n used."""
    key = (source, int(times_ns[0]), int(times_ns[-1]), times_ns.size, window_s)
    if memo is not None and memo.key == key:
        return memo.features, memo.methods, memo.n_beats
    clean = rr_clean(rr_ms, times_ns)
    h = hrv_time_features(clean)
    feats: dict[str, float] = {}
    meths: dict[str, str] = {}
    n = 0
    if math.isfinite(h.meannn_ms):
        n = clean.n_intervals
        _put_hrv(feats, h)
        _put_hrv_domains(feats, meths, clean, window_s)
    if memo is not None:
        memo.key, memo.features, memo.methods, memo.n_beats = key, feats, meths, n
    return feats, meths, n


def _track_windows(
    slices: dict[Channel, ChannelSamples], start_ns: int, end_ns: int, sqi_min: float
) -> tuple[BeatWindow | None, EDAWindow | None]:
    """Beats and EDA components of a lone window: its slices run through fresh tracks.

    The same trackers as a stream, so a window computed on its own uses the same algorithms;
    a stream's windows differ only in having context before the window.
    """
    beats = eda = None
    ppg = slices.get(Channel.PPG)
    if ppg is not None and ppg.n_samples:
        track = PPGTrack()
        track.push(ppg.times_ns, ppg.values, rate_hz=ppg.rate_hz)
        track.flush()
        beats = track.window(start_ns, end_ns, sqi_min=sqi_min)
    sl = slices.get(Channel.EDA)
    if sl is not None and sl.n_samples:
        etrack = EDATrack()
        etrack.push(sl.times_ns, sl.values, rate_hz=sl.rate_hz)
        etrack.flush()
        eda = etrack.window(start_ns, end_ns)
    return beats, eda


def window_features(
    subject_id: str,
    start_ns: int,
    end_ns: int,
    slices: dict[Channel, ChannelSamples],
    *,
    config: WindowConfig | None = None,
    beats: BeatWindow | None = None,
    eda: EDAWindow | None = None,
    memo: HRVMemo | None = None,
) -> FeatureWindow:
    """Compute the features of one window ``[start_ns, end_ns)``.

    Beat intervals come from the device (channel ``rr``) when they cover at least
    ``config.min_coverage`` of the window, else from the PPG beats of a
    :class:`~wearemo.signals.tracks.PPGTrack`. EDA features come from an
    :class:`~wearemo.signals.tracks.EDATrack`. A stream passes the windows of its own tracks
    (``beats``, ``eda``: detection ran once per stream); without them the window's PPG and EDA
    slices run through fresh tracks. Features that cannot be computed (too few beats, channel
    absent or invalid, flat signal) are absent, and ``reasons`` says why.

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
    beats, eda
        The window's committed PPG beats and EDA components, from the stream's tracks.
    memo
        The stream's :class:`HRVMemo` (reuses HRV while the beats are unchanged).

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
    window_s = length_ns / 1e9
    features: dict[str, float] = {}
    counts: dict[str, int] = {}
    coverage: dict[str, float] = {}
    quality: dict[str, float] = {}
    reasons: dict[str, str] = {}
    methods: dict[str, str] = {"neurokit2": _NK_VERSION, "hrv": "task_force_1996"}
    for ch, sl in slices.items():
        counts[ch.value] = sl.n_samples
        coverage[ch.value] = _coverage(ch, sl, length_ns)
    if beats is None and eda is None:
        beats, eda = _track_windows(slices, start_ns, end_ns, cfg.ppg_sqi_min)

    # Beats: device RR preferred when it covers the window.
    beat_source, n_beats = "none", 0
    why_no_beats: list[str] = []
    rr_sl = slices.get(Channel.RR)
    if rr_sl is not None and rr_sl.n_samples:
        if coverage["rr"] >= cfg.min_coverage:
            feats, meths, n = _hrv("rr", rr_sl.values, rr_sl.times_ns, window_s, memo)
            kept = rr_clean(rr_sl.values, rr_sl.times_ns).n_intervals if n == 0 else n
            quality["rr_kept_fraction"] = kept / rr_sl.n_samples
            if n:
                beat_source, n_beats = "rr", n
                features.update(feats)
                methods.update(meths)
            else:
                why_no_beats.append(f"rr: {kept} plausible intervals < {MIN_INTERVALS}")
        else:
            why_no_beats.append(f"rr: coverage {coverage['rr']:.2f} < {cfg.min_coverage}")
    if beat_source == "none" and beats is not None:
        methods.update(ppg_clean="elgendi", ppg_peaks=_PPG_METHOD, ppg_fiducial="foot_subsample",
                       ppg_fixpeaks="kubios", ppg_sqi="template_correlation")
        quality["ppg"] = beats.plausibility
        quality["ppg_corrected_fraction"] = beats.corrected_fraction
        if math.isfinite(beats.sqi):
            quality["ppg_sqi"] = beats.sqi
        if beats.n_detected:
            quality["ppg_low_sqi_fraction"] = beats.n_low_sqi / beats.n_detected
        if beats.times_ns.size >= 2:
            feats, meths, n = _hrv("ppg", beats.rr_ms, beats.times_ns[1:], window_s, memo)
            if n:
                beat_source, n_beats = "ppg", n
                features.update(feats)
                methods.update(meths)
        if beat_source == "none":
            why_no_beats.append(
                f"ppg: {int(np.isfinite(beats.rr_ms).sum())} usable intervals < "
                f"{MIN_INTERVALS} ({beats.n_low_sqi} of {beats.times_ns.size} beats below "
                f"template quality {cfg.ppg_sqi_min:.2f}, or implausible)"
                if beats.times_ns.size else "ppg: no beats found (flat, invalid or too short)"
            )
    methods["beats"] = beat_source
    if beat_source == "none":
        reasons["hrv"] = "; ".join(why_no_beats) or "no rr or ppg channel"

    hr_sl = slices.get(Channel.HR)
    if hr_sl is not None and hr_sl.n_samples:
        _put(features, "hr_device_mean_bpm", float(np.nanmean(hr_sl.values)))

    if eda is not None:
        _put_eda(features, quality, reasons, methods, eda, window_s, cfg.min_coverage)

    temp_sl = slices.get(Channel.TEMP)
    if temp_sl is not None and temp_sl.n_samples:
        ok = np.isfinite(temp_sl.values)
        if ok.any():
            lv = temp_level(temp_sl.values[ok], temp_sl.times_ns[ok])
            _put(features, "temp_mean_degC", lv.mean_degC)
            _put(features, "temp_slope_degC_per_min", lv.slope_degC_per_min)
        else:
            reasons["temp"] = "no finite samples"

    motion = False
    acc_sl = slices.get(Channel.ACC)
    if acc_sl is not None and acc_sl.n_samples:
        acc = acc_sl.values.reshape(-1, 3)
        ok = np.all(np.isfinite(acc), axis=1)
        if ok.any():
            m = acc_motion(acc[ok], rate_hz=acc_sl.rate_hz)
            _put(features, "acc_mag_mean_g", m.mag_mean_g)
            _put(features, "acc_activity_g", m.activity_g)
            _put(features, "acc_enmo_mg", 1000.0 * m.enmo_g)
            motion = m.motion
            methods["motion"] = f"acc_mag_std>{MOTION_THRESHOLD_G}g"
        else:
            reasons["acc"] = "no finite samples"

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
        reasons=reasons,
    )


def _put_eda(
    features: dict[str, float],
    quality: dict[str, float],
    reasons: dict[str, str],
    methods: dict[str, str],
    eda: EDAWindow,
    window_s: float,
    min_coverage: float,
) -> None:
    """EDA level and SCR features of a window from its committed components."""
    methods.update(eda_clean="butter_lowpass_1hz", eda_phasic="smoothmedian",
                   eda_peaks=f"local_max_amp>={SCR_MIN_AMPLITUDE_US}uS")
    valid = eda.valid_fraction
    quality["eda_valid_fraction"] = valid
    decomposed = eda.decomposed_fraction
    quality["eda_decomposed_fraction"] = decomposed
    if valid == 0.0:
        reasons["eda"] = "no valid samples (NaN or negative conductance)"
        return
    ok = np.isfinite(eda.tonic_us)
    _put(features, "eda_scl_mean_uS", float(np.mean(eda.tonic_us[ok])))
    _put(features, "eda_scl_slope_uS_per_min",
         linear_slope_per_min(eda.tonic_us[ok], eda.times_ns[ok]))
    if decomposed < min_coverage:
        # SCR counts over part of a window would be read as a low rate: not reported.
        reasons["eda_scr"] = f"decomposed {decomposed:.2f} of the window < {min_coverage}"
        return
    n_scr = eda.scr_peak_ns.size
    features["eda_scr_count"] = float(n_scr)
    features["eda_scr_rate_per_min"] = n_scr / (window_s / 60.0)
    if n_scr:
        _put(features, "eda_scr_amp_mean_uS", float(np.mean(eda.scr_amplitudes_us)))
        _put(features, "eda_scr_rise_mean_s", float(np.mean(eda.scr_rise_times_s)))
    # Rectangle-rule integral of the positive phasic component, µS·s.
    ph = eda.phasic_us[np.isfinite(eda.phasic_us)]
    if eda.times_ns.size >= 2:
        period_s = float(np.median(np.diff(eda.times_ns))) / 1e9
        _put(features, "eda_phasic_auc_uS_s", float(np.sum(np.clip(ph, 0.0, None)) * period_s))
