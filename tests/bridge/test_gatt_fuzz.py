"""Fuzz: every decoder raises only GattDecodeError on arbitrary or mutated bytes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.gatt import (
    GattDecodeError,
    decode_body_sensor_location,
    decode_heart_rate_measurement,
    decode_hr_control_point,
)
from firmware_bridge.gatt.polar_pmd import (
    MeasurementType,
    decode_pmd_control_response,
    decode_pmd_frame,
    decode_pmd_settings,
    encode_pmd_frame,
)
from firmware_bridge.gatt.wearemo_sensor import (
    SensorFrame,
    crc16_ccitt_false,
    decode_command,
    decode_frame,
    decode_info,
    decode_response,
    encode_frame,
)
from wearemo.samples import Channel

DECODERS: list[Callable[[bytes], object]] = [
    decode_heart_rate_measurement, decode_body_sensor_location, decode_hr_control_point,
    decode_frame, decode_command, decode_response, decode_info,
    decode_pmd_frame, decode_pmd_settings, decode_pmd_control_response,
]

FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_gatt_errors(decoder: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(GattDecodeError):  # the only acceptable failure
        decoder(data)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(decoder: Callable[[bytes], object], data: bytes) -> None:
    _only_gatt_errors(decoder, data)


_SEEDS = [
    encode_frame(SensorFrame(Channel.PPG, 5, 10, False, 64.0, np.linspace(-3, 3, 20))),
    encode_frame(SensorFrame(Channel.ACC, 5, 10, True, 32.0, np.ones((6, 3)))),
    encode_frame(SensorFrame(Channel.EDA, 1, 0, False, 4.0, np.array([0.5, 0.7]))),
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """Valid frames with header/body bytes changed and the CRC re-sealed (to get past it)."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    body = data[:-2]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(body) - 1))
        body[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(body)))
    if draw(st.booleans()):
        body = body[:cut]
    extra = draw(st.binary(max_size=8))
    body = bytearray(body) + extra
    return bytes(body) + crc16_ccitt_false(bytes(body)).to_bytes(2, "little")


@FUZZ
@given(mutated_frames())
def test_mutated_sealed_frames(data: bytes) -> None:
    _only_gatt_errors(decode_frame, data)


_PMD_SEEDS = [
    encode_pmd_frame(MeasurementType.ACC, 5, np.arange(30).reshape(10, 3) * 37, compressed=True,
                     block=4),
    encode_pmd_frame(MeasurementType.PPG, 5, np.arange(8).reshape(2, 4)),
]


@st.composite
def mutated_pmd_frames(draw: st.DrawFn) -> bytes:
    """Valid PMD frames with bytes changed, cut or extended (delta widths and counts too)."""
    data = bytearray(draw(st.sampled_from(_PMD_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=8))


@FUZZ
@given(mutated_pmd_frames())
def test_mutated_pmd_frames(data: bytes) -> None:
    _only_gatt_errors(decode_pmd_frame, data)


@pytest.mark.timeout(120)
def test_atheris_coverage_guided_run_finds_no_crash(tmp_path: Path) -> None:
    """20,000 coverage-guided inputs over every decoder (benchmarks/fuzz_atheris.py): libFuzzer
    exits non-zero on any exception other than GattDecodeError."""
    script = Path(__file__).parents[2] / "benchmarks" / "fuzz_atheris.py"
    done = subprocess.run(
        [sys.executable, str(script), "-runs=20000", "-seed=7", "-timeout=10",
         str(tmp_path / "corpus")], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 20000 runs" in done.stderr
