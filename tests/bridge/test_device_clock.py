"""DeviceClock against synthetic clocks with known offset, drift, jitter and reboots."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.device_clock import DeviceClock

BOOT_NS = 1_700_000_000_000_000_000  # host UTC at device boot


def _reading(rng: np.random.Generator, t_s: float, drift_ppm: float,
             outlier_p: float = 0.05) -> tuple[int, int]:
    """Device ticks (µs) at true time t_s, and the host receive time with BLE latency."""
    device_us = round(t_s * 1e6 * (1 + drift_ppm * 1e-6))
    delay_ns = rng.uniform(0, 4e6)  # 0-4 ms link latency
    if rng.random() < outlier_p:
        delay_ns += 200e6  # a retransmitted / queued reading
    return device_us, BOOT_NS + round(t_s * 1e9 + delay_ns)


@pytest.mark.parametrize("drift_ppm", [-80.0, 0.0, 35.0, 250.0])
def test_offset_and_drift_recovered(drift_ppm: float) -> None:
    rng = np.random.default_rng(1)
    clock = DeviceClock(window=64, min_drift_span_s=30)
    for t in np.arange(10.0, 330.0, 5.0):  # 64 readings over 320 s
        clock.observe(*_reading(rng, float(t), drift_ppm), rtc=False)
    assert clock.drift_ppm is not None
    assert abs(clock.drift_ppm - drift_ppm) < 3.0  # ppm
    # mapping a device stamp 30 s beyond the last reading: within 5 ms of the true time
    # (the fit includes the ~2 ms median link latency)
    t_true = 360.0
    device_us = round(t_true * 1e6 * (1 + drift_ppm * 1e-6))
    err_ms = (clock.to_utc_ns(device_us) - (BOOT_NS + round(t_true * 1e9))) / 1e6
    assert 0 <= err_ms < 5


def test_single_observation_is_offset_only() -> None:
    clock = DeviceClock()
    clock.observe(2_000_000, BOOT_NS + 2_000_000_000, rtc=False)
    assert clock.drift_ppm is None
    assert clock.offset_ns == BOOT_NS
    assert clock.to_utc_ns(3_500_000) == BOOT_NS + 3_500_000_000


def test_short_baseline_does_not_estimate_drift() -> None:
    rng = np.random.default_rng(2)
    clock = DeviceClock(min_drift_span_s=30)
    for t in (1.0, 2.0, 3.0, 4.0):
        clock.observe(*_reading(rng, t, 0.0, outlier_p=0), rtc=False)
    assert clock.drift_ppm is None  # 3 s of 4 ms jitter would claim ~1000 ppm
    assert abs(clock.to_utc_ns(10_000_000) - (BOOT_NS + 10**10)) < 4e6


def test_rtc_is_trusted_but_drift_reported() -> None:
    clock = DeviceClock(min_drift_span_s=10)
    start_us = 1_644_227_824_000_000
    for k in range(40):  # RTC runs 50 ppm slow and is 1.5 s behind the host
        dev = start_us + round(k * 1e6 * (1 - 50e-6))
        host = (start_us + 1_500_000) * 1000 + k * 10**9
        clock.observe(dev, host, rtc=True)
    assert clock.offset_ns == 0
    assert clock.to_utc_ns(start_us + 123) == (start_us + 123) * 1000
    assert clock.drift_ppm is not None and abs(clock.drift_ppm + 50) < 0.5


def test_reboot_starts_new_epoch_and_keeps_old_fit() -> None:
    clock = DeviceClock()
    clock.observe(100_000_000, BOOT_NS + 100 * 10**9, rtc=False)
    assert clock.epoch == 0
    # device rebooted at host BOOT_NS + 200 s: ticks restart near zero
    clock.observe(1_000_000, BOOT_NS + 201 * 10**9, rtc=False)
    assert clock.epoch == 1
    assert clock.n_observations == 1
    assert clock.to_utc_ns(2_000_000) == BOOT_NS + 202 * 10**9
    # a frame stamped before the reboot still maps with the old epoch's fit
    assert clock.to_utc_ns(150_000_000, epoch=0) == BOOT_NS + 150 * 10**9
    with pytest.raises(LookupError, match="epoch 7"):
        clock.to_utc_ns(0, epoch=7)


def test_switch_between_rtc_and_ticks_starts_new_epoch() -> None:
    clock = DeviceClock()
    clock.observe(5, BOOT_NS, rtc=False)
    clock.observe(1_700_000_000_000_000, BOOT_NS + 1000, rtc=True)
    assert clock.epoch == 1 and clock.rtc is True


def test_equal_readings_are_not_a_reboot() -> None:
    clock = DeviceClock()
    clock.observe(5_000, BOOT_NS, rtc=False)
    clock.observe(5_000, BOOT_NS + 1_000, rtc=False)
    assert clock.epoch == 0 and clock.n_observations == 2


def test_explicit_reset_and_errors() -> None:
    clock = DeviceClock()
    with pytest.raises(LookupError, match="read the device clock first"):
        clock.to_utc_ns(0)
    clock.observe(1, BOOT_NS, rtc=False)
    clock.reset()
    assert clock.offset_ns is None and clock.epoch == 1
    with pytest.raises(LookupError):
        clock.to_utc_ns(0)
    with pytest.raises(ValueError, match="non-negative"):
        clock.observe(-1, BOOT_NS, rtc=False)
    with pytest.raises(ValueError, match="window"):
        DeviceClock(window=1)


def test_window_follows_a_drift_change() -> None:
    """Temperature changes the crystal: only the recent window should count."""
    clock = DeviceClock(window=32, min_drift_span_s=30)
    device_us = 0.0
    for k in range(200):  # 10 s steps: first 100 ppm fast, then 20 ppm slow
        ppm = 100.0 if k < 100 else -20.0
        device_us += 10e6 * (1 + ppm * 1e-6)
        clock.observe(round(device_us), BOOT_NS + (k + 1) * 10 * 10**9, rtc=False)
    assert clock.drift_ppm is not None and abs(clock.drift_ppm + 20) < 0.5
