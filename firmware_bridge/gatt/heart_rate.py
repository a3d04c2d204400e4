"""Bluetooth SIG Heart Rate Service (0x180D): byte-exact codecs.

Characteristics (Heart Rate Service 1.0 and the GATT Specification Supplement):

* Heart Rate Measurement 0x2A37 (notify). Little-endian. ``flags`` (uint8) then:

  ====  =====================================================================================
  bit   meaning
  ====  =====================================================================================
  0     0: heart rate is uint8; 1: uint16
  1-2   sensor contact, read as ``(flags >> 1) & 3``: 0b00/0b01 unsupported,
        0b10 supported but not detected, 0b11 detected
  3     Energy Expended present (uint16, kJ, saturates at 0xFFFF)
  4     RR intervals present: uint16 each, in 1/1024 s, oldest first; their count is the
        remaining length / 2
  5-7   reserved (ignored on decode, written as 0)
  ====  =====================================================================================

* Body Sensor Location 0x2A38 (read): uint8 enum.
* Heart Rate Control Point 0x2A39 (write): uint8 opcode; 0x01 resets Energy Expended.

Example
-------
>>> m = decode_heart_rate_measurement(bytes.fromhex("16 48 00 04 e8 03"))
>>> m.hr_bpm, m.sensor_contact, m.rr_1024, m.rr_ms
(72, 'detected', (1024, 1000), (1000.0, 976.5625))
>>> encode_heart_rate_measurement(m).hex(" ")
'16 48 00 04 e8 03'
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from firmware_bridge.gatt.errors import GattDecodeError

__all__ = [
    "BODY_SENSOR_LOCATION_UUID",
    "HRS_SERVICE_UUID",
    "HR_CONTROL_POINT_UUID",
    "HR_MEASUREMENT_UUID",
    "BodySensorLocation",
    "HeartRateControlOpcode",
    "HeartRateMeasurement",
    "SensorContact",
    "decode_body_sensor_location",
    "decode_heart_rate_measurement",
    "decode_hr_control_point",
    "encode_body_sensor_location",
    "encode_heart_rate_measurement",
    "encode_hr_control_point",
    "max_rr_per_measurement",
]


def _sig_uuid(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


HRS_SERVICE_UUID = _sig_uuid(0x180D)
HR_MEASUREMENT_UUID = _sig_uuid(0x2A37)
BODY_SENSOR_LOCATION_UUID = _sig_uuid(0x2A38)
HR_CONTROL_POINT_UUID = _sig_uuid(0x2A39)

SensorContact = Literal["unsupported", "not_detected", "detected"]

_FLAG_HR_UINT16 = 0x01
_FLAG_ENERGY = 0x08
_FLAG_RR = 0x10
_CONTACT_BITS: dict[SensorContact, int] = {
    "unsupported": 0b00, "not_detected": 0b10, "detected": 0b11
}
_U16_MAX = 0xFFFF


@dataclass(frozen=True)
class HeartRateMeasurement:
    """One 0x2A37 value.

    Parameters
    ----------
    hr_bpm
        Heart rate, beats per minute (0..65535; above 255 needs the uint16 form).
    sensor_contact
        ``"unsupported"``, ``"not_detected"`` or ``"detected"``.
    energy_expended_kj
        Cumulative energy expended in kJ, or None when not sent.
    rr_1024
        RR intervals in 1/1024 s, oldest first (may be empty).

    Example
    -------
    >>> HeartRateMeasurement(60, "detected", None, (1024,)).rr_ms
    (1000.0,)
    """

    hr_bpm: int
    sensor_contact: SensorContact
    energy_expended_kj: int | None
    rr_1024: tuple[int, ...]

    @property
    def rr_ms(self) -> tuple[float, ...]:
        """RR intervals in milliseconds (``rr_1024 / 1024 * 1000``)."""
        return tuple(r * 1000.0 / 1024.0 for r in self.rr_1024)


def decode_heart_rate_measurement(data: bytes) -> HeartRateMeasurement:
    """Decode a Heart Rate Measurement (0x2A37) value.

    Parameters
    ----------
    data
        The notified bytes.

    Returns
    -------
    HeartRateMeasurement

    Raises
    ------
    GattDecodeError
        Truncated value, odd-length RR field, or trailing bytes without the RR flag.

    Example
    -------
    >>> decode_heart_rate_measurement(bytes([0x00, 75])).hr_bpm
    75
    """
    data = bytes(data)
    if not data:
        raise GattDecodeError("0x2A37: empty value (need at least flags and heart rate)")
    flags = data[0]
    pos = 1
    if flags & _FLAG_HR_UINT16:
        if len(data) < 3:
            raise GattDecodeError(f"0x2A37: uint16 heart rate needs 3 bytes, got {len(data)}")
        hr = struct.unpack_from("<H", data, 1)[0]
        pos = 3
    else:
        if len(data) < 2:
            raise GattDecodeError(f"0x2A37: uint8 heart rate needs 2 bytes, got {len(data)}")
        hr = data[1]
        pos = 2
    contact_bits = (flags >> 1) & 0b11
    contact: SensorContact = (
        "detected" if contact_bits == 0b11 else "not_detected" if contact_bits == 0b10
        else "unsupported"
    )
    energy: int | None = None
    if flags & _FLAG_ENERGY:
        if len(data) < pos + 2:
            raise GattDecodeError(
                f"0x2A37: energy expended flag set but only {len(data) - pos} byte(s) remain"
            )
        energy = struct.unpack_from("<H", data, pos)[0]
        pos += 2
    rest = len(data) - pos
    rr: tuple[int, ...] = ()
    if flags & _FLAG_RR:
        if rest % 2:
            raise GattDecodeError(f"0x2A37: RR field has odd length {rest}")
        rr = struct.unpack_from(f"<{rest // 2}H", data, pos)
    elif rest:
        raise GattDecodeError(f"0x2A37: {rest} trailing byte(s) but the RR flag is not set")
    return HeartRateMeasurement(hr, contact, energy, tuple(rr))


def encode_heart_rate_measurement(m: HeartRateMeasurement, *, hr_uint16: bool = False) -> bytes:
    """Encode a Heart Rate Measurement (0x2A37) value.

    Parameters
    ----------
    m
        The measurement.
    hr_uint16
        Force the uint16 heart-rate form; a rate above 255 always uses it.

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        A field outside its unsigned range or an unknown sensor-contact value.

    Example
    -------
    >>> m = HeartRateMeasurement(72, "detected", None, (1024, 1000))
    >>> encode_heart_rate_measurement(m).hex()
    '16480004e803'
    """
    if not 0 <= m.hr_bpm <= _U16_MAX:
        raise ValueError(f"hr_bpm must be in 0..65535, got {m.hr_bpm}")
    if m.sensor_contact not in _CONTACT_BITS:
        raise ValueError(
            f"sensor_contact must be one of {sorted(_CONTACT_BITS)}, got {m.sensor_contact!r}"
        )
    wide = hr_uint16 or m.hr_bpm > 0xFF
    flags = (_FLAG_HR_UINT16 if wide else 0) | (_CONTACT_BITS[m.sensor_contact] << 1)
    out = bytearray()
    out += struct.pack("<H", m.hr_bpm) if wide else bytes([m.hr_bpm])
    if m.energy_expended_kj is not None:
        if not 0 <= m.energy_expended_kj <= _U16_MAX:
            raise ValueError(f"energy_expended_kj must be in 0..65535, got {m.energy_expended_kj}")
        flags |= _FLAG_ENERGY
        out += struct.pack("<H", m.energy_expended_kj)
    if m.rr_1024:
        bad = [r for r in m.rr_1024 if not 0 <= r <= _U16_MAX]
        if bad:
            raise ValueError(f"rr_1024 values must be in 0..65535, got {bad[0]}")
        flags |= _FLAG_RR
        out += struct.pack(f"<{len(m.rr_1024)}H", *m.rr_1024)
    return bytes([flags]) + bytes(out)


def max_rr_per_measurement(mtu: int, *, hr_uint16: bool = False, energy: bool = False) -> int:
    """How many RR intervals fit one 0x2A37 notification at a given ATT MTU.

    Example
    -------
    >>> max_rr_per_measurement(23), max_rr_per_measurement(247)
    (9, 121)
    """
    header = 1 + (2 if hr_uint16 else 1) + (2 if energy else 0)
    return max(0, (mtu - 3 - header) // 2)


class BodySensorLocation(IntEnum):
    """Body Sensor Location 0x2A38 values (7..255 are reserved)."""

    OTHER = 0
    CHEST = 1
    WRIST = 2
    FINGER = 3
    HAND = 4
    EAR_LOBE = 5
    FOOT = 6


def decode_body_sensor_location(data: bytes) -> BodySensorLocation:
    """Decode a Body Sensor Location (0x2A38) value.

    Example
    -------
    >>> decode_body_sensor_location(b"\\x02").name
    'WRIST'
    """
    data = bytes(data)
    if len(data) != 1:
        raise GattDecodeError(f"0x2A38: expected 1 byte, got {len(data)}")
    try:
        return BodySensorLocation(data[0])
    except ValueError:
        raise GattDecodeError(f"0x2A38: reserved location value {data[0]}") from None


def encode_body_sensor_location(location: BodySensorLocation) -> bytes:
    """Encode a Body Sensor Location (0x2A38) value.

    Example
    -------
    >>> encode_body_sensor_location(BodySensorLocation.CHEST)
    b'\\x01'
    """
    return bytes([BodySensorLocation(location).value])


class HeartRateControlOpcode(IntEnum):
    """Heart Rate Control Point 0x2A39 opcodes (others are reserved)."""

    RESET_ENERGY_EXPENDED = 0x01


def decode_hr_control_point(data: bytes) -> HeartRateControlOpcode:
    """Decode a Heart Rate Control Point (0x2A39) write.

    A server answers a reserved value with ATT error 0x80 (Control Point Not Supported).

    Example
    -------
    >>> decode_hr_control_point(b"\\x01").name
    'RESET_ENERGY_EXPENDED'
    """
    data = bytes(data)
    if len(data) != 1:
        raise GattDecodeError(f"0x2A39: expected 1 byte, got {len(data)}")
    try:
        return HeartRateControlOpcode(data[0])
    except ValueError:
        raise GattDecodeError(
            f"0x2A39: control point value 0x{data[0]:02X} not supported"
        ) from None


def encode_hr_control_point(opcode: HeartRateControlOpcode) -> bytes:
    """Encode a Heart Rate Control Point (0x2A39) write.

    Example
    -------
    >>> encode_hr_control_point(HeartRateControlOpcode.RESET_ENERGY_EXPENDED)
    b'\\x01'
    """
    return bytes([HeartRateControlOpcode(opcode).value])
