"""Frequency-domain and nonlinear HRV: NeuroKit2 on the same beats, known spectra, validity.

Deliberate differences from NeuroKit2 (also in docs/features.md):
- LFnu/HFnu are the Task Force normalised units 100·LF/(LF+HF); NeuroKit2's ``HRV_LFn`` is
  LF/TP with TP including ULF and VHF, so they are compared against NK's LF and HF instead.
- ``tp_ms2`` is VLF+LF+HF (0.0033–0.4 Hz); NeuroKit2's ``HRV_TP`` also adds VHF (0.4–0.5 Hz).
- Bands that the window cannot support are NaN (NeuroKit2 returns a number for any length).
- DFA α1 uses Peng's 4–16 beats; NeuroKit2's default is 4–11, so NK gets
  ``dfa_windows=[(4, 16), (17, None)]``.
- SampEn / DFA leave out templates and segments spanning a gap; with no gaps this is NK's value.
"""

from __future__ import annotations

import math
import warnings

import neurokit2 as nk
import numpy as np
import pytest

from wearemo.features import (
    FREQ_BANDS_HZ,
    hrv_dfa_alpha1,
    hrv_frequency_features,
    hrv_nonlinear_features,
    hrv_sampen,
    window_features,
)
from wearemo.samples import Channel, ChannelSamples
from wearemo.signals import CleanRR, rr_clean

REL = 1e-6


def _beats(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Intervals (ms) and closing-beat times (ns, from 0) with some structure and noise."""
    rng = np.random.default_rng(seed)
    rr = 800 + 40 * np.sin(np.arange(n) / 4) + 30 * np.sin(np.arange(n) / 19) + rng.normal(0, 25, n)
    return rr, (np.cumsum(rr) * 1e6).astype(np.int64)


def _clean(rr: np.ndarray, t_ns: np.ndarray) -> CleanRR:
    return rr_clean(rr, t_ns, gap_tolerance_ms=1.0)


def _nk_input(c: CleanRR) -> dict[str, np.ndarray]:
    # Same beats, same time origin as wearemo (seconds from the first kept beat).
    return {"RRI": c.rr_ms, "RRI_Time": (c.times_ns - c.times_ns[0]) / 1e9}


def _modulated(freq_hz: float, duration_s: float, amp_ms: float = 40.0) -> CleanRR:
    """Beats whose interval is 800 ms + amp · sin(2π f t): all variability at ``freq_hz``."""
    t, times, rrs = 0.0, [], []
    while t < duration_s:
        r = 800.0 + amp_ms * math.sin(2 * math.pi * freq_hz * t)
        t += r / 1000.0
        times.append(t)
        rrs.append(r)
    return _clean(np.array(rrs), (np.array(times) * 1e9).astype(np.int64))


# --- Same beats in, same values as NeuroKit2 out -------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_frequency_equals_neurokit_quadratic(seed: int) -> None:
    # 1600 beats ≈ 21 min: long enough for VLF, LF and HF.
    c = _clean(*_beats(seed, 1600))
    window_s = float(np.sum(c.rr_ms)) / 1000
    f = hrv_frequency_features(c, window_s=window_s, interpolation="quadratic")
    assert f.notes == ()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nk.hrv_frequency(_nk_input(c), sampling_rate=1000, interpolation_rate=4,
                               psd_method="welch", normalize=False).iloc[0]
    assert f.vlf_ms2 == pytest.approx(ref["HRV_VLF"], rel=REL)
    assert f.lf_ms2 == pytest.approx(ref["HRV_LF"], rel=REL)
    assert f.hf_ms2 == pytest.approx(ref["HRV_HF"], rel=REL)
    assert f.lf_hf == pytest.approx(ref["HRV_LFHF"], rel=REL)
    assert f.tp_ms2 == pytest.approx(ref["HRV_VLF"] + ref["HRV_LF"] + ref["HRV_HF"], rel=REL)
    lf, hf = ref["HRV_LF"], ref["HRV_HF"]
    assert f.lf_nu == pytest.approx(100 * lf / (lf + hf), rel=REL)
    assert f.hf_nu == pytest.approx(100 * hf / (lf + hf), rel=REL)


@pytest.mark.parametrize("seed", [2, 3])
def test_frequency_equals_neurokit_cubic_5min(seed: int) -> None:
    # Cubic spline cannot be passed through nk.hrv_frequency (its kwargs collide), so the same
    # pipeline is run from NeuroKit2's parts: intervals_process + signal_power.
    c = _clean(*_beats(seed, 375))  # ≈ 300 s
    f = hrv_frequency_features(c, window_s=300.0)
    rri, _, rate = nk.intervals_process(c.rr_ms, intervals_time=_nk_input(c)["RRI_Time"],
                                        interpolate=True, interpolation_rate=4, method="cubic")
    bands = [FREQ_BANDS_HZ["LF"], FREQ_BANDS_HZ["HF"], (0.4, 0.5)]
    ref = nk.signal_power(rri, frequency_band=bands, sampling_rate=rate, method="welch",
                          normalize=False, max_frequency=0.5).iloc[0].to_numpy()
    assert f.lf_ms2 == pytest.approx(ref[0], rel=REL)
    assert f.hf_ms2 == pytest.approx(ref[1], rel=REL)
    assert f.lf_hf == pytest.approx(ref[0] / ref[1], rel=REL)
    assert math.isnan(f.vlf_ms2) and math.isnan(f.tp_ms2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampen_and_dfa_alpha1_equal_neurokit(seed: int) -> None:
    c = _clean(*_beats(seed, 300))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nk.hrv_nonlinear(_nk_input(c), sampling_rate=1000,
                               dfa_windows=[(4, 16), (17, None)]).iloc[0]
    assert hrv_sampen(c) == pytest.approx(ref["HRV_SampEn"], rel=REL)
    assert hrv_dfa_alpha1(c) == pytest.approx(ref["HRV_DFA_alpha1"], rel=REL)


# --- Definitions written out -----------------------------------------------------------------


def _sampen_bruteforce(x: np.ndarray, succ: np.ndarray, m: int = 2) -> float:
    """Richman & Moorman (2000) by loops: N-m templates, Chebyshev ≤ r, no self-matches."""
    r = 0.2 * float(np.std(x, ddof=1))
    starts = [i for i in range(len(x) - m) if all(succ[i:i + m])]
    a = b = 0
    for i in starts:
        for j in starts:
            if i != j and max(abs(x[i + k] - x[j + k]) for k in range(m)) <= r:
                b += 1
                a += abs(x[i + m] - x[j + m]) <= r
    return -math.log(a / b)


def test_sampen_bruteforce_with_and_without_gap() -> None:
    rr, t = _beats(5, 140)
    c = _clean(rr, t)
    assert hrv_sampen(c) == pytest.approx(_sampen_bruteforce(c.rr_ms, c.successive), rel=1e-12)
    t_gap = t.copy()
    t_gap[70:] += 5 * 10**9  # beats lost between 69 and 70: no template may span it
    cg = _clean(rr, t_gap)
    assert not cg.successive[69] and cg.n_gaps == 1
    assert hrv_sampen(cg) == pytest.approx(_sampen_bruteforce(cg.rr_ms, cg.successive),
                                           rel=1e-12)
    assert hrv_sampen(cg) != hrv_sampen(c)


def test_dfa_alpha1_known_exponents() -> None:
    # Peng et al. 1995: white noise α ≈ 0.5, Brownian motion α ≈ 1.5 (small-scale DFA is biased
    # slightly upward, hence the asymmetric tolerance).
    rng = np.random.default_rng(7)
    white = 800 + 30 * rng.standard_normal(3000)
    brown = 800 + np.cumsum(rng.standard_normal(3000))
    for x, lo, hi in [(white, 0.45, 0.7), (brown, 1.35, 1.65)]:
        a = hrv_dfa_alpha1(_clean(x, (np.cumsum(x) * 1e6).astype(np.int64)))
        assert lo < a < hi


def test_dfa_skips_segments_across_gap() -> None:
    rr, t = _beats(4, 200)
    t_gap = t.copy()
    t_gap[100:] += 20 * 10**9
    c_gap = _clean(rr, t_gap)
    # Only segments wholly on one side of the gap are used: still a value, but not the value
    # that treats the beats across the gap as successive.
    a_gap, a_nogap = hrv_dfa_alpha1(c_gap), hrv_dfa_alpha1(_clean(rr, t))
    assert math.isfinite(a_gap) and a_gap != a_nogap


# --- Known spectra ---------------------------------------------------------------------------


@pytest.mark.parametrize(("freq_hz", "band"), [(0.1, "LF"), (0.25, "HF")])
def test_modulation_lands_in_its_band(freq_hz: float, band: str) -> None:
    c = _modulated(freq_hz, 300.0)
    f = hrv_frequency_features(c, window_s=300.0)
    lf, hf = f.lf_ms2, f.hf_ms2
    share = (lf if band == "LF" else hf) / (lf + hf)
    assert share > 0.99
    # Power of a sinusoid of amplitude A is A²/2 = 800 ms²; Hann leakage and the beat-to-beat
    # sampling lose a little, nothing is invented.
    assert 0.8 * 800 < lf + hf < 1.05 * 800


def test_two_tones_split_between_bands() -> None:
    t, times, rrs = 0.0, [], []
    while t < 600:
        r = 800 + 30 * math.sin(2 * math.pi * 0.1 * t) + 20 * math.sin(2 * math.pi * 0.25 * t)
        t += r / 1000
        times.append(t)
        rrs.append(r)
    f = hrv_frequency_features(_clean(np.array(rrs), (np.array(times) * 1e9).astype(np.int64)),
                               window_s=600.0)
    # Expected LF/HF = (30²/2) / (20²/2) = 2.25.
    assert f.lf_hf == pytest.approx(2.25, rel=0.1)
    assert f.lf_nu + f.hf_nu == pytest.approx(100.0, abs=1e-9)


# --- Validity --------------------------------------------------------------------------------


def test_60s_window_hf_only_with_reason() -> None:
    f = hrv_frequency_features(_modulated(0.25, 60.0), window_s=60.0)
    assert math.isfinite(f.hf_ms2)
    assert all(math.isnan(v) for v in (f.vlf_ms2, f.lf_ms2, f.lf_hf, f.lf_nu, f.tp_ms2))
    assert "LF omitted: window 60 s < 120 s (Task Force 1996)" in f.notes
    assert "VLF omitted: window 60 s < 300 s (Task Force 1996)" in f.notes


def test_300s_window_lf_hf_but_no_vlf() -> None:
    f = hrv_frequency_features(_modulated(0.1, 300.0), window_s=300.0)
    assert all(math.isfinite(v) for v in (f.lf_ms2, f.hf_ms2, f.lf_hf, f.lf_nu, f.hf_nu))
    assert math.isnan(f.vlf_ms2) and math.isnan(f.tp_ms2)
    assert any(n.startswith("VLF omitted: lowest resolved frequency") for n in f.notes)


def _rr_window(c: CleanRR, window_s: float) -> tuple[int, dict[Channel, ChannelSamples]]:
    end = int(window_s * 1e9) + 1
    return end, {Channel.RR: ChannelSamples(c.times_ns, c.rr_ms, None)}


def test_window_features_60s_and_300s() -> None:
    end, sl = _rr_window(_modulated(0.1, 59.5), 60.0)
    w = window_features("s1", end - 60 * 10**9, end, sl)
    assert "hrv_hf_ms2" in w.features and "hrv_lf_ms2" not in w.features
    assert "hrv_lfhf_ratio" not in w.features
    assert "LF omitted: window 60 s < 120 s (Task Force 1996)" in w.methods["hrv_frequency"]
    assert "SampEn omitted" in w.methods["hrv_nonlinear"]
    end, sl = _rr_window(_clean(*_beats(3, 372)), 300.0)
    w = window_features("s1", end - 300 * 10**9, end, sl)
    for name in ("hrv_lf_ms2", "hrv_hf_ms2", "hrv_lfhf_ratio", "hrv_lf_nu", "hrv_hf_nu",
                 "hrv_sampen", "hrv_dfa_alpha1"):
        assert math.isfinite(w.features[name]), name
    assert "hrv_vlf_ms2" not in w.features and "hrv_tp_ms2" not in w.features


def test_long_gap_or_short_span_means_no_bands() -> None:
    rr, t = _beats(6, 375)
    t_gap = t.copy()
    t_gap[200:] += 10 * 10**9  # 10 s without beats: not interpolated over
    f = hrv_frequency_features(_clean(rr, t_gap), window_s=310.0)
    assert math.isnan(f.hf_ms2) and math.isnan(f.lf_ms2)
    assert f.notes[0].startswith("no bands: gap of 10.")
    f = hrv_frequency_features(_clean(rr[:150], t[:150]), window_s=300.0)
    assert math.isnan(f.hf_ms2) and f.notes[0].startswith("no bands: beats span")
    f = hrv_frequency_features(_clean(rr[:5], t[:5]), window_s=60.0)
    assert math.isnan(f.hf_ms2) and f.notes == ("no bands: 5 intervals < 10",)


def test_bad_input() -> None:
    rr, t = _beats(8, 120)
    rr[[10, 50]] = np.nan  # dropped by rr_clean; the rest is still used
    c = _clean(rr, t)
    assert c.n_dropped == 2
    f = hrv_frequency_features(c, window_s=96.0)
    assert math.isfinite(f.hf_ms2)
    nl = hrv_nonlinear_features(c)
    assert math.isfinite(nl.sampen) and math.isfinite(nl.dfa_alpha1)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        hrv_frequency_features(c, window_s=96.0, interpolation="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interpolation_rate_hz"):
        hrv_frequency_features(c, window_s=96.0, interpolation_rate_hz=0.5)
    flat = np.full(120, 800.0)
    c_flat = _clean(flat, (np.cumsum(flat) * 1e6).astype(np.int64))
    nl = hrv_nonlinear_features(c_flat)
    assert math.isnan(nl.sampen) and math.isnan(nl.dfa_alpha1)
    f = hrv_frequency_features(c_flat, window_s=96.0)
    assert math.isnan(f.hf_ms2) and f.notes == ("no bands: intervals constant",)
    empty = _clean(np.empty(0), np.empty(0, dtype=np.int64))
    assert math.isnan(hrv_frequency_features(empty, window_s=60.0).hf_ms2)
    assert math.isnan(hrv_sampen(empty)) and math.isnan(hrv_dfa_alpha1(empty))
