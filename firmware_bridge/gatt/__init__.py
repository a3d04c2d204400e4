"""GATT codecs: the standard Heart Rate Service, the wearemo sensor service and Polar PMD
(:mod:`firmware_bridge.gatt.polar_pmd`).

Decoders raise only :class:`GattDecodeError` on malformed input.

Example
-------
>>> from firmware_bridge.gatt import decode_heart_rate_measurement
>>> decode_heart_rate_measurement(bytes.fromhex("0048")).hr_bpm
72
"""

from firmware_bridge.gatt.errors import GattDecodeError
from firmware_bridge.gatt.heart_rate import (
    BODY_SENSOR_LOCATION_UUID,
    HR_CONTROL_POINT_UUID,
    HR_MEASUREMENT_UUID,
    HRS_SERVICE_UUID,
    BodySensorLocation,
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

__all__ = [
    "BODY_SENSOR_LOCATION_UUID",
    "HRS_SERVICE_UUID",
    "HR_CONTROL_POINT_UUID",
    "HR_MEASUREMENT_UUID",
    "BodySensorLocation",
    "GattDecodeError",
    "HeartRateControlOpcode",
    "HeartRateMeasurement",
    "decode_body_sensor_location",
    "decode_heart_rate_measurement",
    "decode_hr_control_point",
    "encode_body_sensor_location",
    "encode_heart_rate_measurement",
    "encode_hr_control_point",
    "max_rr_per_measurement",
]
