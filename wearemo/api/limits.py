"""Request limits: body size (HTTP 413), body read time (HTTP 408) and per-client rates (429).

:class:`BodySizeLimit` checks ``Content-Length`` and the bytes read. :class:`BodyReadTimeout`
cuts off clients that send a body too slowly (uvicorn has no read timeout while a request
body arrives, so a client sending a byte now and then holds a connection for ever).
:class:`RateLimiter` keeps two token buckets per client (requests/s and samples/s); a refused
request is answered 429 with ``Retry-After`` before anything of it is stored.

Example
-------
>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> app.add_middleware(BodySizeLimit, max_bytes=1024)
>>> app.add_middleware(BodyReadTimeout, timeout_s=30.0, min_bytes_per_s=5000.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyReadTimeout", "BodySizeLimit", "RateLimiter", "TokenBucket", "retry_after"]

#: Bytes of an oversize body still read (and discarded) before answering, so the client is
#: not cut off mid-upload and actually sees the 413; beyond this the connection is dropped.
_DRAIN_BYTES = 64 * 1024 * 1024


class _BodyTooLargeError(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware answering HTTP 413 when a request body exceeds ``max_bytes``.

    Parameters
    ----------
    app
        The wrapped ASGI app.
    max_bytes
        Largest accepted body. Bodies announced larger (``Content-Length``) are refused before
        the app runs; streamed bodies are counted as they are read.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._drain(receive, declared)
            await self._reject(send, f"Content-Length {declared}")
            return
        received = 0
        too_large = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # whatever the app answers to the aborted read, the answer is 413
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(_BodyTooLargeError):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not response_started:
            await self._drain(receive, None)
            await self._reject(send, f"at least {received} bytes")

    async def _drain(self, receive: Receive, declared: int | None) -> None:
        if declared is not None and declared > _DRAIN_BYTES:
            return
        read = 0
        while read <= _DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _reject(self, send: Send, size: str) -> None:
        body = json.dumps(
            {
                "detail": f"request body too large ({size}); the limit is {self.max_bytes} "
                "bytes (max_request_bytes): split the upload into smaller requests"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTimeoutError(Exception):
    pass


class BodyReadTimeout:
    """ASGI middleware answering HTTP 408 (and closing the connection) to a slow request body.

    The body must be complete within ``timeout_s`` of the request's start plus one second per
    ``min_bytes_per_s`` bytes received so far: an upload at a usable rate is never cut off,
    however large, while a client trickling bytes to hold connections open (slowloris) is,
    after about ``timeout_s``. Reads after the body (waiting for a disconnect) are not timed.

    Parameters
    ----------
    app
        The wrapped ASGI app.
    timeout_s
        Time allowed for the body before any allowance for bytes received, seconds.
    min_bytes_per_s
        Slowest body rate allowed in the long run, bytes per second.

    Example
    -------
    >>> from fastapi import FastAPI
    >>> FastAPI().add_middleware(BodyReadTimeout, timeout_s=30.0, min_bytes_per_s=5000.0)
    """

    def __init__(self, app: ASGIApp, *, timeout_s: float, min_bytes_per_s: float) -> None:
        if timeout_s <= 0 or min_bytes_per_s <= 0:
            raise ValueError("timeout_s and min_bytes_per_s must be > 0")
        self.app = app
        self.timeout_s = timeout_s
        self.min_bytes_per_s = min_bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        received = 0
        body_done = timed_out = response_started = False

        async def timed_receive() -> Message:
            nonlocal received, body_done, timed_out
            if body_done:
                return await receive()
            deadline = start + self.timeout_s + received / self.min_bytes_per_s
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                timed_out = True
                raise _BodyTimeoutError from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
            else:  # http.disconnect
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out:
                return  # whatever the app answers to the aborted read, the answer is 408
            if message["type"] == "http.response.start":
                response_started = True
                if not body_done:
                    # Answered before its body was read (e.g. a GET with a body): the server
                    # would otherwise keep taking the rest of it, untimed, on this connection.
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"connection", b"close")]}
            await send(message)

        with contextlib.suppress(_BodyTimeoutError):
            await self.app(scope, timed_receive, guarded_send)
        if timed_out and not response_started:
            await _send_json(send, 408, {
                "detail": f"request body too slow: {received} bytes in "
                f"{loop.time() - start:.0f} s; the body must arrive within {self.timeout_s:g} s "
                f"plus 1 s per {self.min_bytes_per_s:g} bytes (body_timeout_s, "
                "body_min_bytes_per_s)"})


async def _send_json(send: Send, status: int, content: dict[str, str]) -> None:
    """A JSON answer that also closes the connection (the rest of the body is not read)."""
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``capacity``.

    A cost larger than the capacity is allowed from a full bucket and leaves it in debt, so
    one big request is slowed, never refused forever.

    Example
    -------
    >>> b = TokenBucket(rate=10.0, capacity=20.0, tokens=20.0, at=0.0)
    >>> b.take(15.0, now=0.0), b.take(15.0, now=0.0), b.take(15.0, now=1.0)
    (0.0, 1.0, 0.0)
    """

    rate: float
    capacity: float
    tokens: float
    at: float

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` can be taken (0 when it can now)."""
        self._refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.tokens >= need else (need - self.tokens) / self.rate

    def take(self, cost: float, *, now: float) -> float:
        """Take ``cost`` and return 0, or take nothing and return the seconds to wait."""
        wait = self.wait_s(cost, now)
        if wait == 0.0:
            self.tokens -= cost
        return wait


class RateLimiter:
    """Per-client token buckets on requests/s and samples/s (``0`` turns a bucket off).

    Parameters
    ----------
    requests_per_s, request_burst
        Sustained request rate and how many requests may come at once.
    samples_per_s, sample_burst
        Sustained sample rate (acc triples count once) and the burst.
    max_clients
        Buckets kept; the least recently used client is forgotten beyond it (it starts again
        with a full bucket, which errs on the side of accepting data).
    clock
        Monotonic seconds (injectable for tests).

    Example
    -------
    >>> limiter = RateLimiter(requests_per_s=1, request_burst=2, samples_per_s=0)
    >>> [limiter.acquire("10.0.0.1", samples=100) for _ in range(3)][:2]
    [None, None]
    >>> limiter.acquire("10.0.0.1", samples=100) > 0
    True
    """

    def __init__(
        self,
        *,
        requests_per_s: float,
        request_burst: float,
        samples_per_s: float,
        sample_burst: float = 0.0,
        max_clients: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(requests_per_s, request_burst, samples_per_s, sample_burst) < 0:
            raise ValueError("rates and bursts must be >= 0")
        self.requests_per_s = requests_per_s
        self.request_burst = max(request_burst, 1.0)
        self.samples_per_s = samples_per_s
        self.sample_burst = max(sample_burst, samples_per_s)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any bucket is on."""
        return self.requests_per_s > 0 or self.samples_per_s > 0

    def acquire(self, client: str, *, samples: int) -> float | None:
        """Charge one request of ``samples`` to ``client``: ``None`` if allowed, else the
        seconds to wait before retrying (nothing is charged then)."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            pair = self._buckets.pop(client, None)  # re-inserted last: LRU order
            if pair is None:
                pair = (
                    TokenBucket(self.requests_per_s, self.request_burst, self.request_burst, now)
                    if self.requests_per_s > 0 else None,
                    TokenBucket(self.samples_per_s, self.sample_burst, self.sample_burst, now)
                    if self.samples_per_s > 0 else None,
                )
            self._buckets[client] = pair
            while len(self._buckets) > self.max_clients:
                del self._buckets[next(iter(self._buckets))]
            requests, sampled = pair
            wait = max(
                requests.wait_s(1.0, now) if requests is not None else 0.0,
                sampled.wait_s(float(samples), now) if sampled is not None else 0.0,
            )
            if wait > 0:
                return wait
            if requests is not None:
                requests.take(1.0, now=now)
            if sampled is not None:
                sampled.take(float(samples), now=now)
            return None


def retry_after(wait_s: float) -> str:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait.

    Example
    -------
    >>> retry_after(0.2), retry_after(3.01)
    ('1', '4')
    """
    return str(max(1, math.ceil(wait_s)))
