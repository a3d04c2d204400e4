"""Errors raised by the GATT codecs."""

from __future__ import annotations

__all__ = ["GattDecodeError"]


class GattDecodeError(ValueError):
    """A characteristic value that does not follow its specification.

    Decoders raise only this for malformed input (truncated, bad CRC, unknown codes, ...); the
    message names the characteristic and what is wrong, e.g. ``"0x2A37: RR field has odd
    length 3"``.

    Example
    -------
    >>> from firmware_bridge.gatt import decode_heart_rate_measurement
    >>> try:
    ...     decode_heart_rate_measurement(b"")
    ... except GattDecodeError as e:
    ...     print(e)
    0x2A37: empty value (need at least flags and heart rate)
    """
