"""Write throughput of InfluxStore in both modes: samples/s from add_batch to acknowledged.

Needs running servers (e.g. ``influxd`` 1.x for v1, victoria-metrics or InfluxDB 2.x for v2):

    python benchmarks/influx_write.py --v1-url http://127.0.0.1:8086 --v1-database bench \\
        --v2-url http://127.0.0.1:8428 [--batches 400]

Prints one JSON line per mode and a final JSON line with both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import httpx
import numpy as np

from wearemo.samples import SampleBatch
from wearemo.store import InfluxStore

T0 = 1_700_000_000_000_000_000


def run(store: InfluxStore, n_batches: int, subject: str) -> dict[str, float]:
    rng = np.random.default_rng(0)
    batches = [SampleBatch(batch_id=f"b{i}", subject_id=subject, device_id="d1", channel="ppg",
                           start_ns=T0 + i * 10**10, rate_hz=64.0,
                           values=rng.normal(size=640).tolist()) for i in range(n_batches)]
    t0 = time.perf_counter()
    for b in batches:
        store.add_batch(b)
    queued = time.perf_counter() - t0
    store.flush(timeout_s=600)
    total = time.perf_counter() - t0
    n = n_batches * 640
    return {"samples": n, "queue_s": round(queued, 3), "total_s": round(total, 3),
            "samples_per_s": round(n / total), "queue_samples_per_s": round(n / queued)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--v1-url")
    ap.add_argument("--v1-database", default="bench")
    ap.add_argument("--v2-url")
    ap.add_argument("--batches", type=int, default=400)
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.v1_url:
            httpx.post(args.v1_url + "/query", data={"q": f'CREATE DATABASE "{args.v1_database}"'})
            with InfluxStore(args.v1_url, write_mode="v1", database=args.v1_database,
                             buffer_dir=f"{tmp}/v1") as s:
                out["v1"] = run(s, args.batches, f"bench{time.time_ns()}")
            print(json.dumps({"mode": "v1", **out["v1"]}))
        if args.v2_url:
            with InfluxStore(args.v2_url, write_mode="v2", bucket="bench", org="bench",
                             token="bench", buffer_dir=f"{tmp}/v2") as s:
                out["v2"] = run(s, args.batches, f"bench{time.time_ns()}")
            print(json.dumps({"mode": "v2", **out["v2"]}))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
