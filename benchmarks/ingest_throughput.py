"""Ingest throughput over loopback HTTP: inline vs background processing, side by side.

Many simulated wearers (copies of the shipped real excerpt, 17 min of E4 PPG/EDA/TEMP/ACC/
HR/IBI each, as different subjects) upload ``--chunk-s`` batches, ``--per-request`` batches
per ``POST /v1/ingest``, in ``--form`` msgpack (float32 raw arrays, what a watch sends) or
JSON, from ``--clients`` concurrent connections, to ``wearemo serve`` (a separate process) on
loopback. The same uploads run twice in one invocation:

* ``inline``: each request is answered after features and model ran on it;
* ``background``: each request is answered once durably stored (one SQLite transaction), and
  the worker processes windows and states from the store's queue.

Per mode it reports *accepted* samples/s (wall time of the uploads), samples per second of the
server process's CPU time (``per_server_core``: the "per core" figure), p50/p99 request latency,
and *processed* samples/s (wall time until every state is stored). Accepted throughput is how
fast the service takes data in; processed throughput, features and the model on every 5-s
window, is its sustainable capacity: beyond it the background queue grows until the backpressure
bound (503). Rate limits are off for the run. The last line printed is JSON.

Usage::

    .venv/bin/python benchmarks/ingest_throughput.py [--subjects 8] [--chunk-s 10]
        [--per-request 60] [--clients 4] [--form msgpack|json] [--modes inline,background]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import psutil

from wearemo.batch import DEFAULT_EXCERPT
from wearemo.datasets import load_recording
from wearemo.samples import SampleBatch


def _batches(n_subjects: int, chunk_s: float) -> list[list[SampleBatch]]:
    """Per subject, its batches in upload order."""
    base = list(load_recording(DEFAULT_EXCERPT).iter_batches(chunk_s=chunk_s))
    return [[b.model_copy(update={"subject_id": f"bench-{k:03d}",
                                  "batch_id": f"bench-{k:03d}:{b.batch_id}"}) for b in base]
            for k in range(n_subjects)]


def _encode(batches: list[SampleBatch], form: str) -> tuple[bytes, str]:
    if form == "json":
        raw = {"batches": [b.model_dump(mode="json", exclude_none=True) for b in batches]}
        return json.dumps(raw).encode(), "application/json"
    out = []
    for b in batches:
        d = b.model_dump(mode="json", exclude_none=True)
        d["values"] = np.asarray(b.values, "<f4").tobytes()
        d["values_dtype"] = "float32"
        if b.timestamps_ns is not None:
            d["timestamps_ns"] = np.asarray(b.timestamps_ns, "<i8").tobytes()
        out.append(d)
    return msgpack.packb({"batches": out}), "application/msgpack"


def _requests(per_subject: list[list[SampleBatch]], per_request: int, clients: int,
              form: str) -> list[list[tuple[bytes, str, int]]]:
    """Bodies per client connection; each wearer's requests stay on one connection, in order."""
    lanes: list[list[tuple[bytes, str, int]]] = [[] for _ in range(clients)]
    for k, batches in enumerate(per_subject):
        for i in range(0, len(batches), per_request):
            chunk = batches[i:i + per_request]
            body, ctype = _encode(chunk, form)
            lanes[k % clients].append((body, ctype, sum(b.n_samples for b in chunk)))
    return lanes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _upload(
    url: str, lanes: list[list[tuple[bytes, str, int]]], key: str
) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    busy = 0

    async def lane(items: list[tuple[bytes, str, int]]) -> None:
        nonlocal busy
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            for body, ctype, _ in items:
                while True:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/ingest", content=body,
                                          headers={"content-type": ctype,
                                                   "Authorization": f"Bearer {key}"})
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code == 503:  # backpressure: wait as told
                        busy += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    r.raise_for_status()
                    break

    t0 = time.perf_counter()
    await asyncio.gather(*(lane(items) for items in lanes))
    return time.perf_counter() - t0, latencies, busy


def _run(mode: str, lanes: list[list[tuple[bytes, str, int]]], samples: int, folder: Path,
         n_subjects: int) -> dict[str, Any]:
    port = _free_port()
    admin = secrets.token_urlsafe(32)
    env = {**os.environ, "WEAREMO_DATA_DIR": str(folder / mode), "WEAREMO_PROCESSING": mode,
           "WEAREMO_ADMIN_KEY": admin, "WEAREMO_LOG_LEVEL": "WARNING",
           "WEAREMO_RATE_LIMIT_REQUESTS_PER_S": "0", "WEAREMO_RATE_LIMIT_SAMPLES_PER_S": "0",
           "WEAREMO_MAX_REQUEST_BYTES": str(64 * 1024 * 1024),
           "WEAREMO_MAX_PENDING_SAMPLES": str(10 * samples)}
    proc = subprocess.Popen([sys.executable, "-m", "wearemo", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        # Uploads authenticate as a device key granted every simulated wearer, as an app would.
        subjects = sorted({f"bench-{k:03d}" for k in range(n_subjects)})
        r = httpx.post(f"{url}/v1/admin/keys", json={"role": "device", "subjects": subjects},
                       headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        r.raise_for_status()
        key = r.json()["secret"]
        server = psutil.Process(proc.pid)
        cpu0 = server.cpu_times()
        t0 = time.perf_counter()
        wall, latencies, busy = asyncio.run(_upload(url, lanes, key))
        cpu1 = server.cpu_times()
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            while client.get("/v1/ingest/lag").json()["pending_batches"]:
                time.sleep(0.05)
            processed_wall = time.perf_counter() - t0
            lag = client.get("/v1/ingest/lag").json()
        cpu2 = server.cpu_times()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    upload_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    total_cpu = (cpu2.user + cpu2.system) - (cpu0.user + cpu0.system)
    ms = np.asarray(latencies) * 1000
    return {
        "accepted_samples_per_s": round(samples / wall),
        "accepted_samples_per_server_cpu_s": round(samples / upload_cpu),
        "upload_s": round(wall, 2),
        "server_cpu_s_during_upload": round(upload_cpu, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "requests": len(latencies),
        "refused_503": busy,
        "processed_samples_per_s": round(samples / processed_wall),
        "processed_s": round(processed_wall, 2),
        "processed_samples_per_server_cpu_s": round(samples / total_cpu),
        "processing_samples_per_s_reported": lag["processing_samples_per_s"]
        and round(lag["processing_samples_per_s"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--subjects", type=int, default=8)
    ap.add_argument("--chunk-s", type=float, default=10.0)
    ap.add_argument("--per-request", type=int, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--form", choices=("msgpack", "json"), default="msgpack")
    ap.add_argument("--modes", default="inline,background")
    a = ap.parse_args()
    per_subject = _batches(a.subjects, a.chunk_s)
    samples = sum(b.n_samples for batches in per_subject for b in batches)
    lanes = _requests(per_subject, a.per_request, a.clients, a.form)
    body_bytes = sum(len(body) for lane in lanes for body, _, _ in lane)
    out: dict[str, Any] = {
        "store": "sqlite", "form": a.form, "subjects": a.subjects, "chunk_s": a.chunk_s,
        "per_request": a.per_request, "clients": a.clients,
        "batches": sum(len(b) for b in per_subject), "samples": samples,
        "bytes_per_sample": round(body_bytes / samples, 2),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes.split(","):
            out[mode] = _run(mode, lanes, samples, Path(tmp), a.subjects)
            print(mode, json.dumps(out[mode]), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
