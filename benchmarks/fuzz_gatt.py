"""A million malformed notifications through every GATT decoder: only the codec's own error.

Feeds ``--frames`` byte strings (default 1,000,000), half random (0-300 bytes) and half mutated
from valid frames (bytes changed, cut or extended; wearemo sensor frames re-sealed with a good
CRC so the mutation reaches the fields behind it; Polar PMD frames with their delta widths and
counts hit too), round-robin through the Heart Rate Service, wearemo sensor service and Polar
PMD decoders. Any exception other than ``GattDecodeError`` is a failure (printed with the input
in hex); the slowest single call is reported to show nothing hangs. The last line is JSON.

Usage::

    .venv/bin/python benchmarks/fuzz_gatt.py [--frames 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np

from firmware_bridge.gatt import (
    GattDecodeError,
    decode_body_sensor_location,
    decode_heart_rate_measurement,
    decode_hr_control_point,
    encode_heart_rate_measurement,
)
from firmware_bridge.gatt.heart_rate import HeartRateMeasurement
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

DECODERS: dict[str, Callable[[bytes], object]] = {
    "heart_rate_measurement": decode_heart_rate_measurement,
    "body_sensor_location": decode_body_sensor_location,
    "hr_control_point": decode_hr_control_point,
    "sensor_frame": decode_frame,
    "sensor_command": decode_command,
    "sensor_response": decode_response,
    "sensor_info": decode_info,
    "pmd_frame": decode_pmd_frame,
    "pmd_settings": decode_pmd_settings,
    "pmd_control_response": decode_pmd_control_response,
}

SEEDS: dict[str, list[bytes]] = {
    "heart_rate_measurement": [encode_heart_rate_measurement(
        HeartRateMeasurement(72, "detected", 10, (800, 812)))],
    "sensor_frame": [
        encode_frame(SensorFrame(Channel.PPG, 5, 10, False, 64.0, np.linspace(-3, 3, 20))),
        encode_frame(SensorFrame(Channel.ACC, 5, 10, True, 32.0, np.ones((6, 3)))),
    ],
    "pmd_frame": [
        encode_pmd_frame(MeasurementType.ACC, 5, np.arange(60).reshape(20, 3) * 37,
                         compressed=True, block=6),
        encode_pmd_frame(MeasurementType.PPG, 5, np.arange(8).reshape(2, 4)),
    ],
}


def _mutate(rng: np.random.Generator, name: str) -> bytes:
    seeds = SEEDS.get(name)
    if not seeds:
        return rng.bytes(int(rng.integers(0, 40)))
    data = bytearray(seeds[int(rng.integers(len(seeds)))])
    for _ in range(int(rng.integers(1, 5))):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
    if rng.random() < 0.3:
        data = data[: int(rng.integers(0, len(data) + 1))]
    if rng.random() < 0.3:
        data += rng.bytes(int(rng.integers(1, 8)))
    if name == "sensor_frame" and len(data) > 2:  # re-seal so the CRC does not stop it
        body = bytes(data[:-2])
        data = bytearray(body + crc16_ccitt_false(body).to_bytes(2, "little"))
    return bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    names = list(DECODERS)
    counts = {n: {"inputs": 0, "decoded": 0, "codec_errors": 0} for n in names}
    failures: list[str] = []
    slowest = 0.0
    t0 = time.perf_counter()
    for i in range(a.frames):
        name = names[i % len(names)]
        mutated = (i // len(names)) % 2 == 0  # every decoder gets both kinds
        data = _mutate(rng, name) if mutated else rng.bytes(int(rng.integers(0, 301)))
        c = counts[name]
        c["inputs"] += 1
        start = time.perf_counter()
        try:
            DECODERS[name](data)
            c["decoded"] += 1
        except GattDecodeError:
            c["codec_errors"] += 1
        except Exception as exc:  # the point: anything else is a bug
            failures.append(f"{name}: {type(exc).__name__}: {exc} <- {data.hex()}")
        slowest = max(slowest, time.perf_counter() - start)
    elapsed = time.perf_counter() - t0
    for f in failures[:20]:
        print(f)
    print(json.dumps({"frames": a.frames, "failures": len(failures), "seconds": round(elapsed, 1),
                      "slowest_call_ms": round(slowest * 1e3, 3), "per_decoder": counts}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
