"""Per-request cost of the observation middleware (request id, access log, latency histogram).

Calls a trivial ASGI app directly, with and without :class:`RequestObserver` around it, so the
figure is the middleware's own cost without network or server noise. Access lines are measured
twice: dropped by level (no logging configured, as in-process use) and formatted as JSON into
a null stream (``wearemo serve`` with ``WEAREMO_LOG_FORMAT=json``). The last line printed is
JSON.

Usage::

    .venv/bin/python benchmarks/request_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import time

from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from wearemo.api.observe import RequestObserver
from wearemo.logs import configure_logging


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    scope["route"] = ROUTE  # what Starlette's router sets for a matched route
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


ROUTE = Route("/v1/subjects/{subject_id}/state", endpoint=lambda request: None)


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


async def per_request_us(app: object, n: int) -> float:
    call = app  # an ASGI callable
    scope_base = {"type": "http", "method": "GET", "path": "/v1/subjects/s01/state",
                  "headers": [(b"x-request-id", b"bench-1")], "state": {}}
    for _ in range(min(n // 10, 1000)):  # warm-up
        await call(dict(scope_base), _receive, _send)  # type: ignore[operator]
    started = time.perf_counter()
    for _ in range(n):
        await call(dict(scope_base), _receive, _send)  # type: ignore[operator]
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    n = args.requests
    logging.getLogger("wearemo").setLevel(logging.WARNING)
    base = asyncio.run(per_request_us(bare, n))
    dropped = asyncio.run(per_request_us(RequestObserver(bare), n))
    configure_logging("json", "INFO", stream=io.StringIO())
    logged = asyncio.run(per_request_us(RequestObserver(bare), n))
    result = {
        "requests": n,
        "bare_us": round(base, 2),
        "observer_us_no_log": round(dropped - base, 2),
        "observer_us_json_log": round(logged - base, 2),
    }
    print(f"bare ASGI app {base:.1f} µs/request; the middleware adds {dropped - base:.1f} µs "
          f"(access line dropped by level) or {logged - base:.1f} µs (JSON access line)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
