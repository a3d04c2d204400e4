"""Helpers of the API tests: a real uvicorn server on loopback and simulated wearable data."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import simdata
import uvicorn

from wearemo.api import create_app
from wearemo.samples import SampleBatch
from wearemo.settings import Settings

HR_BPM = 72.0
MODEL = "default"  # the model shipped in the package


def sim_batches(
    subject: str, duration_s: int, *, chunk_s: int = 10, seed: int = 3
) -> list[SampleBatch]:
    return simdata.sim_batches(subject, duration_s, hr_bpm=HR_BPM, chunk_s=chunk_s, seed=seed)


def body(batches: list[SampleBatch]) -> dict[str, list[dict[str, object]]]:
    return {"batches": [b.model_dump(mode="json", exclude_none=True) for b in batches]}


@contextmanager
def serve(settings: Settings, *, sndbuf: int | None = None) -> Iterator[str]:
    """Run the app under uvicorn on a free loopback port; yield its base URL.

    ``sndbuf`` fixes the send buffer of every accepted connection (Linux copies it from the
    listening socket), e.g. to make a client that stops reading stall the server's sends soon.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
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
