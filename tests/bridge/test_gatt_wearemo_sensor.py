"""wearemo sensor service codecs: golden frames from PROTOCOL.md, round trips, malformed input."""

from __future__ import annotations

import binascii
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from firmware_bridge.gatt import GattDecodeError
from firmware_bridge.gatt.wearemo_sensor import (
    CHANNEL_CODES,
    DEFAULT_SAMPLE_FORMATS,
    ClockReading,
    CommandResult,
    DeviceInfo,
    ReadClockCommand,
    ResultCode,
    ResumeFromCommand,
    SampleFormat,
    SensorFrame,
    StartCommand,
    StopCommand,
    crc16_ccitt_false,
    decode_command,
    decode_frame,
    decode_info,
    decode_response,
    encode_command,
    encode_frame,
    encode_info,
    encode_response,
    max_samples_per_frame,
)
from wearemo.samples import Channel

# Example 1 of PROTOCOL.md: one TEMP sample, 33.0 degC as int16 at scale 2^-6, RTC time 0.
TEMP_EXAMPLE = bytes.fromhex(
    "01 03 01 01 00000000 0000000000000000 a00f0000 0000803c 0100 4008 d3b8"
)
# Example 2 of PROTOCOL.md: PPG, seq 258, ticks 1 000 000 us, 64 Hz, int24 at scale 2^-10,
# samples -1.0 and 2.5 (raw -1024 = 0xFFFC00, 2560 = 0x000A00).
PPG_EXAMPLE = bytes.fromhex(
    "01 01 02 00 02010000 40420f0000000000 00fa0000 0000803a 0200 00fcff 000a00 7e9a"
)
# Example 3: ACC, seq 1, ticks 500 us, 32 Hz, int16 at 2^-6 (E4 1/64 g), one sample (1, -0.5, 0)
ACC_EXAMPLE = bytes.fromhex(
    "01 04 01 00 01000000 f401000000000000 007d0000 0000803c 0100 4000 e0ff 0000 d2ff"
)


def test_crc_matches_check_value_and_reference() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1  # the catalogued check value
    rng = np.random.default_rng(0)
    for n in (0, 1, 26, 244):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc16_ccitt_false(data) == binascii.crc_hqx(data, 0xFFFF)


def test_golden_examples_have_the_documented_crc() -> None:
    for frame in (TEMP_EXAMPLE, PPG_EXAMPLE, ACC_EXAMPLE):
        assert struct.unpack("<H", frame[-2:])[0] == binascii.crc_hqx(frame[:-2], 0xFFFF)


def test_decode_golden_temp() -> None:
    f = decode_frame(TEMP_EXAMPLE)
    assert (f.channel, f.seq, f.device_time_us, f.rtc, f.rate_hz) == (Channel.TEMP, 0, 0, True, 4.0)
    assert f.values.tolist() == [33.0]
    assert f.values.dtype == np.float64


def test_decode_golden_ppg_and_acc() -> None:
    f = decode_frame(PPG_EXAMPLE)
    assert (f.channel, f.seq, f.device_time_us, f.rtc, f.rate_hz) == \
        (Channel.PPG, 258, 1_000_000, False, 64.0)
    assert f.values.tolist() == [-1.0, 2.5]
    a = decode_frame(ACC_EXAMPLE)
    assert a.values.shape == (1, 3)
    assert a.values.tolist() == [[1.0, -0.5, 0.0]]
    assert (a.seq, a.device_time_us, a.rate_hz) == (1, 500, 32.0)


def test_encode_golden() -> None:
    temp = SensorFrame(Channel.TEMP, 0, 0, True, 4.0, np.array([33.0]))
    assert encode_frame(temp, sample_format=SampleFormat.INT16, scale=2**-6) == TEMP_EXAMPLE
    ppg = SensorFrame(Channel.PPG, 258, 1_000_000, False, 64.0, np.array([-1.0, 2.5]))
    assert encode_frame(ppg) == PPG_EXAMPLE  # PPG default is int24 at 2^-10
    acc = SensorFrame(Channel.ACC, 1, 500, False, 32.0, np.array([[1.0, -0.5, 0.0]]))
    assert encode_frame(acc, scale=2**-6) == ACC_EXAMPLE


def _corrupt(frame: bytes, offset: int, value: bytes) -> bytes:
    """Patch bytes and re-seal the CRC so the structural check is what fails."""
    body = frame[:offset] + value + frame[offset + len(value):-2]
    return body + struct.pack("<H", crc16_ccitt_false(body))


@pytest.mark.parametrize(("data", "message"), [
    (b"", "shorter than the 28-byte header and CRC"),
    (TEMP_EXAMPLE[:-3] + TEMP_EXAMPLE[-2:], "CRC mismatch"),
    (TEMP_EXAMPLE[:-1] + bytes([TEMP_EXAMPLE[-1] ^ 1]), "CRC mismatch"),
    (_corrupt(TEMP_EXAMPLE, 0, b"\x02"), "unsupported protocol version 2"),
    (_corrupt(TEMP_EXAMPLE, 1, b"\x05"), "unknown channel code 5"),
    (_corrupt(TEMP_EXAMPLE, 1, b"\x00"), "unknown channel code 0"),
    (_corrupt(TEMP_EXAMPLE, 2, b"\x09"), "unknown sample format 9"),
    (_corrupt(TEMP_EXAMPLE, 16, b"\x00\x00\x00\x00"), "sampling rate is 0"),
    (_corrupt(TEMP_EXAMPLE, 20, struct.pack("<f", 0.0)), "scale must be finite and non-zero"),
    (_corrupt(TEMP_EXAMPLE, 20, struct.pack("<f", float("nan"))), "scale must be finite"),
    (_corrupt(TEMP_EXAMPLE, 24, b"\x02\x00"), "need 4 bytes, got 2"),
    (_corrupt(TEMP_EXAMPLE, 24, b"\x00\x00"), "sample count is 0"),
    (_corrupt(ACC_EXAMPLE, 2, b"\x03"), "need 12 bytes, got 6"),
    (_corrupt(_corrupt(TEMP_EXAMPLE, 2, b"\x04"), 24, b"\x00\x00") , "sample count is 0"),
])
def test_decode_malformed(data: bytes, message: str) -> None:
    with pytest.raises(GattDecodeError, match=message):
        decode_frame(data)


def test_decode_rejects_non_finite_float_samples() -> None:
    f = SensorFrame(Channel.EDA, 0, 0, False, 4.0, np.array([1.0, 2.0]))
    data = encode_frame(f, sample_format=SampleFormat.FLOAT32)
    bad = _corrupt(data, 26, struct.pack("<f", float("inf")))
    with pytest.raises(GattDecodeError, match="non-finite float32 sample"):
        decode_frame(bad)


def test_encode_rejects_bad_frames() -> None:
    with pytest.raises(ValueError, match="does not fit INT16"):
        encode_frame(SensorFrame(Channel.ACC, 0, 0, False, 32.0, np.array([[17.0, 0, 0]])))
    with pytest.raises(ValueError, match="not finite"):
        encode_frame(SensorFrame(Channel.PPG, 0, 0, False, 64.0, np.array([1.0, np.nan])))
    with pytest.raises(ValueError, match=r"1\.\.65535 samples"):
        encode_frame(SensorFrame(Channel.PPG, 0, 0, False, 64.0, np.array([])))
    with pytest.raises(ValueError, match="rate_hz"):
        encode_frame(SensorFrame(Channel.PPG, 0, 0, False, 0.0001, np.array([1.0])))
    with pytest.raises(ValueError, match="seq"):
        encode_frame(SensorFrame(Channel.PPG, 1 << 32, 0, False, 64.0, np.array([1.0])))
    with pytest.raises(ValueError, match="scale"):
        encode_frame(SensorFrame(Channel.PPG, 0, 0, False, 64.0, np.array([1.0])), scale=0.0)
    with pytest.raises(ValueError, match="shape"):
        SensorFrame(Channel.ACC, 0, 0, False, 32.0, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="has no sensor frame"):
        SensorFrame(Channel.HR, 0, 0, False, 1.0, np.array([1.0]))


@pytest.mark.parametrize("channel", list(CHANNEL_CODES))
@pytest.mark.parametrize("fmt", list(SampleFormat))
@pytest.mark.parametrize("mtu", [23, 50, 185, 247, 517])
def test_max_samples_fills_but_never_exceeds_mtu(channel: Channel, fmt: SampleFormat,
                                                 mtu: int) -> None:
    n = max_samples_per_frame(channel, mtu, fmt)
    shape = (n, 3) if channel is Channel.ACC else (n,)
    if n:
        frame = SensorFrame(channel, 0, 0, False, 4.0, np.zeros(shape))
        assert len(encode_frame(frame, sample_format=fmt)) <= mtu - 3
    more = (n + 1, 3) if channel is Channel.ACC else (n + 1,)
    frame = SensorFrame(channel, 0, 0, False, 4.0, np.zeros(more))
    assert len(encode_frame(frame, sample_format=fmt)) > mtu - 3
    if mtu == 23:
        assert n == 0  # nothing fits the default MTU: the central must negotiate a larger one


@st.composite
def frames_and_formats(draw: st.DrawFn) -> tuple[SensorFrame, SampleFormat, float]:
    channel = draw(st.sampled_from(list(CHANNEL_CODES)))
    fmt = draw(st.sampled_from(list(SampleFormat)))
    exponent = draw(st.integers(-20, 4))
    scale = 2.0**exponent
    n = draw(st.integers(1, 40))
    shape = (n, 3) if channel is Channel.ACC else (n,)
    if fmt is SampleFormat.FLOAT32:
        elems = st.floats(-1e6, 1e6, width=32)
        raw = draw(hnp.arrays(np.float32, shape, elements=elems)).astype(np.float64)
    else:
        bits = {SampleFormat.INT16: 15, SampleFormat.INT24: 23, SampleFormat.INT32: 31}[fmt]
        raw = draw(hnp.arrays(np.int64, shape, elements=st.integers(-(2**bits), 2**bits - 1)))
    frame = SensorFrame(
        channel=channel,
        seq=draw(st.integers(0, 2**32 - 1)),
        device_time_us=draw(st.integers(0, 2**64 - 1)),
        rtc=draw(st.booleans()),
        rate_hz=draw(st.integers(1, 10_000_000)) / 1000.0,
        values=raw * scale,
    )
    return frame, fmt, scale


@given(frames_and_formats())
def test_frame_round_trip_is_exact_on_the_grid(
    case: tuple[SensorFrame, SampleFormat, float],
) -> None:
    frame, fmt, scale = case
    back = decode_frame(encode_frame(frame, sample_format=fmt, scale=scale))
    assert (back.channel, back.seq, back.device_time_us, back.rtc) == \
        (frame.channel, frame.seq, frame.device_time_us, frame.rtc)
    assert back.rate_hz == frame.rate_hz
    np.testing.assert_array_equal(back.values, frame.values)


@given(st.sampled_from(list(CHANNEL_CODES)), st.integers(1, 50), st.integers(0, 2**32 - 1))
def test_default_format_quantisation_within_half_a_step(channel: Channel, n: int,
                                                        seed: int) -> None:
    _, scale = DEFAULT_SAMPLE_FORMATS[channel]
    shape = (n, 3) if channel is Channel.ACC else (n,)
    values = np.random.default_rng(seed).uniform(-10, 10, shape)
    back = decode_frame(encode_frame(SensorFrame(channel, 0, 0, False, 4.0, values))).values
    assert np.max(np.abs(back - values)) <= scale / 2 + 1e-12


channel_sets = st.sets(st.sampled_from(list(CHANNEL_CODES)), min_size=1).map(frozenset)
commands = st.one_of(
    st.builds(StartCommand, channel_sets),
    st.builds(StopCommand, channel_sets),
    st.just(ReadClockCommand()),
    st.builds(ResumeFromCommand, st.sampled_from(list(CHANNEL_CODES)), st.integers(0, 2**32 - 1)),
)
responses = st.one_of(
    st.builds(CommandResult, st.integers(0, 255), st.sampled_from(list(ResultCode))),
    st.builds(ClockReading, st.integers(0, 2**64 - 1), st.booleans()),
)


@given(commands)
def test_command_round_trip(cmd: object) -> None:
    assert decode_command(encode_command(cmd)) == cmd  # type: ignore[arg-type]


@given(responses)
def test_response_round_trip(resp: object) -> None:
    assert decode_response(encode_response(resp)) == resp  # type: ignore[arg-type]


def test_control_golden() -> None:
    assert encode_command(StartCommand(frozenset(CHANNEL_CODES))) == bytes.fromhex("01 0f")
    assert encode_command(StopCommand(frozenset({Channel.ACC}))) == bytes.fromhex("02 08")
    assert encode_command(ReadClockCommand()) == bytes.fromhex("03")
    assert encode_command(ResumeFromCommand(Channel.EDA, 0x01020304)) == \
        bytes.fromhex("04 02 04 03 02 01")
    assert decode_response(bytes.fromhex("80 04 03")) == \
        CommandResult(4, ResultCode.PARTIAL)
    assert decode_response(bytes.fromhex("81 00 e4 0b 54 02 00 00 00 01")) == \
        ClockReading(10_000_000_000, True)


@pytest.mark.parametrize(("data", "message"), [
    ("", "empty write"),
    ("01", "START takes 2 bytes, got 1"),
    ("01 00", "empty channel mask"),
    ("01 10", "unknown channel bits 0x10"),
    ("03 00", "READ_CLOCK takes 1 bytes, got 2"),
    ("04 05 00 00 00 00", "unknown channel code 5"),
    ("04 01 00 00 00", "RESUME_FROM takes 6 bytes, got 5"),
    ("7f", "unknown command opcode 0x7F"),
])
def test_command_malformed(data: str, message: str) -> None:
    with pytest.raises(GattDecodeError, match=message):
        decode_command(bytes.fromhex(data))


@pytest.mark.parametrize(("data", "message"), [
    ("", "empty notification"),
    ("80 01", "RESULT takes 3 bytes"),
    ("80 01 09", "unknown result code 0x09"),
    ("81 00", "CLOCK takes 10 bytes"),
    ("01", "unknown response opcode 0x01"),
])
def test_response_malformed(data: str, message: str) -> None:
    with pytest.raises(GattDecodeError, match=message):
        decode_response(bytes.fromhex(data))


def test_info_round_trip_and_errors() -> None:
    info = DeviceInfo(1, frozenset({Channel.PPG, Channel.EDA}), 57, "vw-0.1.0")
    assert encode_info(info) == bytes.fromhex("01 03 39") + b"vw-0.1.0"
    assert decode_info(encode_info(info)) == info
    assert decode_info(bytes.fromhex("01 0f ff")).battery_percent is None
    with pytest.raises(GattDecodeError, match="battery 101%"):
        decode_info(bytes.fromhex("01 0f 65"))
    with pytest.raises(GattDecodeError, match="not UTF-8"):
        decode_info(bytes.fromhex("01 0f 10 ff"))
    with pytest.raises(GattDecodeError, match="at least 3 bytes"):
        decode_info(b"\x01")


def test_protocol_md_examples_match_the_codec() -> None:
    """The hex examples a firmware engineer reads in PROTOCOL.md are the golden frames here."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "firmware_bridge" / "PROTOCOL.md").read_text()
    blocks = re.findall(r"### Example \d.*?```\n(.*?)```", text, flags=re.S)
    hex_token = re.compile(r"^[0-9a-f]{2}$")
    frames = []
    for block in blocks:
        lines = [ln for ln in block.splitlines()
                 if ln.split() and all(hex_token.match(t) for t in ln.split())]
        frames.append(bytes.fromhex(" ".join(lines)))
    assert frames == [TEMP_EXAMPLE, PPG_EXAMPLE, ACC_EXAMPLE]
