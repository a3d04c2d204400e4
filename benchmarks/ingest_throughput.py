"""End-to-end ingest speed: the streaming pipeline in process vs. through the HTTP API.

Replays the shipped real excerpt (17 min of E4 PPG/EDA/TEMP/ACC/HR/IBI) as 1-s batches, the
way the bridge uploads them, for ``--subjects`` subjects: once straight into
``Pipeline.ingest`` (SQLite store, features, model) and once as JSON ``POST /v1/ingest``
requests of ``--per-request`` batches to ``wearemo serve`` on loopback (a separate process).
Both runs are in the same invocation, so the ratio is comparable on a noisy machine. The last
line printed is JSON.

Usage::

    .venv/bin/python benchmarks/ingest_throughput.py [--subjects 2] [--per-request 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from wearemo.batch import DEFAULT_EXCERPT
from wearemo.datasets import load_recording
from wearemo.model import load_model
from wearemo.pipeline import Pipeline
from wearemo.samples import SampleBatch
from wearemo.store import SQLiteStore


def _batches(n_subjects: int) -> list[SampleBatch]:
    rec = load_recording(DEFAULT_EXCERPT)
    base = list(rec.iter_batches(chunk_s=1.0))
    out = []
    for k in range(n_subjects):
        sid = f"bench-{k:02d}"
        out += [b.model_copy(update={"subject_id": sid, "batch_id": f"{sid}:{b.batch_id}"})
                for b in base]
    out.sort(key=lambda b: b.start_ns)  # subjects interleaved, as concurrent wearables
    return out


def _in_process(batches: list[SampleBatch], folder: Path) -> tuple[float, int]:
    pipeline = Pipeline(SQLiteStore(folder / "inproc.sqlite3"), load_model())
    t0 = time.perf_counter()
    windows = 0
    for i in range(0, len(batches), 20):
        windows += pipeline.ingest(batches[i:i + 20]).windows
    return time.perf_counter() - t0, windows


def _over_http(batches: list[SampleBatch], folder: Path, per_request: int) -> tuple[float, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WEAREMO_DATA_DIR": str(folder / "http")}
    proc = subprocess.Popen([sys.executable, "-m", "wearemo", "serve", "--port", str(port)],
                            env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        bodies = [
            json.dumps({"batches": [b.model_dump(mode="json", exclude_none=True)
                                    for b in batches[i:i + per_request]]})
            for i in range(0, len(batches), per_request)
        ]
        windows = 0
        with httpx.Client(base_url=url, timeout=120) as client:
            t0 = time.perf_counter()
            for body in bodies:
                r = client.post("/v1/ingest", content=body,
                                headers={"content-type": "application/json"})
                r.raise_for_status()
                windows += r.json()["windows"]
            return time.perf_counter() - t0, windows
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=2)
    ap.add_argument("--per-request", type=int, default=20)
    a = ap.parse_args()
    batches = _batches(a.subjects)
    samples = sum(b.n_samples for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        t_in, w_in = _in_process(batches, Path(tmp))
        t_http, w_http = _over_http(batches, Path(tmp), a.per_request)
    print(json.dumps({
        "subjects": a.subjects, "batches": len(batches), "samples": samples,
        "data_seconds_per_subject": 1020,
        "in_process": {"s": round(t_in, 2), "samples_per_s": round(samples / t_in),
                       "windows": w_in, "ms_per_window": round(1000 * t_in / w_in, 2)},
        "http": {"s": round(t_http, 2), "samples_per_s": round(samples / t_http),
                 "windows": w_http, "ms_per_window": round(1000 * t_http / w_http, 2)},
        "http_over_in_process_time": round(t_http / t_in, 2),
        "realtime_factor_http": round(1020 * a.subjects / t_http, 1),
    }))


if __name__ == "__main__":
    main()
