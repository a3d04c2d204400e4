"""Signal stages against simulators with known truth."""

from __future__ import annotations

import neurokit2 as nk
import numpy as np
import pytest

from wearemo.signals import acc_motion, eda_decompose, ppg_beats, rr_clean, temp_level


@pytest.mark.parametrize("bpm", [70, 110])
def test_ppg_beats_recover_simulated_rate(bpm: int) -> None:
    ppg = nk.ppg_simulate(duration=60, sampling_rate=64, heart_rate=bpm, random_state=3)
    b = ppg_beats(ppg, rate_hz=64)
    assert abs(60000 / b.rr_ms.mean() - bpm) < 2.0  # tolerance: 2 bpm
    assert b.quality > 0.9


# Sub-sample fiducials (parabolic refinement) matter here: with beat times rounded to the
# 15.6-ms sample grid, the Kubios correction moved ~15 % of these clean beats at 110 bpm.
@pytest.mark.parametrize("bpm", [70, 110])
def test_ppg_correction_leaves_clean_beats_alone(bpm: int) -> None:
    ppg = nk.ppg_simulate(duration=60, sampling_rate=64, heart_rate=bpm, random_state=3)
    assert ppg_beats(ppg, rate_hz=64).corrected_fraction < 0.1


@pytest.mark.parametrize("x", [np.zeros(3840), np.full(3840, 5.0), np.zeros(10)])
def test_ppg_flat_gives_no_beats(x: np.ndarray) -> None:
    b = ppg_beats(x, rate_hz=64)
    assert b.n_beats == 0 and b.quality == 0.0


def test_ppg_unknown_method() -> None:
    with pytest.raises(ValueError, match="elgendi"):
        ppg_beats(np.zeros(640), rate_hz=64, method="nope")  # type: ignore[arg-type]


def test_rr_clean_drops_implausible_and_marks_gaps() -> None:
    rr = np.array([800.0, 810, 250, 820, 800, 2500, 790, 800])
    t = np.cumsum(rr).astype(np.int64) * 10**6
    t[6:] += 5 * 10**9  # 5-s gap before beat 6
    c = rr_clean(rr, t)
    assert c.rr_ms.tolist() == [800, 810, 820, 800, 790, 800]
    assert c.n_dropped == 2
    # pairs: (800,810) ok; (810,820) spans a dropped beat; (820,800) ok; (800,790) spans
    # the dropped 2500 and the gap; (790,800) ok.
    assert c.successive.tolist() == [True, False, True, False, True]


@pytest.mark.parametrize("scr_number", [1, 3, 6])
def test_eda_scr_count_from_simulator(scr_number: int) -> None:
    for seed in (1, 2):
        eda = nk.eda_simulate(duration=60, sampling_rate=4, scr_number=scr_number,
                              noise=0.01, drift=-0.01, random_state=seed)
        comp = eda_decompose(eda, rate_hz=4)
        assert abs(comp.n_scr - scr_number) <= 1  # tolerance: ±1 SCR
        assert np.all(comp.scr_amplitudes_us > 0)
        assert np.all(comp.scr_rise_times_s > 0)
        assert comp.tonic_us.shape == eda.shape


def test_eda_flat_and_zero() -> None:
    for x in (np.zeros(240), np.full(240, 2.0)):
        comp = eda_decompose(x, rate_hz=4)
        assert comp.n_scr == 0
        assert np.all(np.isfinite(comp.tonic_us))


def test_temp_and_acc() -> None:
    t = np.arange(240) * 250_000_000
    lv = temp_level(33.0 + 0.2 * t / 60e9, t)
    assert lv.slope_degC_per_min == pytest.approx(0.2, rel=1e-9)
    rng = np.random.default_rng(0)
    still = np.tile([0.0, 0.0, 1.0], (1920, 1)) + rng.normal(0, 0.005, (1920, 3))
    shaking = np.tile([0.0, 0.0, 1.0], (1920, 1))
    shaking[:, 2] += 0.3 * np.sin(np.arange(1920) / 32 * 2 * np.pi * 2)
    assert not acc_motion(still, rate_hz=32).motion
    m = acc_motion(shaking, rate_hz=32)
    assert m.motion and m.activity_g == pytest.approx(0.3 / np.sqrt(2), rel=0.02)
