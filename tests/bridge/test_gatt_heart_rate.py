"""Heart Rate Service 0x180D codecs: golden bytes from the spec, round trips, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.gatt import (
    HR_MEASUREMENT_UUID,
    HRS_SERVICE_UUID,
    BodySensorLocation,
    GattDecodeError,
    HeartRateControlOpcode,
    HeartRateMeasurement,
    decode_body_sensor_location,
    decode_heart_rate_measurement,
    decode_hr_control_point,
    encode_body_sensor_location,
    encode_heart_rate_measurement,
    encode_hr_control_point,
    max_rr_per_measurement,
)


def test_uuids_are_full_lowercase_sig_uuids() -> None:
    assert HRS_SERVICE_UUID == "0000180d-0000-1000-8000-00805f9b34fb"
    assert HR_MEASUREMENT_UUID == "00002a37-0000-1000-8000-00805f9b34fb"


# (bytes, hr, contact, energy, rr_1024) hand-derived from the 0x2A37 field table.
GOLDEN = [
    # flags 0x16: uint8 HR, contact detected (bits1-2 = 0b11), RR present; HR 72; RR 1024, 1000
    ("16 48 00 04 e8 03", 72, "detected", None, (1024, 1000)),
    # flags 0x00: uint8 HR only, contact unsupported
    ("00 3c", 60, "unsupported", None, ()),
    # flags 0x02: bit1 alone (bit2 clear) still means "unsupported"
    ("02 3c", 60, "unsupported", None, ()),
    # flags 0x04: supported, not detected
    ("04 3c", 60, "not_detected", None, ()),
    # flags 0x01: uint16 HR = 0x0110 = 272
    ("01 10 01", 272, "unsupported", None, ()),
    # flags 0x1E: uint8 HR 80, detected, energy 0x0102 = 258 kJ, one RR 0x0333 = 819
    ("1e 50 02 01 33 03", 80, "detected", 258, (819,)),
    # flags 0x19: uint16 HR 0x0048, energy 0, RR 0x0300
    ("19 48 00 00 00 00 03", 72, "unsupported", 0, (768,)),
]


@pytest.mark.parametrize(("hexstr", "hr", "contact", "energy", "rr"), GOLDEN)
def test_decode_golden(hexstr: str, hr: int, contact: str, energy: int | None,
                       rr: tuple[int, ...]) -> None:
    m = decode_heart_rate_measurement(bytes.fromhex(hexstr))
    got = (m.hr_bpm, m.sensor_contact, m.energy_expended_kj, m.rr_1024)
    assert got == (hr, contact, energy, rr)


def test_encode_golden_and_rr_ms() -> None:
    m = HeartRateMeasurement(72, "detected", None, (1024, 1000))
    assert encode_heart_rate_measurement(m) == bytes.fromhex("16 48 00 04 e8 03")
    assert m.rr_ms == (1000.0, 976.5625)
    wide = encode_heart_rate_measurement(HeartRateMeasurement(72, "unsupported", 0, (768,)),
                                         hr_uint16=True)
    assert wide == bytes.fromhex("19 48 00 00 00 00 03")
    # above 255 the uint16 form is used even when not asked for
    assert encode_heart_rate_measurement(HeartRateMeasurement(272, "unsupported", None, ())) == \
        bytes.fromhex("01 10 01")


def test_reserved_flag_bits_are_ignored() -> None:
    assert decode_heart_rate_measurement(bytes.fromhex("e0 3c")).hr_bpm == 60


@pytest.mark.parametrize(("hexstr", "message"), [
    ("", "empty"),
    ("00", "uint8 heart rate needs 2 bytes"),
    ("01 48", "uint16 heart rate needs 3 bytes"),
    ("08 48 01", "energy expended flag set but only 1 byte"),
    ("10 48 00 04 e8", "RR field has odd length 3"),
    ("00 48 00", r"1 trailing byte\(s\) but the RR flag is not set"),
])
def test_decode_malformed(hexstr: str, message: str) -> None:
    with pytest.raises(GattDecodeError, match=message):
        decode_heart_rate_measurement(bytes.fromhex(hexstr))


def test_encode_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="hr_bpm"):
        encode_heart_rate_measurement(HeartRateMeasurement(70000, "detected", None, ()))
    with pytest.raises(ValueError, match="rr_1024"):
        encode_heart_rate_measurement(HeartRateMeasurement(70, "detected", None, (1, -1)))
    with pytest.raises(ValueError, match="energy"):
        encode_heart_rate_measurement(HeartRateMeasurement(70, "detected", 1 << 16, ()))
    with pytest.raises(ValueError, match="sensor_contact"):
        encode_heart_rate_measurement(HeartRateMeasurement(70, "maybe", None, ()))  # type: ignore[arg-type]


measurements = st.builds(
    HeartRateMeasurement,
    hr_bpm=st.integers(0, 0xFFFF),
    sensor_contact=st.sampled_from(["unsupported", "not_detected", "detected"]),
    energy_expended_kj=st.none() | st.integers(0, 0xFFFF),
    rr_1024=st.lists(st.integers(0, 0xFFFF), max_size=20).map(tuple),
)


@given(measurements, st.booleans())
def test_round_trip(m: HeartRateMeasurement, hr_uint16: bool) -> None:
    data = encode_heart_rate_measurement(m, hr_uint16=hr_uint16)
    assert decode_heart_rate_measurement(data) == m


@pytest.mark.parametrize("mtu", [23, 64, 185, 247, 517])
@pytest.mark.parametrize(("hr_uint16", "energy"), [(False, False), (True, True)])
def test_max_rr_fills_but_never_exceeds_mtu(mtu: int, hr_uint16: bool, energy: bool) -> None:
    n = max_rr_per_measurement(mtu, hr_uint16=hr_uint16, energy=energy)
    m = HeartRateMeasurement(70, "detected", 5 if energy else None, (800,) * n)
    assert len(encode_heart_rate_measurement(m, hr_uint16=hr_uint16)) <= mtu - 3
    m2 = HeartRateMeasurement(70, "detected", 5 if energy else None, (800,) * (n + 1))
    assert len(encode_heart_rate_measurement(m2, hr_uint16=hr_uint16)) > mtu - 3


def test_body_sensor_location_and_control_point() -> None:
    assert decode_body_sensor_location(b"\x02") is BodySensorLocation.WRIST
    assert encode_body_sensor_location(BodySensorLocation.FOOT) == b"\x06"
    for loc in BodySensorLocation:
        assert decode_body_sensor_location(encode_body_sensor_location(loc)) is loc
    with pytest.raises(GattDecodeError, match="reserved location value 7"):
        decode_body_sensor_location(b"\x07")
    with pytest.raises(GattDecodeError, match="expected 1 byte, got 2"):
        decode_body_sensor_location(b"\x01\x01")
    assert encode_hr_control_point(HeartRateControlOpcode.RESET_ENERGY_EXPENDED) == b"\x01"
    assert decode_hr_control_point(b"\x01") is HeartRateControlOpcode.RESET_ENERGY_EXPENDED
    with pytest.raises(GattDecodeError, match="0x02 not supported"):
        decode_hr_control_point(b"\x02")
    with pytest.raises(GattDecodeError, match="expected 1 byte, got 0"):
        decode_hr_control_point(b"")
