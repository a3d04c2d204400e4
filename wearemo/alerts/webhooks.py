"""Signed webhook deliveries from the durable outbox, retried with backoff and jitter.

Each delivery is a ``POST`` of the event's JSON body with the headers

* ``Wearemo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
* ``Wearemo-Event`` (``alert.fired`` / ``alert.resolved``), ``Wearemo-Delivery`` (the
  delivery id: the same on every retry, so a receiver can drop repeats).

A 2xx answer delivers it. Timeouts, connection errors, 5xx, 408 and 429 are retried after
``min(cap, base * 2**(attempt-1))`` seconds times a random factor in [0.5, 1] (jitter spreads
retries after an outage), up to ``max_attempts``; any other answer (e.g. 401 for a bad
signature, or a redirect, which is not followed) fails the delivery at once. Deliveries are
sent from the event loop with :class:`httpx.AsyncClient`, never from an ingest thread.

Example
-------
>>> header = signature_header(b"secret-key-0123456789", b'{"a":1}', timestamp=1700000000)
>>> verify_signature(b"secret-key-0123456789", b'{"a":1}', header, now=1700000010)
True
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable

import httpx

from wearemo.alerts.db import AlertDB, Attempt, Delivery

__all__ = ["Dispatcher", "RetryPolicy", "signature_header", "verify_signature"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_RETRY_STATUS = frozenset({408, 429})


def signature_header(secret: bytes, body: bytes, *, timestamp: int) -> str:
    """The ``Wearemo-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds).

    Example
    -------
    >>> signature_header(b"k" * 16, b"{}", timestamp=1)[:14]
    't=1,v1=f176998'
    """
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: bytes, body: bytes, header: str, *, now: float | None = None, tolerance_s: int = 300
) -> bool:
    """Check a ``Wearemo-Signature`` header (what a receiver does), in constant time.

    ``tolerance_s`` bounds the age of the timestamp, so a captured request cannot be replayed
    later.

    Example
    -------
    >>> verify_signature(b"k" * 16, b"{}", "t=1,v1=00", now=1)
    False
    """
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = signature_header(secret, body, timestamp=timestamp).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class RetryPolicy:
    """When to retry a failed delivery.

    Parameters
    ----------
    base_s, cap_s
        The first retry waits about ``base_s``; each next one twice as long, at most ``cap_s``.
    max_attempts
        Attempts in all (the first try included) before the delivery is given up.
    rng
        Source of the jitter factor (``random.random``; injectable for reproducible runs).

    Example
    -------
    >>> policy = RetryPolicy(base_s=1, cap_s=60, max_attempts=5, rng=lambda: 1.0)
    >>> [policy.delay_s(n) for n in (1, 2, 3, 7)]
    [1.0, 2.0, 4.0, 60.0]
    """

    def __init__(
        self, *, base_s: float, cap_s: float, max_attempts: int,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.max_attempts = max_attempts
        self._rng = rng

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        raw = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        return raw * (0.5 + 0.5 * self._rng())


class Dispatcher:
    """Sends due deliveries from an :class:`~wearemo.alerts.db.AlertDB` outbox.

    Run :meth:`run` as a task on the app's event loop; :meth:`wake` (thread-safe) makes it look
    at the outbox at once instead of at its next poll.

    Parameters
    ----------
    db
        The outbox.
    policy
        Retry timing and cap.
    timeout_s
        Per-attempt timeout (connect, write and read together).
    concurrency
        Deliveries in flight at once (a slow receiver does not hold up the others).
    poll_s
        Longest sleep between looks at the outbox.
    on_outcome
        Called with ``"delivered"``, ``"retry"`` or ``"failed"`` after each attempt (metrics).
    """

    def __init__(
        self,
        db: AlertDB,
        *,
        policy: RetryPolicy,
        timeout_s: float = 10.0,
        concurrency: int = 8,
        poll_s: float = 1.0,
        on_outcome: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.on_outcome = on_outcome
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    def wake(self) -> None:
        """Look at the outbox now (callable from any thread)."""
        if self._loop is not None and self._wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        """Deliver until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False,
                                     headers={"User-Agent": "wearemo-webhooks"}) as client:
            try:
                while True:
                    try:
                        await self._tick(client)
                    except Exception:  # e.g. the disk is full: keep the outbox, try again
                        log.exception("webhook dispatcher: outbox unavailable")
                        await asyncio.sleep(self.poll_s)
            finally:
                for task in self._in_flight.values():
                    task.cancel()
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _tick(self, client: httpx.AsyncClient) -> None:
        free = self.concurrency - len(self._in_flight)
        if free > 0:
            due = await asyncio.to_thread(self.db.due, time.time_ns(), limit=free,
                                          exclude=list(self._in_flight))
            for d in due:
                task = asyncio.create_task(self._send(client, d))
                self._in_flight[d.id] = task
                task.add_done_callback(self._done)
        nxt = await asyncio.to_thread(self.db.next_due_ns)
        sleep = self.poll_s if nxt is None else (nxt - time.time_ns()) / _NS
        assert self._wakeup is not None
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=min(max(sleep, 0.01), self.poll_s))

    def _done(self, task: asyncio.Task[None]) -> None:
        for key, t in list(self._in_flight.items()):
            if t is task:
                del self._in_flight[key]
        if self._wakeup is not None:
            self._wakeup.set()  # a slot is free

    async def _send(self, client: httpx.AsyncClient, d: Delivery) -> None:
        attempt = d.attempts + 1
        secret = await asyncio.to_thread(self.db.secret, d.rule_id)
        started = time.time_ns()
        code: int | None = None
        error: str | None = None
        retry = True
        if secret is None:
            error, retry = "rule deleted", False
        else:
            headers = {
                "Content-Type": "application/json",
                "Wearemo-Event": d.event,
                "Wearemo-Delivery": d.id,
                "Wearemo-Signature": signature_header(secret.encode(), d.body,
                                                      timestamp=started // _NS),
            }
            try:
                response = await client.post(d.url, content=d.body, headers=headers)
                code = response.status_code
                if not 200 <= code < 300:
                    error = f"HTTP {code}"
                    retry = code >= 500 or code in _RETRY_STATUS
            except httpx.TimeoutException as exc:
                error = f"timeout after {self.timeout_s:g} s ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        now = time.time_ns()
        if error is None:
            outcome, nxt = "delivered", None
        elif retry and attempt < self.policy.max_attempts:
            outcome, nxt = "retry", now + int(self.policy.delay_s(attempt) * _NS)
        else:
            outcome, nxt = "failed", None
        record = Attempt(attempt, started, (now - started) / 1e6, code, error, nxt)
        status = "pending" if outcome == "retry" else outcome
        await asyncio.to_thread(self.db.record_attempt, d.id, record, status=status,  # type: ignore[arg-type]
                                now_ns=now)
        self.on_outcome(outcome)
        if error is not None:
            log.warning("webhook delivery %s attempt %d: %s (%s)", d.id, attempt, error, outcome)
