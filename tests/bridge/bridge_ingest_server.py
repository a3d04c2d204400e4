"""A small real ingest API for the bridge's tests: FastAPI + uvicorn on loopback, in a thread.

It speaks the wearemo ingest contract (``POST /v1/ingest``: JSON or msgpack bodies decoded by
the API's own :mod:`wearemo.api.wire`, 200 with per-batch stored/duplicate results, 422 naming
the field, 409 for a batch that starts at or before the last stored sample of its channel) and
can be switched to failure modes to test retries, or to answer msgpack with 415 as an API
older than the compact form would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from wearemo.api.errors import validation_issues
from wearemo.api.wire import UnsupportedMediaTypeError, media_type, parse_ingest_body
from wearemo.samples import SampleBatch

Mode = Literal["up", "503", "store_then_500"]


class IngestServer:
    """Loopback ingest server; the port is reserved at construction, served after ``start()``.

    Until ``start()`` a connection to the port is refused (the API is down).
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode: Mode = "up"
        self.stored: dict[str, SampleBatch] = {}
        self.posts = 0
        self.duplicate_posts = 0  # batches received again after being stored
        self.accept_msgpack = True
        self.content_types: list[str] = []
        self._last_end: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/ingest")
        async def ingest(request: Request) -> JSONResponse:
            raw = await request.body()
            ctype = media_type(request.headers.get("content-type"))
            with self._lock:
                self.posts += 1
                self.content_types.append(ctype)
                if self.mode == "503":
                    return JSONResponse({"detail": "unavailable"}, status_code=503)
                if ctype != "application/json" and not self.accept_msgpack:
                    return JSONResponse({"detail": "unsupported"}, status_code=415)
                try:
                    body = parse_ingest_body(raw, ctype, max_batches=1000)
                except RequestValidationError as exc:
                    return JSONResponse({"detail": validation_issues(exc.errors())},
                                        status_code=422)
                except UnsupportedMediaTypeError as exc:
                    return JSONResponse({"detail": str(exc)}, status_code=415)
                # Stricter than the wire model, as a real API may be: EDA above 100 uS is
                # refused with a FastAPI-style 422 naming the field.
                issues = [
                    {"type": "value_error", "loc": ["body", "batches", i, "values", j],
                     "field": f"batches.{i}.values.{j}", "msg": "eda above 100 uS"}
                    for i, b in enumerate(body.batches) if b.channel.value == "eda"
                    for j, v in enumerate(b.values) if isinstance(v, float) and v > 100
                ]
                if issues:
                    return JSONResponse({"detail": issues}, status_code=422)
                results: list[dict[str, str]] = []
                for i, b in enumerate(body.batches):
                    if b.batch_id in self.stored:
                        self.duplicate_posts += 1
                        results.append({"batch_id": b.batch_id, "status": "duplicate"})
                        continue
                    key = (b.subject_id, b.channel.value)
                    if key in self._last_end and b.start_ns <= self._last_end[key]:
                        return JSONResponse(
                            {"detail": {
                                "field": f"batches.{i}.start_ns",
                                "message": "out of order: starts before the last stored sample",
                                "batch_id": b.batch_id,
                                "stored_before": [
                                    r["batch_id"] for r in results if r["status"] == "stored"],
                                "duplicates_before": [
                                    r["batch_id"] for r in results if r["status"] == "duplicate"],
                            }},
                            status_code=409,
                        )
                    self.stored[b.batch_id] = b
                    self._last_end[key] = b.end_ns
                    results.append({"batch_id": b.batch_id, "status": "stored"})
                if self.mode == "store_then_500":
                    return JSONResponse({"detail": "lost answer"}, status_code=500)
                return JSONResponse({
                    "stored": sum(r["status"] == "stored" for r in results),
                    "duplicates": sum(r["status"] == "duplicate" for r in results),
                    "results": results,
                })

        return app

    def start(self) -> None:
        """Start serving on the reserved port (returns once it accepts connections)."""
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        server = self._server

        def serve() -> None:
            asyncio.run(server.serve(sockets=[self.sock]))

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test ingest server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self.sock.close()

    def samples(self) -> dict[tuple[str, str], int]:
        """Stored sample counts per (subject, channel)."""
        out: dict[tuple[str, str], int] = {}
        for b in self.stored.values():
            key = (b.subject_id, b.channel.value)
            out[key] = out.get(key, 0) + b.n_samples
        return out

    def sample_multiplicity(self) -> dict[tuple[str, str, int], int]:
        """How often each (subject, channel, sample time in ns) is stored: 1 everywhere means
        no sample was stored twice under different batch ids."""
        out: dict[tuple[str, str, int], int] = {}
        for b in self.stored.values():
            for t in b.times_ns().tolist():
                key = (b.subject_id, b.channel.value, int(t))
                out[key] = out.get(key, 0) + 1
        return out
