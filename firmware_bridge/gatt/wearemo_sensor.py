"""The wearemo sensor service: PPG / EDA / TEMP / ACC frames over a custom GATT service.

The wire format is specified in ``firmware_bridge/PROTOCOL.md`` (byte tables and hex examples a
firmware engineer can implement from); this module is its reference codec. All integers are
little-endian. A data frame is a 26-byte header, the samples, and a CRC-16/CCITT-FALSE::

    off size field
      0   1  protocol version (1)
      1   1  channel code (ppg=1, eda=2, temp=3, acc=4)
      2   1  sample format (int16=1, int24=2, int32=3, float32=4)
      3   1  flags: bit0 = device time is RTC unix time (else ticks since boot); others reserved
      4   4  seq, uint32, per channel, +1 per frame
      8   8  device time of the first sample, uint64 microseconds
     16   4  sampling rate, uint32 milli-hertz (> 0)
     20   4  scale, float32 (canonical value = raw * scale; finite, non-zero)
     24   2  number of samples n, uint16 (>= 1); acc carries x, y, z per sample
     26  ..  samples (n * axes * size bytes)
    end   2  CRC-16/CCITT-FALSE over all preceding bytes

Example
-------
>>> import numpy as np
>>> from wearemo.samples import Channel
>>> f = SensorFrame(Channel.EDA, seq=7, device_time_us=1_000_000, rtc=False, rate_hz=4.0,
...                 values=np.array([0.5, 0.75]))
>>> data = encode_frame(f, sample_format=SampleFormat.INT16, scale=1 / 1024)
>>> len(data), decode_frame(data).values.tolist()
(32, [0.5, 0.75])
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from firmware_bridge.gatt.errors import GattDecodeError
from wearemo.samples import CHANNEL_AXES, Channel

__all__ = [
    "CHANNEL_CODES",
    "CONTROL_CHAR_UUID",
    "DATA_CHAR_UUID",
    "DEFAULT_SAMPLE_FORMATS",
    "FRAME_OVERHEAD",
    "INFO_CHAR_UUID",
    "PROTOCOL_VERSION",
    "SERVICE_UUID",
    "ClockReading",
    "Command",
    "CommandResult",
    "DeviceInfo",
    "Opcode",
    "ReadClockCommand",
    "Response",
    "ResultCode",
    "ResumeFromCommand",
    "SampleFormat",
    "SensorFrame",
    "StartCommand",
    "StopCommand",
    "channels_from_mask",
    "channels_to_mask",
    "crc16_ccitt_false",
    "declared_frame_length",
    "decode_command",
    "decode_frame",
    "decode_info",
    "decode_response",
    "encode_command",
    "encode_frame",
    "encode_info",
    "encode_response",
    "max_samples_per_frame",
]

SERVICE_UUID = "7e5a0001-6d1c-4b8e-9f3a-2c5e8d0b4a10"
DATA_CHAR_UUID = "7e5a0002-6d1c-4b8e-9f3a-2c5e8d0b4a10"
CONTROL_CHAR_UUID = "7e5a0003-6d1c-4b8e-9f3a-2c5e8d0b4a10"
INFO_CHAR_UUID = "7e5a0004-6d1c-4b8e-9f3a-2c5e8d0b4a10"

PROTOCOL_VERSION = 1

#: Channel codes on the wire (hr and rr travel over the standard Heart Rate Service instead).
CHANNEL_CODES: dict[Channel, int] = {
    Channel.PPG: 1, Channel.EDA: 2, Channel.TEMP: 3, Channel.ACC: 4
}
_CODE_CHANNELS = {v: k for k, v in CHANNEL_CODES.items()}


class SampleFormat(IntEnum):
    """Raw sample encoding; the canonical value is ``raw * scale``."""

    INT16 = 1
    INT24 = 2
    INT32 = 3
    FLOAT32 = 4


_FORMAT_SIZE = {SampleFormat.INT16: 2, SampleFormat.INT24: 3, SampleFormat.INT32: 4,
                SampleFormat.FLOAT32: 4}
_INT_RANGE = {SampleFormat.INT16: 15, SampleFormat.INT24: 23, SampleFormat.INT32: 31}

#: Default (format, scale) per channel. Power-of-two scales are exact in float32, so a value
#: already on the grid (E4 acc in 1/64 g) survives a round trip bit for bit.
DEFAULT_SAMPLE_FORMATS: dict[Channel, tuple[SampleFormat, float]] = {
    Channel.PPG: (SampleFormat.INT24, 2.0**-10),  # +-8192 au, resolution ~0.001
    Channel.EDA: (SampleFormat.INT32, 2.0**-20),  # +-2048 uS, resolution ~1e-6 uS
    Channel.TEMP: (SampleFormat.INT24, 2.0**-14),  # +-512 degC, resolution ~6e-5 degC
    Channel.ACC: (SampleFormat.INT16, 2.0**-11),  # +-16 g, resolution 1/2048 g
}

_HEADER = struct.Struct("<BBBBIQIfH")
#: Header plus CRC bytes in every frame.
FRAME_OVERHEAD = _HEADER.size + 2
_FLAG_RTC = 0x01
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_MAX_N = 0xFFFF


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected, no final xor.

    Example
    -------
    >>> hex(crc16_ccitt_false(b"123456789"))
    '0x29b1'
    """
    crc = 0xFFFF
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]
    return crc


@dataclass(frozen=True, eq=False)
class SensorFrame:
    """One decoded data frame: a run of regularly sampled values of one channel.

    Parameters
    ----------
    channel
        ``ppg``, ``eda``, ``temp`` or ``acc``.
    seq
        Per-channel frame sequence number (uint32), +1 per frame; gaps mean lost frames.
    device_time_us
        Device time of the first sample, microseconds: unix time if ``rtc`` else ticks since
        boot (see :class:`firmware_bridge.device_clock.DeviceClock`).
    rtc
        Whether ``device_time_us`` is the device's real-time clock (unix epoch).
    rate_hz
        Sampling rate (travels as integer milli-hertz).
    values
        ``float64`` in the channel's canonical unit (``wearemo.samples.CHANNEL_UNITS``): shape
        ``(n,)``, or ``(n, 3)`` for ``acc``.

    Example
    -------
    >>> import numpy as np
    >>> SensorFrame(Channel.ACC, 0, 0, False, 32.0, np.zeros((2, 3))).n_samples
    2
    """

    channel: Channel
    seq: int
    device_time_us: int
    rtc: bool
    rate_hz: float
    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        channel = Channel(self.channel)
        if channel not in CHANNEL_CODES:
            raise ValueError(f"channel {channel.value!r} has no sensor frame; use one of "
                             f"{[c.value for c in CHANNEL_CODES]}")
        values = np.asarray(self.values, dtype=np.float64)
        axes = CHANNEL_AXES[channel]
        expected = "(n, 3)" if axes == 3 else "(n,)"
        if (axes == 3 and (values.ndim != 2 or values.shape[1] != 3)) or (
            axes == 1 and values.ndim != 1
        ):
            raise ValueError(f"values for {channel.value!r} must have shape {expected}, "
                             f"got {values.shape}")
        object.__setattr__(self, "channel", channel)
        object.__setattr__(self, "values", values)

    @property
    def n_samples(self) -> int:
        """Number of samples (an acc triple counts once)."""
        return int(self.values.shape[0])


def _format_of(channel: Channel, sample_format: SampleFormat | None,
               scale: float | None) -> tuple[SampleFormat, float]:
    default_fmt, default_scale = DEFAULT_SAMPLE_FORMATS[channel]
    fmt = SampleFormat(sample_format) if sample_format is not None else default_fmt
    if scale is None:
        scale = default_scale if sample_format is None or fmt == default_fmt else (
            1.0 if fmt == SampleFormat.FLOAT32 else default_scale)
    return fmt, scale


def max_samples_per_frame(channel: Channel, mtu: int,
                          sample_format: SampleFormat | None = None) -> int:
    """Most samples of ``channel`` that fit one notification at ATT MTU ``mtu``.

    A notification carries ``mtu - 3`` bytes; the frame overhead is 28 bytes, so at the default
    MTU of 23 no frame fits (returns 0): the central must negotiate a larger MTU (247 advised).

    Example
    -------
    >>> max_samples_per_frame(Channel.PPG, 247), max_samples_per_frame(Channel.ACC, 247)
    (72, 36)
    >>> max_samples_per_frame(Channel.PPG, 23)
    0
    """
    ch = Channel(channel)
    fmt, _ = _format_of(ch, sample_format, None)
    per_sample = _FORMAT_SIZE[fmt] * CHANNEL_AXES[ch]
    return max(0, min(_MAX_N, (mtu - 3 - FRAME_OVERHEAD) // per_sample))


def encode_frame(frame: SensorFrame, *, sample_format: SampleFormat | None = None,
                 scale: float | None = None) -> bytes:
    """Encode a data frame.

    Parameters
    ----------
    frame
        The frame; ``values`` in canonical units.
    sample_format
        Raw encoding; default per channel (:data:`DEFAULT_SAMPLE_FORMATS`).
    scale
        Canonical value per raw unit, stored as float32; default per channel (1.0 for an
        explicit ``FLOAT32`` on a channel whose default is an integer format).

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        No samples or more than 65535, non-finite values, a value that does not fit the format
        at this scale, a bad scale, or seq / time / rate outside their fields.

    Example
    -------
    >>> import numpy as np
    >>> f = SensorFrame(Channel.TEMP, 0, 0, True, 4.0, np.array([33.0]))
    >>> decode_frame(encode_frame(f)).values.tolist()
    [33.0]
    """
    fmt, scale = _format_of(frame.channel, sample_format, scale)
    scale32 = float(np.float32(scale))
    if not math.isfinite(scale32) or scale32 == 0.0:
        raise ValueError(f"scale must be finite and non-zero as float32, got {scale!r}")
    n = frame.n_samples
    if not 1 <= n <= _MAX_N:
        raise ValueError(f"a frame carries 1..65535 samples, got {n}")
    if not 0 <= frame.seq <= _U32_MAX:
        raise ValueError(f"seq must fit uint32, got {frame.seq}")
    if not 0 <= frame.device_time_us <= _U64_MAX:
        raise ValueError(f"device_time_us must fit uint64, got {frame.device_time_us}")
    if not math.isfinite(frame.rate_hz):
        raise ValueError(f"rate_hz must be finite, got {frame.rate_hz}")
    rate_mhz = round(frame.rate_hz * 1000.0)
    if not 1 <= rate_mhz <= _U32_MAX:
        raise ValueError(f"rate_hz must be in 0.001..4294967.295 Hz, got {frame.rate_hz}")
    flat = frame.values.reshape(-1)
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"values[{int(np.argmin(np.isfinite(flat)))}] is not finite")
    scaled = flat / scale32
    if fmt == SampleFormat.FLOAT32:
        with np.errstate(over="ignore"):
            raw32 = scaled.astype("<f4")
        if not np.all(np.isfinite(raw32)):
            raise ValueError("a value overflows float32 at this scale")
        body = raw32.tobytes()
    else:
        bits = _INT_RANGE[fmt]
        raw = np.rint(scaled)
        lo, hi = -(2**bits), 2**bits - 1
        if raw.min() < lo or raw.max() > hi:
            raise ValueError(f"a value does not fit {fmt.name} at scale {scale32!r}: "
                             f"representable range is {lo * scale32}..{hi * scale32}")
        raw_i = raw.astype("<i4")
        if fmt == SampleFormat.INT16:
            body = raw_i.astype("<i2").tobytes()
        elif fmt == SampleFormat.INT24:
            body = raw_i.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        else:
            body = raw_i.tobytes()
    header = _HEADER.pack(PROTOCOL_VERSION, CHANNEL_CODES[frame.channel], fmt,
                          _FLAG_RTC if frame.rtc else 0, frame.seq, frame.device_time_us,
                          rate_mhz, scale32, n)
    payload = header + body
    return payload + struct.pack("<H", crc16_ccitt_false(payload))


def declared_frame_length(data: bytes) -> int | None:
    """Length a data frame announces in its header (``28 + n·a·s``), or None if the header is
    cut or names an unknown channel or format. Tells a truncated frame (shorter than
    announced) from an oversize one (longer) when :func:`decode_frame` rejects it.

    Example
    -------
    >>> raw = bytes.fromhex("01030101 00000000 0000000000000000 a00f0000 0000803c"
    ...                     "0100 4008 d3b8")
    >>> declared_frame_length(raw), declared_frame_length(raw[:-3]), declared_frame_length(b"")
    (30, 30, None)
    """
    data = bytes(data)
    if len(data) < _HEADER.size:
        return None
    code, fmt_code = data[1], data[2]
    if code not in _CODE_CHANNELS or fmt_code not in {int(f) for f in SampleFormat}:
        return None
    n = struct.unpack_from("<H", data, 24)[0]
    size = _FORMAT_SIZE[SampleFormat(fmt_code)]
    return FRAME_OVERHEAD + n * CHANNEL_AXES[_CODE_CHANNELS[code]] * size


def decode_frame(data: bytes) -> SensorFrame:
    """Decode a data frame, checking everything the spec requires.

    Parameters
    ----------
    data
        One notification of the data characteristic.

    Returns
    -------
    SensorFrame

    Raises
    ------
    GattDecodeError
        Truncated, bad CRC, unknown version / channel / format, length not matching the sample
        count, zero rate or samples, a non-finite or zero scale, or non-finite float samples.

    Example
    -------
    >>> decode_frame(bytes.fromhex(
    ...     "01 03 01 01 00000000 0000000000000000 a00f0000 0000803c 0100 4008 d3b8")).values
    array([33.])
    """
    data = bytes(data)
    name = "wearemo data frame"
    if len(data) < FRAME_OVERHEAD:
        raise GattDecodeError(f"{name}: {len(data)} bytes is shorter than the "
                              f"{FRAME_OVERHEAD}-byte header and CRC")
    crc_wire = struct.unpack_from("<H", data, len(data) - 2)[0]
    crc = crc16_ccitt_false(data[:-2])
    if crc != crc_wire:
        raise GattDecodeError(f"{name}: CRC mismatch (frame says 0x{crc_wire:04X}, "
                              f"computed 0x{crc:04X})")
    version, code, fmt_code, flags, seq, t_us, rate_mhz, scale, n = _HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise GattDecodeError(f"{name}: unsupported protocol version {version}")
    if code not in _CODE_CHANNELS:
        raise GattDecodeError(f"{name}: unknown channel code {code}")
    try:
        fmt = SampleFormat(fmt_code)
    except ValueError:
        raise GattDecodeError(f"{name}: unknown sample format {fmt_code}") from None
    channel = _CODE_CHANNELS[code]
    if rate_mhz == 0:
        raise GattDecodeError(f"{name}: sampling rate is 0")
    if n == 0:
        raise GattDecodeError(f"{name}: sample count is 0")
    if not math.isfinite(scale) or scale == 0.0:
        raise GattDecodeError(f"{name}: scale must be finite and non-zero, got {scale}")
    axes = CHANNEL_AXES[channel]
    size = _FORMAT_SIZE[fmt]
    body = data[_HEADER.size:-2]
    if len(body) != n * axes * size:
        raise GattDecodeError(f"{name}: {n} {channel.value} samples of {fmt.name} need "
                              f"{n * axes * size} bytes, got {len(body)}")
    if fmt == SampleFormat.FLOAT32:
        raw = np.frombuffer(body, dtype="<f4").astype(np.float64)
        if not np.all(np.isfinite(raw)):
            raise GattDecodeError(f"{name}: non-finite float32 sample")
    elif fmt == SampleFormat.INT24:
        b = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        u = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        raw = np.where(u >= 1 << 23, u - (1 << 24), u).astype(np.float64)
    else:
        raw = np.frombuffer(body, dtype="<i2" if fmt == SampleFormat.INT16 else "<i4").astype(
            np.float64)
    values = raw * float(scale)
    if axes == 3:
        values = values.reshape(n, 3)
    return SensorFrame(channel, seq, t_us, bool(flags & _FLAG_RTC), rate_mhz / 1000.0, values)


# ---------------------------------------------------------------------------------- control


def channels_to_mask(channels: frozenset[Channel] | set[Channel]) -> int:
    """Channel mask byte: bit ``code - 1`` per channel.

    Example
    -------
    >>> channels_to_mask({Channel.PPG, Channel.ACC})
    9
    """
    mask = 0
    for c in channels:
        ch = Channel(c)
        if ch not in CHANNEL_CODES:
            raise ValueError(f"channel {ch.value!r} has no sensor frame")
        mask |= 1 << (CHANNEL_CODES[ch] - 1)
    return mask


def channels_from_mask(mask: int) -> frozenset[Channel]:
    """Inverse of :func:`channels_to_mask`; unknown bits raise :class:`GattDecodeError`.

    Example
    -------
    >>> sorted(c.value for c in channels_from_mask(0b0011))
    ['eda', 'ppg']
    """
    known = (1 << len(CHANNEL_CODES)) - 1
    if mask & ~known:
        raise GattDecodeError(f"wearemo control: unknown channel bits 0x{mask & ~known:02X}")
    return frozenset(ch for ch, code in CHANNEL_CODES.items() if mask & (1 << (code - 1)))


class Opcode(IntEnum):
    """First byte of a control-point value."""

    START = 0x01
    STOP = 0x02
    READ_CLOCK = 0x03
    RESUME_FROM = 0x04
    RESULT = 0x80
    CLOCK = 0x81


class ResultCode(IntEnum):
    """Outcome of a command, sent back in a RESULT notification."""

    SUCCESS = 0x00
    UNSUPPORTED_OPCODE = 0x01
    INVALID_PARAMETER = 0x02
    PARTIAL = 0x03  # RESUME_FROM: some requested frames were no longer buffered


@dataclass(frozen=True)
class StartCommand:
    """Start streaming the given channels (adds to those already running)."""

    channels: frozenset[Channel]


@dataclass(frozen=True)
class StopCommand:
    """Stop streaming the given channels."""

    channels: frozenset[Channel]


@dataclass(frozen=True)
class ReadClockCommand:
    """Ask for the device's current time (answered by a :class:`ClockReading`)."""


@dataclass(frozen=True)
class ResumeFromCommand:
    """Re-send buffered frames of ``channel`` from sequence number ``seq`` on."""

    channel: Channel
    seq: int


Command = StartCommand | StopCommand | ReadClockCommand | ResumeFromCommand


@dataclass(frozen=True)
class CommandResult:
    """Device's answer to a command: which opcode, and the outcome."""

    request_opcode: int
    result: ResultCode


@dataclass(frozen=True)
class ClockReading:
    """Device's current time in microseconds (unix if ``rtc`` else ticks since boot)."""

    device_time_us: int
    rtc: bool


Response = CommandResult | ClockReading


def encode_command(cmd: Command) -> bytes:
    """Encode a control-point write.

    Example
    -------
    >>> encode_command(StartCommand(frozenset({Channel.PPG, Channel.EDA}))).hex(" ")
    '01 03'
    >>> encode_command(ResumeFromCommand(Channel.PPG, 258)).hex(" ")
    '04 01 02 01 00 00'
    """
    if isinstance(cmd, StartCommand | StopCommand):
        if not cmd.channels:
            raise ValueError("START/STOP needs at least one channel")
        op = Opcode.START if isinstance(cmd, StartCommand) else Opcode.STOP
        return bytes([op, channels_to_mask(cmd.channels)])
    if isinstance(cmd, ReadClockCommand):
        return bytes([Opcode.READ_CLOCK])
    if isinstance(cmd, ResumeFromCommand):
        ch = Channel(cmd.channel)
        if ch not in CHANNEL_CODES:
            raise ValueError(f"channel {ch.value!r} has no sensor frame")
        if not 0 <= cmd.seq <= _U32_MAX:
            raise ValueError(f"seq must fit uint32, got {cmd.seq}")
        return struct.pack("<BBI", Opcode.RESUME_FROM, CHANNEL_CODES[ch], cmd.seq)
    raise TypeError(f"not a control command: {cmd!r}")


def _expect_len(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise GattDecodeError(f"wearemo control: {what} takes {n} bytes, got {len(data)}")


def decode_command(data: bytes) -> Command:
    """Decode a control-point write (device side).

    Example
    -------
    >>> decode_command(bytes.fromhex("02 08"))
    StopCommand(channels=frozenset({<Channel.ACC: 'acc'>}))
    """
    data = bytes(data)
    if not data:
        raise GattDecodeError("wearemo control: empty write")
    op = data[0]
    if op in (Opcode.START, Opcode.STOP):
        _expect_len(data, 2, Opcode(op).name)
        channels = channels_from_mask(data[1])
        if not channels:
            raise GattDecodeError(f"wearemo control: {Opcode(op).name} with an empty channel mask")
        return StartCommand(channels) if op == Opcode.START else StopCommand(channels)
    if op == Opcode.READ_CLOCK:
        _expect_len(data, 1, "READ_CLOCK")
        return ReadClockCommand()
    if op == Opcode.RESUME_FROM:
        _expect_len(data, 6, "RESUME_FROM")
        _, code, seq = struct.unpack("<BBI", data)
        if code not in _CODE_CHANNELS:
            raise GattDecodeError(f"wearemo control: unknown channel code {code}")
        return ResumeFromCommand(_CODE_CHANNELS[code], seq)
    raise GattDecodeError(f"wearemo control: unknown command opcode 0x{op:02X}")


def encode_response(resp: Response) -> bytes:
    """Encode a control-point notification (device side).

    Example
    -------
    >>> encode_response(ClockReading(1_000_000, rtc=False)).hex(" ")
    '81 40 42 0f 00 00 00 00 00 00'
    """
    if isinstance(resp, CommandResult):
        if not 0 <= resp.request_opcode <= 0xFF:
            raise ValueError(f"request_opcode must fit uint8, got {resp.request_opcode}")
        return bytes([Opcode.RESULT, resp.request_opcode, ResultCode(resp.result)])
    if isinstance(resp, ClockReading):
        if not 0 <= resp.device_time_us <= _U64_MAX:
            raise ValueError(f"device_time_us must fit uint64, got {resp.device_time_us}")
        return struct.pack("<BQB", Opcode.CLOCK, resp.device_time_us, _FLAG_RTC if resp.rtc else 0)
    raise TypeError(f"not a control response: {resp!r}")


def decode_response(data: bytes) -> Response:
    """Decode a control-point notification (central side).

    Example
    -------
    >>> decode_response(bytes.fromhex("80 01 00"))
    CommandResult(request_opcode=1, result=<ResultCode.SUCCESS: 0>)
    """
    data = bytes(data)
    if not data:
        raise GattDecodeError("wearemo control: empty notification")
    op = data[0]
    if op == Opcode.RESULT:
        _expect_len(data, 3, "RESULT")
        try:
            result = ResultCode(data[2])
        except ValueError:
            raise GattDecodeError(f"wearemo control: unknown result code 0x{data[2]:02X}") from None
        return CommandResult(data[1], result)
    if op == Opcode.CLOCK:
        _expect_len(data, 10, "CLOCK")
        _, t_us, flags = struct.unpack("<BQB", data)
        return ClockReading(t_us, bool(flags & _FLAG_RTC))
    raise GattDecodeError(f"wearemo control: unknown response opcode 0x{op:02X}")


# ------------------------------------------------------------------------------------- info


@dataclass(frozen=True)
class DeviceInfo:
    """Value of the info characteristic (read).

    Example
    -------
    >>> decode_info(encode_info(DeviceInfo(1, frozenset({Channel.PPG}), 80, "1.2.0")))
    DeviceInfo(protocol_version=1, channels=frozenset({<Channel.PPG: 'ppg'>}), \
battery_percent=80, firmware_version='1.2.0')
    """

    protocol_version: int
    channels: frozenset[Channel]
    battery_percent: int | None
    firmware_version: str


def encode_info(info: DeviceInfo) -> bytes:
    """Encode the info characteristic: version, channel mask, battery (0xFF unknown), firmware.

    Example
    -------
    >>> encode_info(DeviceInfo(1, frozenset(CHANNEL_CODES), None, "vw")).hex(" ")
    '01 0f ff 76 77'
    """
    fw = info.firmware_version.encode("utf-8")
    if len(fw) > 32:
        raise ValueError(f"firmware_version is at most 32 UTF-8 bytes, got {len(fw)}")
    battery = 0xFF if info.battery_percent is None else info.battery_percent
    if not 0 <= battery <= 100 and battery != 0xFF:
        raise ValueError(f"battery_percent must be 0..100 or None, got {info.battery_percent}")
    if not 0 <= info.protocol_version <= 0xFF:
        raise ValueError(f"protocol_version must fit uint8, got {info.protocol_version}")
    return bytes([info.protocol_version, channels_to_mask(info.channels), battery]) + fw


def decode_info(data: bytes) -> DeviceInfo:
    """Decode the info characteristic.

    Example
    -------
    >>> decode_info(bytes.fromhex("01 0f 64")).battery_percent
    100
    """
    data = bytes(data)
    if len(data) < 3:
        raise GattDecodeError(f"wearemo info: need at least 3 bytes, got {len(data)}")
    if len(data) > 35:
        raise GattDecodeError(f"wearemo info: at most 35 bytes, got {len(data)}")
    battery = data[2]
    if battery > 100 and battery != 0xFF:
        raise GattDecodeError(f"wearemo info: battery {battery}% out of range")
    try:
        fw = data[3:].decode("utf-8")
    except UnicodeDecodeError:
        raise GattDecodeError("wearemo info: firmware version is not UTF-8") from None
    return DeviceInfo(data[0], channels_from_mask(data[1]),
                      None if battery == 0xFF else battery, fw)
