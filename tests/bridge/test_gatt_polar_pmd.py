"""Polar PMD codec against the byte examples of Polar's SDK documentation, plus round trips."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.gatt import GattDecodeError
from firmware_bridge.gatt.polar_pmd import (
    POLAR_EPOCH_UNIX_NS,
    MeasurementType,
    PmdSetting,
    decode_pmd_control_response,
    decode_pmd_frame,
    decode_pmd_settings,
    encode_pmd_frame,
    encode_pmd_settings,
    encode_pmd_start,
    encode_pmd_stop,
    sample_times_ns,
)

# Header of Polar's ACC examples: type 02, timestamp 2_000_000_000 ns (00 94 35 77 ...).
ACC_HEAD = bytes.fromhex("02" "0094357700000000")
# Polar's delta-compressed ACC example (frame type 0x80): an int16 x/y/z reference sample, then
# one block of 56 samples with 10-bit deltas (so an MSB-first unpacker gets it wrong).
ACC_DELTA = bytes.fromhex(
    "7107F06A9E8D0A38BE5CBEBA2F96B3EE4BE5ADFB42B9EBBE4CFEBA2F92BFEE4BE4B1FB12B9ECBD3C3EBB2F8FD3"
    "DE4BE3B5F7D2B8EDBD307E7B2F8BE3CE8BE2BAF7A2B8EEBC20BE7B2F88F3CECBE1BDEF52F8EFBC18FE3B2F8403"
    "BFCBE0C2EF32B8F0BB044EBC2E8113AF0BE0C6EFF2F7F1B9FC7DBC2E7D279F4BDFCAEBC2F7F2B8ECCD7C2E7B37"
    "8F4BDECEE392F7F3B8E00DFD2D774B7FCBDDD2DF6237F5B7D44DBD2D745B6FCBDCD7D73237F6B5C88D7D2D716B"
    "4F4BDCDCD3F236F7B4BCDDFD2C6F7B3F4BDBE0CFD236F8B2B02DBE2C6C8F1FCBDAE3C7A276F9"
)


def test_acc_delta_frame_golden() -> None:
    f = decode_pmd_frame(ACC_HEAD + b"\x80" + ACC_DELTA)
    assert f.measurement is MeasurementType.ACC and f.compressed and f.frame_type == 0
    assert f.timestamp_ns == 2_000_000_000
    assert f.n_samples == 1 + 56  # the reference sample and the block
    assert f.samples[0].tolist() == [1905, 27376, -29282]  # 0x0771, 0x6AF0, 0x8D9E
    assert f.samples[1].tolist() == [1905 + 190, 27376 - 105, -29282 - 85]
    # the documented ±8 g range at 0.244 mG per count holds for every decoded sample
    assert np.all(np.abs(f.samples * 0.244) <= 8000)
    # times: spread evenly after the previous frame's timestamp (here 100 ns), last = frame's
    t = sample_times_ns(f, previous_ns=100)
    assert t[-1] == 2_000_000_000 and t[0] == round(100 + (2_000_000_000 - 100) / 57)


def test_acc_raw_frame_golden() -> None:
    content = bytes.fromhex("F7FFFFFFE703F8FFFEFFE503")
    f = decode_pmd_frame(ACC_HEAD + b"\x01" + content)
    assert f.samples.tolist() == [[-9, -1, 999], [-8, -2, 997]]
    t = sample_times_ns(f, rate_hz=52)
    assert t[-1] == 2_000_000_000 and t[-1] - t[0] == round(1e9 / 52)


def test_ppi_frame_golden() -> None:
    f = decode_pmd_frame(bytes.fromhex("03" + "00" * 8 + "00" + "808080 8080FF 000100 010000"
                                       .replace(" ", "")))
    a, b = f.ppi
    assert (a.hr_bpm, a.ppi_ms, a.error_ms) == (128, 32896, 32896)
    assert a.blocker and a.skin_contact and a.skin_contact_supported
    assert (b.hr_bpm, b.ppi_ms, b.error_ms, b.blocker, b.skin_contact) == (0, 1, 1, False, False)


def test_ppg_raw_and_ecg() -> None:
    ppg = np.array([[1, -2, 3, -4], [8_388_607, -8_388_608, 0, 5]])
    f = decode_pmd_frame(encode_pmd_frame(MeasurementType.PPG, 7, ppg))
    assert f.samples.tolist() == ppg.tolist()  # int24, 4 channels (3 PPG + ambient)
    raw = bytes.fromhex("00" + "0000000000000000" + "00" + "FFFFFF" + "010000")
    assert decode_pmd_frame(raw).samples.ravel().tolist() == [-1, 1]  # ECG int24 µV


def test_settings_and_control_point_golden() -> None:
    tlv = bytes.fromhex("000134000101100002" "04F500F401E803D007" "040103")
    s = decode_pmd_settings(tlv)
    assert s == {PmdSetting.SAMPLE_RATE: (52,), PmdSetting.RESOLUTION: (16,),
                 PmdSetting.RANGE: (245, 500, 1000, 2000), PmdSetting.CHANNELS: (3,)}
    assert encode_pmd_settings(s) == tlv
    milli = decode_pmd_settings(bytes.fromhex("0302FFFFFFFFFF000000" "01010E00"))
    assert milli[PmdSetting.RANGE_MILLIUNIT] == (-1, 0xFF) and milli[PmdSetting.RESOLUTION] == (14,)
    r = decode_pmd_control_response(bytes.fromhex("F00102000 0FFFFFF".replace(" ", "")))
    assert r.ok and (r.opcode, r.measurement, r.more, r.parameters) == (1, 2, False, b"\xff" * 3)
    assert encode_pmd_start(MeasurementType.ACC, {PmdSetting.SAMPLE_RATE: 52,
                                                  PmdSetting.RANGE: 8}) == bytes.fromhex(
        "0202" "00013400" "02010800")
    assert encode_pmd_stop(MeasurementType.ACC) == b"\x03\x02"
    assert POLAR_EPOCH_UNIX_NS == 946_684_800_000_000_000  # 2000-01-01T00:00:00Z


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 120),
    scale=st.sampled_from([1, 3, 100, 2000, 30000]),
    block=st.sampled_from([0, 1, 7, 50]),
    seed=st.integers(0, 2**32 - 1),
)
def test_delta_round_trip_any_width(n: int, scale: int, block: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.integers(-scale, scale + 1, size=(n, 3)), axis=0)
    s = np.clip(walk, -32768, 32767)
    raw = encode_pmd_frame(MeasurementType.ACC, 10**9, s, compressed=True,
                           block=block if n > 1 else 0)
    assert decode_pmd_frame(raw).samples.tolist() == s.tolist()


@pytest.mark.parametrize(("raw", "match"), [
    (b"\x02\x00", "shorter than the 10-byte header"),
    (b"\x09" + b"\x00" * 9 + b"\x01", "unknown measurement type 9"),
    (ACC_HEAD + b"\x01" + b"\x00" * 5, "not a whole, non-zero number of 6-byte samples"),
    (ACC_HEAD + b"\x05" + b"\x00" * 6, "unsupported frame type"),
    (ACC_HEAD + b"\x80" + b"\x00" * 4, "shorter than the 6-byte reference sample"),
    (ACC_HEAD + b"\x80" + ACC_DELTA[:-1], "delta block needs 210 bytes, 209 left"),
    (ACC_HEAD + b"\x80" + ACC_DELTA[:6] + b"\x28\x01" + b"\x00" * 15, "delta width 40"),
    (ACC_HEAD + b"\x80" + ACC_DELTA[:6] + b"\x0a", "delta block header cut"),
    (b"\x03" + b"\x00" * 9 + b"\x00" * 5, "6-byte PPI records"),
])
def test_malformed_frames_are_codec_errors(raw: bytes, match: str) -> None:
    with pytest.raises(GattDecodeError, match=match):
        decode_pmd_frame(raw)


def test_malformed_settings_and_responses() -> None:
    with pytest.raises(GattDecodeError, match="unknown setting type 9"):
        decode_pmd_settings(b"\x09\x01\x00")
    with pytest.raises(GattDecodeError, match="RANGE needs 4 bytes"):
        decode_pmd_settings(b"\x02\x02\x01\x00")
    with pytest.raises(GattDecodeError, match="expected 0xF0"):
        decode_pmd_control_response(b"\x01\x02\x03\x04")
    with pytest.raises(GattDecodeError, match="need at least 4"):
        decode_pmd_control_response(b"\xf0")
    assert struct.calcsize("<BHHB") == 6
