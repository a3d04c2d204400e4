"""Signed webhook deliveries from the durable outbox, retried with backoff and jitter.

Each delivery is a ``POST`` of the event's JSON body with the headers

* ``Wearemo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``
* ``Wearemo-Event`` (``alert.fired`` / ``alert.resolved``), ``Wearemo-Delivery`` (the
  delivery id: the same on every retry, so a receiver can drop repeats).

A 2xx answer delivers it. Timeouts (one deadline for the whole attempt), connection and name
resolution errors, 5xx, 408 and 429 are retried after ``min(cap, base * 2**(attempt-1))``
seconds times a random factor in [0.5, 1] (jitter spreads retries after an outage), up to
``max_attempts``; any other answer (e.g. 401 for a bad signature, or a redirect, which is not
followed) fails the delivery at once, and so does a destination the policy refuses
(:mod:`wearemo.alerts.destinations`). Deliveries are sent from the event loop with
:class:`httpx.AsyncClient`, never from an ingest thread, at most ``per_destination`` at once to
one host, and at most ``max_response_bytes`` of each answer is read.

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
import socket
import ssl
import time
from collections.abc import Callable

import httpx

from wearemo.alerts.db import AlertDB, Attempt, Delivery
from wearemo.alerts.destinations import (
    DestinationRefusedError,
    Resolver,
    WebhookAllowList,
    pin_destination,
    system_resolve,
)

__all__ = ["REFUSED", "Dispatcher", "RetryPolicy", "signature_header", "verify_signature"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_RETRY_STATUS = frozenset({408, 429})
#: The error recorded for a delivery whose destination the policy refuses.
REFUSED = "destination not allowed (not a public address; see WEAREMO_WEBHOOK_ALLOW)"


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

    Every attempt resolves the URL's host once, checks each address against the destination
    policy (:func:`~wearemo.alerts.destinations.pin_destination`) and connects to the checked
    address, keeping the name in ``Host`` and TLS SNI. A refused destination is never
    contacted and its delivery fails at once with ``destination not allowed``, so the history
    says nothing about internal hosts or ports.

    Parameters
    ----------
    db
        The outbox.
    policy
        Retry timing and cap.
    timeout_s
        Deadline of one attempt: resolving, connecting, sending and reading the answer
        together (a receiver trickling its answer cannot hold a slot for longer).
    concurrency
        Attempts in flight at once, all destinations together.
    per_destination
        Attempts in flight at once to one destination (host): a slow receiver holds at most
        this many slots; due deliveries to other hosts go first.
    max_response_bytes
        Most bytes of an answer's body read; then the connection is dropped.
    allow
        Intranet receivers allowed besides public addresses (``WEAREMO_WEBHOOK_ALLOW``).
    resolve
        Host name resolver (the system's, asynchronously).
    verify
        TLS verification: ``True`` (system / certifi trust store) or an ``ssl.SSLContext``
        (e.g. an intranet CA).
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
        concurrency: int = 32,
        per_destination: int = 2,
        max_response_bytes: int = 64 * 1024,
        allow: WebhookAllowList | None = None,
        resolve: Resolver = system_resolve,
        verify: ssl.SSLContext | bool = True,
        poll_s: float = 1.0,
        on_outcome: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.db = db
        self.policy = policy
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.per_destination = per_destination
        self.max_response_bytes = max_response_bytes
        self.allow = allow if allow is not None else WebhookAllowList()
        self.resolve = resolve
        self.verify = verify
        self.poll_s = poll_s
        self.on_outcome = on_outcome
        self._in_flight: dict[str, tuple[asyncio.Task[None], str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None

    def wake(self) -> None:
        """Look at the outbox now (callable from any thread)."""
        if self._loop is not None and self._wakeup is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wakeup.set)

    def in_flight(self) -> dict[str, int]:
        """Attempts in flight per destination (host)."""
        busy: dict[str, int] = {}
        for _, dest in self._in_flight.values():
            busy[dest] = busy.get(dest, 0) + 1
        return busy

    async def run(self) -> None:
        """Deliver until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        # No kept-alive connections: each attempt connects to the address it checked (a pooled
        # connection could carry one host's request over another host's TLS session). An
        # explicit transport also keeps proxy variables out: the checked address is the peer.
        transport = httpx.AsyncHTTPTransport(
            verify=self.verify,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
        async with httpx.AsyncClient(transport=transport, timeout=self.timeout_s,
                                     follow_redirects=False,
                                     headers={"User-Agent": "wearemo-webhooks"}) as client:
            try:
                while True:
                    try:
                        await self._tick(client)
                    except Exception:  # e.g. the disk is full: keep the outbox, try again
                        log.exception("webhook dispatcher: outbox unavailable")
                        await asyncio.sleep(self.poll_s)
            finally:
                tasks = [task for task, _ in self._in_flight.values()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _tick(self, client: httpx.AsyncClient) -> None:
        assert self._wakeup is not None
        self._wakeup.clear()  # before looking: a slot freed from now on wakes the wait below
        free = self.concurrency - len(self._in_flight)
        if free > 0:
            due = await asyncio.to_thread(
                self.db.due, time.time_ns(), limit=free, exclude=list(self._in_flight),
                busy=self.in_flight(), per_destination=self.per_destination)
            for d in due:
                task = asyncio.create_task(self._send(client, d))
                self._in_flight[d.id] = (task, d.dest)
                task.add_done_callback(self._done)
        if len(self._in_flight) >= self.concurrency:
            sleep = self.poll_s  # every slot taken: a finished attempt wakes us
        else:
            full = [dest for dest, n in self.in_flight().items() if n >= self.per_destination]
            nxt = await asyncio.to_thread(self.db.next_due_ns, exclude=list(self._in_flight),
                                          exclude_dests=full)
            sleep = self.poll_s if nxt is None else (nxt - time.time_ns()) / _NS
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives as the event is set (an attempt finishing), and the dispatcher then outlived
        # the app's shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(max(sleep, 0.01), self.poll_s)):
                await self._wakeup.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        for key, (t, _) in list(self._in_flight.items()):
            if t is task:
                del self._in_flight[key]
        if self._wakeup is not None:
            self._wakeup.set()  # a slot is free

    async def _post(self, client: httpx.AsyncClient, d: Delivery, headers: dict[str, str]) -> int:
        """One POST to the checked address; reads at most ``max_response_bytes`` of the answer
        and returns its status code."""
        target = await pin_destination(d.url, self.allow, resolve=self.resolve)
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
        async with client.stream("POST", target.url, content=d.body,
                                 headers={**headers, "Host": target.host_header},
                                 extensions=extensions) as response:
            read = 0
            if self.max_response_bytes > 0:
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= self.max_response_bytes:
                        break  # leaving the block closes the connection: the rest is not read
            return response.status_code

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
                async with asyncio.timeout(self.timeout_s):
                    code = await self._post(client, d, headers)
                if not 200 <= code < 300:
                    error = f"HTTP {code}"
                    retry = code >= 500 or code in _RETRY_STATUS
            except DestinationRefusedError as exc:
                # Nothing was sent; the history gets no detail (addresses, reachability).
                log.warning("webhook delivery %s: %s", d.id, exc)
                error, retry = REFUSED, False
            except (TimeoutError, httpx.TimeoutException) as exc:
                error = (f"timeout after {self.timeout_s:g} s (no complete answer within the "
                         f"attempt's deadline; {type(exc).__name__})")
            except socket.gaierror as exc:
                error = f"name resolution failed: {exc.strerror or exc}"[:500]
            except (httpx.HTTPError, OSError) as exc:
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
