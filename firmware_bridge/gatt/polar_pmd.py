"""Polar Measurement Data (PMD) service: data frames, delta compression, settings, control point.

Polar's H10 / Verity Sense / OH1 stream raw measurements over a proprietary GATT service,
``FB005C80-02E7-F387-1CAD-8ACD2D8DF0C8`` (control point ``…C81``: write + indicate; data
``…C82``: notify). This module decodes what those sensors send, derived from Polar's published
SDK documentation (Polar Measurement Data Specification; ``TimeSystemExplained.md``) and the
byte examples in its test documentation; no SDK code is used.

**Data frame** (one notification)::

    0      uint8   measurement type   ECG 0, PPG 1, ACC 2, PPI 3, GYRO 5, MAG 6
    1..8   uint64  timestamp          ns since 2000-01-01T00:00:00Z of the LAST sample
    9      uint8   frame type         bit 7: delta-compressed; bits 0..6: the frame type
    10..   payload

Uncompressed payloads are packed little-endian signed samples, channel-interleaved: ECG type 0
one int24 (µV); PPG type 0 four int24 (three PPG channels + ambient); ACC type 0/1/2 three
int8/int16/int24 (mG); PPI type 0 six-byte records (HR uint8 bpm, PP interval uint16 ms, error
estimate uint16 ms, flags uint8: bit 0 blocker, bit 1 skin contact, bit 2 skin contact
supported).

**Delta-compressed payloads** start with one reference sample (every channel, signed, at the
frame type's reference size), then blocks until the payload ends: ``uint8`` delta bit width,
``uint8`` sample count, then ``count × channels`` signed two's-complement deltas of that width,
packed **least-significant bit first** (bit *k* of the block is bit *k mod 8* of byte *k div 8*;
each delta's bits run from its least significant). Each sample is the previous one plus its
delta. (A public Python decoder unpacks them most-significant bit first, which is wrong for
every width except 8; the golden frame in the tests uses 10-bit deltas.)

**Settings** (control-point parameters) are TLVs: setting type, count, then ``count`` values:
sample rate (0, uint16 Hz), resolution (1, uint16 bits), range (2, uint16), range in milli-units
(3, int32), channels (4, uint8), conversion factor (5, float32).

Example
-------
>>> frame = decode_pmd_frame(bytes.fromhex("0300000000000000000080808080ff000100010000"))
>>> [(p.hr_bpm, p.ppi_ms, p.blocker) for p in frame.ppi]
[(128, 32896, True), (0, 1, False)]
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from firmware_bridge.gatt.errors import GattDecodeError

__all__ = [
    "PMD_CONTROL_POINT_UUID",
    "PMD_DATA_UUID",
    "PMD_SERVICE_UUID",
    "POLAR_EPOCH_UNIX_NS",
    "MeasurementType",
    "PmdControlResponse",
    "PmdFrame",
    "PmdOpcode",
    "PmdSetting",
    "PpiSample",
    "decode_pmd_control_response",
    "decode_pmd_frame",
    "decode_pmd_settings",
    "encode_pmd_frame",
    "encode_pmd_settings",
    "encode_pmd_start",
    "encode_pmd_stop",
    "sample_times_ns",
]

PMD_SERVICE_UUID = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL_POINT_UUID = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA_UUID = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

#: Polar sensor time counts nanoseconds from 2000-01-01T00:00:00Z.
POLAR_EPOCH_UNIX_NS = 946_684_800 * 1_000_000_000

_HEADER = 10
_PREFIX = "PMD data"


class MeasurementType(enum.IntEnum):
    """PMD measurement types."""

    ECG = 0
    PPG = 1
    ACC = 2
    PPI = 3
    GYRO = 5
    MAG = 6


class PmdOpcode(enum.IntEnum):
    """Control-point operations."""

    GET_MEASUREMENT_SETTINGS = 0x01
    REQUEST_MEASUREMENT_START = 0x02
    STOP_MEASUREMENT = 0x03


class PmdSetting(enum.IntEnum):
    """Setting types of the settings TLVs."""

    SAMPLE_RATE = 0
    RESOLUTION = 1
    RANGE = 2
    RANGE_MILLIUNIT = 3
    CHANNELS = 4
    FACTOR = 5


# setting -> struct format of one value
_SETTING_FORMATS: dict[PmdSetting, str] = {
    PmdSetting.SAMPLE_RATE: "<H", PmdSetting.RESOLUTION: "<H", PmdSetting.RANGE: "<H",
    PmdSetting.RANGE_MILLIUNIT: "<i", PmdSetting.CHANNELS: "<B", PmdSetting.FACTOR: "<f",
}

# (measurement, frame type) -> (channels, bytes per uncompressed sample and per reference sample)
_RAW_LAYOUT: dict[tuple[MeasurementType, int], tuple[int, int]] = {
    (MeasurementType.ECG, 0): (1, 3),
    (MeasurementType.PPG, 0): (4, 3),
    (MeasurementType.ACC, 0): (3, 1),
    (MeasurementType.ACC, 1): (3, 2),
    (MeasurementType.ACC, 2): (3, 3),
    (MeasurementType.GYRO, 0): (3, 2),
    (MeasurementType.MAG, 0): (3, 2),
}
_DELTA_LAYOUT: dict[tuple[MeasurementType, int], tuple[int, int]] = {
    (MeasurementType.ECG, 0): (1, 3),
    (MeasurementType.PPG, 0): (4, 3),
    (MeasurementType.ACC, 0): (3, 2),
    (MeasurementType.ACC, 1): (3, 2),
    (MeasurementType.GYRO, 0): (3, 2),
    (MeasurementType.MAG, 0): (3, 2),
}
_PPI_RECORD = 6


@dataclass(frozen=True, slots=True)
class PpiSample:
    """One pulse-to-pulse interval from the optical sensor."""

    hr_bpm: int
    ppi_ms: int
    error_ms: int
    blocker: bool
    skin_contact: bool
    skin_contact_supported: bool


@dataclass(frozen=True, eq=False)
class PmdFrame:
    """A decoded PMD data frame.

    Attributes
    ----------
    measurement
        What it carries.
    timestamp_ns
        Sensor time of the last sample, ns since 2000-01-01 (``POLAR_EPOCH_UNIX_NS`` + this is
        unix ns when the sensor clock was set to UTC; PPI frames may carry 0).
    frame_type
        Bits 0..6 of the frame-type byte.
    compressed
        Whether the payload was delta-compressed.
    samples
        ``(n, channels)`` int64 raw values (empty for PPI).
    ppi
        PPI records (PPI frames only).
    """

    measurement: MeasurementType
    timestamp_ns: int
    frame_type: int
    compressed: bool
    samples: np.ndarray = field(repr=False)
    ppi: tuple[PpiSample, ...] = ()

    @property
    def n_samples(self) -> int:
        """Samples (or PPI records) in the frame."""
        return len(self.ppi) if self.measurement is MeasurementType.PPI else int(
            self.samples.shape[0])


def _signed(raw: np.ndarray, nbytes: int) -> np.ndarray:
    """Little-endian signed integers of ``nbytes`` from a ``(..., nbytes)`` uint8 array."""
    weights = (1 << (8 * np.arange(nbytes))).astype(np.int64)
    value = (raw.astype(np.int64) * weights).sum(axis=-1)
    top = 1 << (8 * nbytes)
    return np.where(value >= top >> 1, value - top, value)


def _unpack_deltas(block: bytes, width: int, count: int) -> np.ndarray:
    """``count`` signed ``width``-bit values packed LSB-first."""
    if width == 0:
        return np.zeros(count, dtype=np.int64)
    stream = np.unpackbits(np.frombuffer(block, dtype=np.uint8), bitorder="little")
    bits = stream[: width * count].reshape(count, width).astype(np.int64)
    value = bits @ (1 << np.arange(width, dtype=np.int64))
    return np.where(bits[:, -1] == 1, value - (1 << width), value)


def _decode_delta(payload: bytes, channels: int, ref_bytes: int, where: str) -> np.ndarray:
    ref_len = channels * ref_bytes
    if len(payload) < ref_len:
        raise GattDecodeError(f"{where}: {len(payload)} bytes, shorter than the "
                              f"{ref_len}-byte reference sample")
    ref = _signed(np.frombuffer(payload[:ref_len], dtype=np.uint8).reshape(channels, ref_bytes),
                  ref_bytes)
    rows = [ref[None, :]]
    o = ref_len
    while o < len(payload):
        if o + 2 > len(payload):
            raise GattDecodeError(f"{where}: delta block header cut at byte {o}")
        width, count = payload[o], payload[o + 1]
        o += 2
        if width > 32:
            raise GattDecodeError(f"{where}: delta width {width} bits (at most 32)")
        if count == 0:
            raise GattDecodeError(f"{where}: delta block with 0 samples at byte {o - 2}")
        nbytes = (width * count * channels + 7) // 8
        if o + nbytes > len(payload):
            raise GattDecodeError(f"{where}: delta block needs {nbytes} bytes, "
                                  f"{len(payload) - o} left")
        deltas = _unpack_deltas(payload[o:o + nbytes], width, count * channels)
        rows.append(deltas.reshape(count, channels))
        o += nbytes
    steps = np.concatenate(rows, axis=0)
    return np.cumsum(steps, axis=0)


def decode_pmd_frame(data: bytes) -> PmdFrame:
    """Decode one PMD data notification.

    Raises :class:`GattDecodeError` for a short header, an unknown measurement or frame type,
    a payload that is not a whole number of samples, or a malformed delta block.

    Example
    -------
    >>> f = decode_pmd_frame(bytes.fromhex("0200943577000000000" "1f7ffffffe703"))
    >>> f.measurement.name, f.timestamp_ns, f.samples.tolist()
    ('ACC', 2000000000, [[-9, -1, 999]])
    """
    data = bytes(data)
    if len(data) < _HEADER:
        raise GattDecodeError(f"{_PREFIX}: {len(data)} bytes, shorter than the 10-byte header")
    try:
        measurement = MeasurementType(data[0])
    except ValueError:
        raise GattDecodeError(f"{_PREFIX}: unknown measurement type {data[0]} (known: "
                              f"{[m.name for m in MeasurementType]})") from None
    (timestamp,) = struct.unpack_from("<Q", data, 1)
    compressed = bool(data[9] & 0x80)
    frame_type = data[9] & 0x7F
    payload = data[_HEADER:]
    where = f"{_PREFIX} {measurement.name} frame type {frame_type}"
    if measurement is MeasurementType.PPI:
        if compressed or frame_type != 0:
            raise GattDecodeError(f"{where}: only uncompressed PPI frame type 0 is defined")
        if len(payload) % _PPI_RECORD:
            raise GattDecodeError(f"{where}: {len(payload)} bytes is not a whole number of "
                                  "6-byte PPI records")
        ppi = tuple(
            PpiSample(hr, pp, err, bool(fl & 1), bool(fl & 2), bool(fl & 4))
            for hr, pp, err, fl in struct.iter_unpack("<BHHB", payload)
        )
        return PmdFrame(measurement, timestamp, frame_type, False,
                        np.zeros((0, 0), dtype=np.int64), ppi)
    layouts = _DELTA_LAYOUT if compressed else _RAW_LAYOUT
    layout = layouts.get((measurement, frame_type))
    if layout is None:
        known = sorted(t for m, t in layouts if m is measurement)
        raise GattDecodeError(f"{where}: unsupported {'compressed ' if compressed else ''}"
                              f"frame type (supported: {known})")
    channels, size = layout
    if compressed:
        samples = _decode_delta(payload, channels, size, where)
    else:
        if not payload or len(payload) % (channels * size):
            raise GattDecodeError(f"{where}: {len(payload)} bytes is not a whole, non-zero "
                                  f"number of {channels * size}-byte samples")
        raw = np.frombuffer(payload, dtype=np.uint8).reshape(-1, channels, size)
        samples = _signed(raw, size)
    return PmdFrame(measurement, timestamp, frame_type, compressed, samples)


def _pack_deltas(deltas: np.ndarray, width: int) -> bytes:
    if width == 0:
        return b""
    values = deltas.astype(np.int64) & ((1 << width) - 1)
    bits = ((values[:, None] >> np.arange(width)) & 1).astype(np.uint8).ravel()
    return np.packbits(bits, bitorder="little").tobytes()


def encode_pmd_frame(
    measurement: MeasurementType,
    timestamp_ns: int,
    samples: np.ndarray,
    *,
    frame_type: int = 0,
    compressed: bool = False,
    block: int = 0,
) -> bytes:
    """Encode samples as a PMD data frame (the inverse of :func:`decode_pmd_frame`).

    Compressed frames use one delta block per ``block`` samples (0: a single block), each
    with the narrowest width that holds its deltas.

    Example
    -------
    >>> s = np.array([[1905, 27376, -29282], [2095, 27271, -29367]])
    >>> raw = encode_pmd_frame(MeasurementType.ACC, 5, s, compressed=True)
    >>> decode_pmd_frame(raw).samples.tolist() == s.tolist(), raw[10 + 6]  # 10-bit deltas
    (True, 10)
    """
    if measurement is MeasurementType.PPI:
        raise ValueError("encode PPI records with struct '<BHHB' each; no samples to pack")
    layouts = _DELTA_LAYOUT if compressed else _RAW_LAYOUT
    layout = layouts.get((measurement, frame_type))
    if layout is None:
        raise ValueError(f"no {'compressed ' if compressed else ''}layout for "
                         f"{measurement.name} frame type {frame_type}")
    channels, size = layout
    s = np.asarray(samples, dtype=np.int64).reshape(-1, channels)
    if s.shape[0] == 0:
        raise ValueError("need at least one sample")
    lo, hi = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
    head = bytes([int(measurement)]) + struct.pack("<Q", timestamp_ns) + bytes(
        [frame_type | (0x80 if compressed else 0)])
    if not compressed:
        if s.min() < lo or s.max() > hi:
            raise ValueError(f"samples outside the {size}-byte range [{lo}, {hi}]")
        body = (s[:, :, None] >> (8 * np.arange(size))) & 0xFF
        return head + body.astype(np.uint8).tobytes()
    if s[0].min() < lo or s[0].max() > hi:
        raise ValueError(f"reference sample outside the {size}-byte range")
    out = bytearray(head)
    out += ((s[0][:, None] >> (8 * np.arange(size))) & 0xFF).astype(np.uint8).tobytes()
    deltas = np.diff(s, axis=0)
    step = block or max(1, len(deltas))
    for i in range(0, len(deltas), step):
        d = deltas[i:i + step]
        need = int(max(np.max(d), -np.min(d) - 1, 0)).bit_length() + 1 if d.size else 1
        if need > 32:
            raise ValueError("deltas wider than 32 bits")
        if len(d) > 255:
            raise ValueError("a delta block holds at most 255 samples (set block=)")
        out += bytes([need, len(d)]) + _pack_deltas(d.ravel(), need)
    return bytes(out)


def sample_times_ns(
    frame: PmdFrame, *, previous_ns: int | None = None, rate_hz: float | None = None
) -> np.ndarray:
    """Sensor times (ns since 2000) of a frame's samples.

    The frame's timestamp is its last sample's. With the previous frame's timestamp the
    samples are spread evenly after it (Polar's own rule, robust to rate drift); otherwise they
    step back from the last one at ``rate_hz``.

    Example
    -------
    >>> f = decode_pmd_frame(bytes.fromhex("02" "0094357700000000" "01" + "0100" * 6))
    >>> sample_times_ns(f, rate_hz=52).tolist()[-1], sample_times_ns(f, previous_ns=0)[0]
    (2000000000, 1000000000)
    """
    n = frame.n_samples
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if previous_ns is not None and previous_ns < frame.timestamp_ns:
        step = (frame.timestamp_ns - previous_ns) / n
        return np.round(previous_ns + step * np.arange(1, n + 1)).astype(np.int64)
    if rate_hz is None or not rate_hz > 0:
        raise ValueError("need previous_ns (earlier than the frame) or a positive rate_hz")
    back = np.arange(n - 1, -1, -1) * (1e9 / rate_hz)
    return np.round(frame.timestamp_ns - back).astype(np.int64)


def decode_pmd_settings(data: bytes) -> dict[PmdSetting, tuple[float, ...]]:
    """Parse settings TLVs (the parameters of a GET_MEASUREMENT_SETTINGS answer).

    Example
    -------
    >>> s = decode_pmd_settings(bytes.fromhex("000134000101100002" "04f500f401e803d007" "040103"))
    >>> s[PmdSetting.SAMPLE_RATE], s[PmdSetting.RANGE], s[PmdSetting.CHANNELS]
    ((52,), (245, 500, 1000, 2000), (3,))
    """
    out: dict[PmdSetting, tuple[float, ...]] = {}
    o = 0
    data = bytes(data)
    while o < len(data):
        if o + 2 > len(data):
            raise GattDecodeError(f"PMD settings: TLV header cut at byte {o}")
        try:
            kind = PmdSetting(data[o])
        except ValueError:
            raise GattDecodeError(f"PMD settings: unknown setting type {data[o]} at byte {o}"
                                  ) from None
        count = data[o + 1]
        fmt = _SETTING_FORMATS[kind]
        size = struct.calcsize(fmt)
        o += 2
        if o + count * size > len(data):
            raise GattDecodeError(f"PMD settings: {kind.name} needs {count * size} bytes, "
                                  f"{len(data) - o} left")
        out[kind] = tuple(struct.unpack_from(fmt, data, o + i * size)[0] for i in range(count))
        o += count * size
    return out


def encode_pmd_settings(settings: Mapping[PmdSetting, Sequence[float]]) -> bytes:
    """Serialise settings TLVs (:func:`decode_pmd_settings` inverts it).

    >>> encode_pmd_settings({PmdSetting.SAMPLE_RATE: [52]}).hex()
    '00013400'
    """
    out = bytearray()
    for kind, values in settings.items():
        kind = PmdSetting(kind)
        fmt = _SETTING_FORMATS[kind]
        out += bytes([int(kind), len(values)])
        for v in values:
            out += struct.pack(fmt, v)
    return bytes(out)


def encode_pmd_start(
    measurement: MeasurementType, settings: Mapping[PmdSetting, float] | None = None
) -> bytes:
    """REQUEST_MEASUREMENT_START with one chosen value per setting.

    >>> encode_pmd_start(MeasurementType.ACC, {PmdSetting.SAMPLE_RATE: 52}).hex()
    '020200013400'
    """
    chosen = {k: [v] for k, v in (settings or {}).items()}
    return bytes([PmdOpcode.REQUEST_MEASUREMENT_START, int(measurement)]) + encode_pmd_settings(
        chosen)


def encode_pmd_stop(measurement: MeasurementType) -> bytes:
    """STOP_MEASUREMENT.

    >>> encode_pmd_stop(MeasurementType.PPG).hex()
    '0301'
    """
    return bytes([PmdOpcode.STOP_MEASUREMENT, int(measurement)])


@dataclass(frozen=True, slots=True)
class PmdControlResponse:
    """A control-point answer: ``status`` 0 is success; ``parameters`` as sent."""

    opcode: int
    measurement: int
    status: int
    more: bool
    parameters: bytes

    @property
    def ok(self) -> bool:
        """Whether the sensor accepted the command."""
        return self.status == 0


def decode_pmd_control_response(data: bytes) -> PmdControlResponse:
    """Decode a control-point indication (``0xF0``, opcode, type, status, more, params).

    >>> r = decode_pmd_control_response(bytes.fromhex("f0010200 00ffffff".replace(" ", "")))
    >>> r.ok, r.opcode, r.measurement, r.parameters.hex()
    (True, 1, 2, 'ffffff')
    """
    data = bytes(data)
    if len(data) < 4:
        raise GattDecodeError(f"PMD control point: {len(data)} bytes, need at least 4")
    if data[0] != 0xF0:
        raise GattDecodeError(f"PMD control point: response code 0x{data[0]:02X}, expected 0xF0")
    more = len(data) > 4 and bool(data[4])
    return PmdControlResponse(data[1], data[2], data[3], more, data[5:])
