"""Helpers of the API tests: a real uvicorn server on loopback and simulated wearable data."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import neurokit2 as nk
import uvicorn

from wearemo.api import create_app
from wearemo.samples import SampleBatch
from wearemo.settings import Settings

T0 = 1_700_000_000_000_000_000  # on the 5-s step grid: windows end at T0 + 60 s, + 65 s, ...
S = 1_000_000_000
HR_BPM = 72.0
MODEL = "default"  # the model shipped in the package


def sim_batches(
    subject: str, duration_s: int, *, chunk_s: int = 10, seed: int = 3
) -> list[SampleBatch]:
    """NeuroKit2 PPG (64 Hz, ``HR_BPM``) and EDA (4 Hz) in ``chunk_s`` batches, interleaved."""
    ppg = nk.ppg_simulate(duration=duration_s, sampling_rate=64, heart_rate=HR_BPM,
                          random_state=seed)
    eda = nk.eda_simulate(duration=duration_s, sampling_rate=4, scr_number=6,
                          random_state=seed) + 3.0
    out = []
    for k in range(duration_s // chunk_s):
        for channel, rate, sig in (("ppg", 64, ppg), ("eda", 4, eda)):
            n = rate * chunk_s
            out.append(SampleBatch(
                batch_id=f"{subject}:{channel}:{k}", subject_id=subject, device_id="dev1",
                channel=channel, start_ns=T0 + k * chunk_s * S, rate_hz=float(rate),
                values=sig[k * n:(k + 1) * n].tolist()))
    return out


def body(batches: list[SampleBatch]) -> dict[str, list[dict[str, object]]]:
    return {"batches": [b.model_dump(mode="json", exclude_none=True) for b in batches]}


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def settings_for(data_dir: Path, **overrides: object) -> Settings:
    return Settings(data_dir=data_dir, model=MODEL, **overrides)  # type: ignore[arg-type]
