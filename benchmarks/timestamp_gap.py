"""Cost of a timestamp jump: one small batch long after a subject's data, over real HTTP.

A subject uploads the first ``--minutes`` of the shipped real excerpt (Stress-Predict S02: PPG,
EDA, TEMP, ACC, HR, IBI) in 10-s batches to ``wearemo serve`` (a separate process, inline
processing, on loopback); then one 4-sample EDA batch ``--gap-days`` after its last sample.
Reported for that one request: the windows it produced (inline processing counts them in the
answer), its wall time, and the server's resident memory before and after (and the growth of
its peak, ``VmHWM``). Before windows skipped empty spans, a 7-day gap cost one 5-s window per
step of the gap. The last line printed is JSON.

Usage::

    .venv/bin/python benchmarks/timestamp_gap.py [--gap-days 7] [--minutes 3]
"""

from __future__ import annotations

import argparse
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
import psutil

from wearemo.batch import DEFAULT_EXCERPT
from wearemo.datasets import load_recording
from wearemo.samples import SampleBatch

_NS = 1_000_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _body(batches: list[SampleBatch]) -> dict[str, Any]:
    return {"batches": [b.model_dump(mode="json", exclude_none=True) for b in batches]}


def run(gap_days: float, minutes: float, folder: Path) -> dict[str, Any]:
    rec = load_recording(DEFAULT_EXCERPT)
    rec = rec.between(rec.start_ns, rec.start_ns + int(minutes * 60 * _NS))
    batches = [b.model_copy(update={"subject_id": "gap-1"})
               for b in rec.iter_batches(chunk_s=10.0)]
    last_ns = max(b.end_ns for b in batches)
    jump = SampleBatch(batch_id="after-gap", subject_id="gap-1", device_id="d", channel="eda",
                       start_ns=last_ns + int(gap_days * 86400 * _NS), rate_hz=4.0,
                       values=[3.0, 3.1, 3.2, 3.3])
    port = _free_port()
    admin = secrets.token_urlsafe(32)
    env = {**os.environ, "WEAREMO_DATA_DIR": str(folder), "WEAREMO_PROCESSING": "inline",
           "WEAREMO_ADMIN_KEY": admin, "WEAREMO_LOG_LEVEL": "WARNING",
           "WEAREMO_RATE_LIMIT_REQUESTS_PER_S": "0", "WEAREMO_RATE_LIMIT_SAMPLES_PER_S": "0"}
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
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=url, timeout=600, headers=headers) as client:
            before = 0
            for i in range(0, len(batches), 50):
                r = client.post("/v1/ingest", json=_body(batches[i:i + 50]))
                r.raise_for_status()
                before += r.json()["windows"]
            server = psutil.Process(proc.pid)
            rss0, peak0 = server.memory_info().rss, _peak_rss_bytes(proc.pid)
            t0 = time.perf_counter()
            r = client.post("/v1/ingest", json=_body([jump]))
            seconds = time.perf_counter() - t0
            rss1, peak1 = server.memory_info().rss, _peak_rss_bytes(proc.pid)
            answer = r.json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "gap_days": gap_days,
        "minutes_before_gap": minutes,
        "windows_before_gap": before,
        "status": r.status_code,
        "windows_from_jump_batch": answer.get("windows"),
        "jump_request_s": round(seconds, 3),
        "rss_before_mb": round(rss0 / 2**20, 1),
        "rss_after_mb": round(rss1 / 2**20, 1),
        "peak_rss_growth_mb": round((peak1 - peak0) / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--gap-days", type=float, default=7.0)
    ap.add_argument("--minutes", type=float, default=3.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = run(a.gap_days, a.minutes, Path(tmp))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
