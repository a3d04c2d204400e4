"""Request observation: request ids, one structured access log line, latency by route template.

:class:`RequestObserver` wraps the whole app (outermost, so 413s and 404s are seen too). It
accepts a client's ``X-Request-ID`` when it is a short token (else makes one), returns it on the
response, and exposes it to every log record of the request (:data:`wearemo.logs.REQUEST_ID`).
The access line (logger ``wearemo.access``) has ``request_id``, ``method``, ``route`` (the
template, e.g. ``/v1/subjects/{subject_id}/state``: no ids), ``status``, ``duration_ms`` and
``key_id`` (set ``request.state.key_id`` in an auth dependency and it appears here). Bodies,
sample values, query strings and secrets are never logged.

Example
-------
>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> app.add_middleware(RequestObserver)
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wearemo.logs import REQUEST_ID
from wearemo.metrics import REQUEST_SECONDS

__all__ = ["RequestObserver"]

access_log = logging.getLogger("wearemo.access")

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET = frozenset({"/metrics", "/healthz", "/readyz"})  # probes: DEBUG, not INFO


class RequestObserver:
    """ASGI middleware: request id, access log, request latency histogram."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                     "")
        request_id = given if _ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the server answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            REQUEST_SECONDS.labels(method=method, route=route, status=str(status)).observe(seconds)
            state = scope.get("state") or {}
            key_id = state.get("key_id") if isinstance(state, dict) else None
            access_log.log(
                logging.DEBUG if route in _QUIET else logging.INFO,
                "%s %s %d %.1f ms", method, route, status, seconds * 1000,
                extra={"request_id": request_id, "method": method, "route": route,
                       "status": status, "duration_ms": round(seconds * 1000, 2),
                       "key_id": key_id},
            )
            REQUEST_ID.reset(token)
