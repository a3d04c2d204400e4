"""Coverage-guided fuzzing (atheris, libFuzzer) of every GATT decoder: only the codec's own
error may escape.

The first input byte picks the decoder (Heart Rate Service, wearemo sensor service, Polar PMD),
the rest is the characteristic value. ``sensor_frame_sealed`` appends a valid CRC first, so
libFuzzer's mutations reach the fields behind the wearemo frame's checksum. Valid frames of
every kind seed the corpus. Anything but ``GattDecodeError`` (or a hang, with ``-timeout=``)
stops the run with the input, as libFuzzer does; the exit code is then non-zero.

Usage (libFuzzer flags and corpus directories; default corpus ``out/fuzz-corpus``)::

    .venv/bin/python benchmarks/fuzz_atheris.py -runs=1000000 -seed=1
    .venv/bin/python benchmarks/fuzz_atheris.py -max_total_time=600 -timeout=5 my-corpus/

Example
-------
``tests/bridge/test_gatt_fuzz.py`` runs it for 20,000 inputs.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import atheris
import numpy as np

import wearemo.samples  # noqa: F401  (not instrumented: only the codecs are)

with atheris.instrument_imports():
    from firmware_bridge.gatt.errors import GattDecodeError
    from firmware_bridge.gatt.heart_rate import (
        HeartRateMeasurement,
        decode_body_sensor_location,
        decode_heart_rate_measurement,
        decode_hr_control_point,
        encode_heart_rate_measurement,
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

__all__ = ["DECODERS", "fuzz_one", "main"]


def _sealed(data: bytes) -> object:
    return decode_frame(data + struct.pack("<H", crc16_ccitt_false(data)))


#: Decoders in input-byte order.
DECODERS: tuple[Callable[[bytes], object], ...] = (
    decode_heart_rate_measurement, decode_body_sensor_location, decode_hr_control_point,
    decode_frame, _sealed, decode_command, decode_response, decode_info,
    decode_pmd_frame, decode_pmd_settings, decode_pmd_control_response,
)


def fuzz_one(data: bytes) -> None:
    """One input: byte 0 picks the decoder, the rest is decoded."""
    if not data:
        return
    decoder = DECODERS[data[0] % len(DECODERS)]
    with contextlib.suppress(GattDecodeError):  # the codec's own error: expected
        decoder(bytes(data[1:]))


def _seeds() -> list[bytes]:
    """Valid values of every kind, prefixed with their decoder's byte."""
    rng = np.random.default_rng(0)
    frame = encode_frame(SensorFrame(Channel.ACC, 7, 10**6, True, 32.0,
                                     rng.normal(size=(8, 3))))
    acc = rng.integers(-2000, 2000, size=(20, 3)).cumsum(axis=0)
    ppg = rng.integers(-3000, 3000, size=(16, 4)).cumsum(axis=0)
    out = [
        bytes([0]) + encode_heart_rate_measurement(
            HeartRateMeasurement(72, "detected", 10, (1024, 1000))),
        bytes([1, 2]), bytes([2, 1]),
        bytes([3]) + frame, bytes([4]) + frame[:-2],
        bytes([5, 0x04, 0x02, 1, 2, 3, 4]), bytes([6, 0x81]) + bytes(9), bytes([7, 1, 15, 90]),
        bytes([8]) + encode_pmd_frame(MeasurementType.ACC, 5, acc, frame_type=1,
                                      compressed=True, block=7),
        bytes([8]) + encode_pmd_frame(MeasurementType.PPG, 5, ppg, compressed=True),
        bytes([8, 3]) + bytes(9) + struct.pack("<BHHB", 60, 1000, 10, 6) * 3,
        bytes([9]) + bytes.fromhex("000134000101100002" "04f500f401e803d007" "040103"),
        bytes([10]) + bytes.fromhex("f00102000000013400"),
    ]
    return out


#: Corpus kept between runs (libFuzzer adds the inputs that reach new code) unless one is given.
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "out" / "fuzz-corpus"


def main(argv: list[str] | None = None) -> None:
    """Fuzz until libFuzzer's limits (``-runs=``, ``-max_total_time=``) end the process.

    Arguments not starting with ``-`` are corpus directories (libFuzzer's convention); the
    seeds go into the first, default :data:`DEFAULT_CORPUS`.
    """
    args = list(sys.argv if argv is None else argv)
    dirs = [a for a in args[1:] if not a.startswith("-")]
    corpus = Path(dirs[0]) if dirs else DEFAULT_CORPUS
    corpus.mkdir(parents=True, exist_ok=True)
    for k, seed in enumerate(_seeds()):
        (corpus / f"seed-{k:02d}").write_bytes(seed)
    atheris.Setup(args if dirs else [*args, str(corpus)], fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
