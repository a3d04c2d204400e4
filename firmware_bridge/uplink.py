"""Spool → wearemo API: POST batches to ``/v1/ingest``, ack what was accepted, retry the rest.

Contract with the API (``wearemo.api``): request ``{"batches": [SampleBatch, ...]}``, sent as
msgpack with raw little-endian ``float64`` value arrays and ``int64`` timestamps (the compact
form of ``docs/ingest.md``; ``float64`` keeps values bit-exact, so a batch re-sent in either
form is the same batch); an API that answers 415 to msgpack (older than the compact form) gets
JSON from then on. 200 answers
``{"stored", "duplicates", "results": [{"batch_id", "status": "stored" | "duplicate"}]}``;
422 carries FastAPI-style issues whose ``loc`` names the batch (``["body", "batches", i, ...]``);
409 refuses one batch (``detail.batch_id``) and reports which earlier ones were stored.

What happens to a request:

* 2xx — every batch in it is acked (a ``duplicate`` was stored by an earlier attempt whose
  answer was lost: delivery is at-least-once, the batch id makes it exactly-once at the API).
* connection error, timeout, 5xx, 408, 425, 429 — the API is down or busy: the same batches are
  retried with exponential backoff and full jitter (``backoff_initial_s`` doubling up to
  ``backoff_max_s``); nothing is dropped however long it takes.
* 401, 403 — the API key is missing, wrong, revoked, or not granted a batch's subject: the
  batches stay in the spool (never dead-lettered: the data is fine, the credentials are not),
  the uplink backs off, logs an error and reports ``unauthorized`` in ``stats.last_error`` (the
  live status shows it) until a request is accepted again, e.g. after the key is granted the
  subject or replaced with :meth:`Uplink.set_api_key`.
* 404, 405 — the endpoint is wrong, not the batch: logged as an error and retried with backoff
  (never dead-lettered).
* 409, 422, 400, 413 and other 4xx — the API refuses a batch for good: the batch it names
  (``loc`` index or ``detail.batch_id``) is moved to the spool's dead-letter table with the
  status and reason, the others are sent again; when no batch is named, the request is split in
  halves until the offending batch is alone. A batch is never retried forever and never lost
  silently.

Example
-------
>>> import asyncio, tempfile, pathlib
>>> from firmware_bridge.spool import Spool
>>> async def main(tmp):
...     with Spool(pathlib.Path(tmp) / "s.db") as spool:
...         uplink = Uplink(spool, api_url="http://127.0.0.1:9")
...         return await uplink.drain(timeout_s=0.1)   # nothing queued: already drained
>>> with tempfile.TemporaryDirectory() as tmp:
...     asyncio.run(main(tmp))
True
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import msgpack
import numpy as np

from firmware_bridge.spool import Spool
from wearemo.samples import SampleBatch

__all__ = ["Uplink", "UplinkStats"]

logger = logging.getLogger(__name__)

_RETRYABLE = {408, 425, 429}
_UNAUTHORIZED = {401, 403}
_MISCONFIGURED = {404, 405}


@dataclass
class UplinkStats:
    """Counters of one uplink.

    Attributes
    ----------
    requests
        HTTP requests made (including failed attempts).
    retries
        Attempts that failed for a transient reason and were retried.
    stored, duplicates
        Batches acked as newly stored / already stored.
    dead_lettered
        Batches moved to the dead-letter table.
    uploaded_samples
        Samples acked (stored or duplicate) per subject and channel.
    last_error
        Why the latest attempt failed (None once a request succeeds again): the live status's
        "API down" indicator; it starts with ``unauthorized`` when the API refused the key.
    unauthorized
        Attempts refused with HTTP 401 or 403 (their batches stayed spooled).
    """

    requests: int = 0
    retries: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    uploaded_samples: dict[str, dict[str, int]] = field(default_factory=dict)
    last_error: str | None = None
    unauthorized: int = 0

    def _count(self, batch: SampleBatch) -> None:
        per = self.uploaded_samples.setdefault(batch.subject_id, {})
        per[batch.channel.value] = per.get(batch.channel.value, 0) + batch.n_samples


class _TransientError(Exception):
    """The API could not take the request now; retry the same batches later."""


class Uplink:
    """Send spooled batches to the wearemo API.

    Parameters
    ----------
    spool
        Where batches wait; acked batches are removed, refused ones dead-lettered.
    api_url
        Base URL of the API, e.g. ``http://127.0.0.1:8000`` (``/v1/ingest`` is appended).
    max_batches_per_request
        Batches per POST (the API's own limit may be lower: a 422 about the list shrinks it).
    timeout_s
        HTTP timeout per request.
    backoff_initial_s, backoff_max_s
        Retry delay: full jitter over ``min(max, initial · 2^attempt)``.
    idle_poll_s
        How often an empty spool is looked at again.
    headers
        Extra HTTP headers.
    api_key
        The wearemo API key, sent as ``Authorization: Bearer <key>`` (None: no key).
    transport
        Optional httpx transport (tests, proxies); None uses the network.
    form
        Body encoding: ``"msgpack"`` (compact; falls back to JSON for good if the API answers
        415) or ``"json"``.

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
    ...     Uplink(sp, api_url="http://127.0.0.1:8000/").ingest_url
    'http://127.0.0.1:8000/v1/ingest'
    """

    def __init__(
        self,
        spool: Spool,
        *,
        api_url: str,
        max_batches_per_request: int = 64,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        idle_poll_s: float = 0.1,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        form: Literal["msgpack", "json"] = "msgpack",
    ) -> None:
        if max_batches_per_request < 1:
            raise ValueError(f"max_batches_per_request must be >= 1, got {max_batches_per_request}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        self.spool = spool
        self.ingest_url = api_url.rstrip("/") + "/v1/ingest"
        self.max_batches_per_request = max_batches_per_request
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.idle_poll_s = idle_poll_s
        self.headers = dict(headers or {})
        self._api_key = api_key
        self.stats = UplinkStats()
        self._transport = transport
        self.form: Literal["msgpack", "json"] = form
        self._attempt = 0
        self._wake = asyncio.Event()

    def set_api_key(self, api_key: str | None) -> None:
        """Send ``api_key`` from the next request on (e.g. a replaced key), and retry now.

        Example
        -------
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...     Uplink(sp, api_url="http://127.0.0.1:8000").set_api_key("wmo_...")
        """
        self._api_key = api_key
        self._attempt = 0
        self._wake.set()

    def notify(self) -> None:
        """Tell a waiting uplink that new batches were spooled (saves a poll interval)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Send until ``stop`` is set (or forever); never raises for HTTP or network trouble.

        Example
        -------
        >>> import asyncio, tempfile, pathlib
        >>> async def main(tmp):
        ...     with Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...         stop = asyncio.Event(); stop.set()
        ...         await Uplink(sp, api_url="http://127.0.0.1:9").run(stop)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     asyncio.run(main(tmp))
        """
        stop = stop or asyncio.Event()
        async with self._client() as client:
            while not stop.is_set():
                sent = await self._step(client)
                if not sent:
                    await self._idle(stop)

    async def drain(self, *, timeout_s: float) -> bool:
        """Send until the spool is empty or ``timeout_s`` passes; True when empty.

        Example
        -------
        See the module example.
        """
        try:
            async with asyncio.timeout(timeout_s), self._client() as client:
                while self.spool.depth:
                    await self._step(client)
        except TimeoutError:
            pass
        return self.spool.depth == 0

    # -- internals ---------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self.timeout_s, headers=self.headers, transport=self._transport
        )

    async def _idle(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=self.idle_poll_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _step(self, client: httpx.AsyncClient) -> bool:
        """Send one request's worth; back off on transient failure. False when nothing queued."""
        batches = self.spool.peek(self.max_batches_per_request)
        if not batches:
            return False
        try:
            await self._send(client, batches)
            self._attempt = 0
            self.stats.last_error = None
        except _TransientError as why:
            self.stats.retries += 1
            self.stats.last_error = str(why)
            delay = random.uniform(
                0, min(self.backoff_max_s, self.backoff_initial_s * 2**self._attempt)
            )
            self._attempt += 1
            logger.info("uplink: %s; retrying in %.2f s (attempt %d)", why, delay, self._attempt)
            await asyncio.sleep(delay)
        return True

    async def _send(self, client: httpx.AsyncClient, batches: Sequence[SampleBatch]) -> None:
        pending = list(batches)
        while pending:
            content, ctype = _encode(pending, self.form)
            self.stats.requests += 1
            try:
                headers = {"content-type": ctype}
                if self._api_key:
                    headers["Authorization"] = f"Bearer {self._api_key}"
                response = await client.post(self.ingest_url, content=content, headers=headers)
            except httpx.HTTPError as error:  # connection refused, reset, timeout, ...
                raise _TransientError(f"{type(error).__name__}: {error}") from error
            status = response.status_code
            if status == 415 and self.form == "msgpack":
                logger.warning("uplink: %s does not take msgpack (HTTP 415); sending JSON",
                               self.ingest_url)
                self.form = "json"
                continue
            if 200 <= status < 300:
                self._ack(pending, _json(response))
                return
            if status >= 500 or status in _RETRYABLE:
                raise _TransientError(f"HTTP {status}")
            if status in _UNAUTHORIZED:
                self.stats.unauthorized += 1
                detail = _json(response)
                why = detail.get("detail") if isinstance(detail, dict) else None
                logger.error("uplink: HTTP %d from %s: %s (check the API key and its grant; "
                             "the batches stay spooled)", status, self.ingest_url,
                             why or response.text[:300])
                raise _TransientError(f"unauthorized (HTTP {status}: {why or 'refused'})"[:300])
            if status in _MISCONFIGURED:
                logger.error("uplink: HTTP %d from %s: %s (check the API URL / credentials)",
                             status, self.ingest_url, response.text[:300])
                raise _TransientError(f"HTTP {status}")
            pending = self._refused(pending, status, _json(response), response.text)

    def _ack(self, batches: Sequence[SampleBatch], payload: Any) -> None:
        status_of: dict[str, str] = {}
        if isinstance(payload, dict):
            for r in payload.get("results") or []:
                if isinstance(r, dict) and "batch_id" in r:
                    status_of[str(r["batch_id"])] = str(r.get("status", "stored"))
        self._ack_ids(batches, [b.batch_id for b in batches], status_of)

    def _ack_ids(
        self, batches: Sequence[SampleBatch], ids: Sequence[str], status_of: Mapping[str, str]
    ) -> None:
        wanted = set(ids)
        self.spool.ack(list(ids))
        for b in batches:
            if b.batch_id not in wanted:
                continue
            if status_of.get(b.batch_id) == "duplicate":
                self.stats.duplicates += 1
            else:
                self.stats.stored += 1
            self.stats._count(b)

    def _refused(
        self, pending: list[SampleBatch], status: int, payload: Any, text: str
    ) -> list[SampleBatch]:
        """Handle a batch-level 4xx: dead-letter the named batch, return what to send next."""
        detail = payload.get("detail") if isinstance(payload, dict) else None
        # 409: one named batch refused; the ones before it were stored (or duplicates).
        ids = [b.batch_id for b in pending]
        if isinstance(detail, dict) and detail.get("batch_id") in ids:
            bad_id = str(detail["batch_id"])
            stored = [str(x) for x in detail.get("stored_before") or []]
            dups = [str(x) for x in detail.get("duplicates_before") or []]
            status_of = {**{i: "stored" for i in stored}, **{i: "duplicate" for i in dups}}
            self._ack_ids(pending, stored + dups, status_of)
            reason = f"{detail.get('field', '')}: {detail.get('message', text[:300])}"
            self._dead(bad_id, status, reason)
            done = set(stored) | set(dups) | {bad_id}
            return [b for b in pending if b.batch_id not in done]
        # 422: issues whose loc points at batches[i].
        indices: dict[int, str] = {}
        list_issue = False
        if isinstance(detail, list):
            for issue in detail:
                if not isinstance(issue, dict):
                    continue
                loc = issue.get("loc") or []
                if len(loc) >= 3 and loc[:2] == ["body", "batches"] and isinstance(loc[2], int):
                    where = issue.get("field") or ".".join(str(x) for x in loc[1:])
                    indices.setdefault(loc[2], f"{where}: {issue.get('msg', '')}")
                elif loc[:2] == ["body", "batches"]:
                    list_issue = True
        indices = {i: r for i, r in indices.items() if 0 <= i < len(pending)}
        if indices:
            for i, reason in sorted(indices.items()):
                self._dead(pending[i].batch_id, status, reason)
            return [b for i, b in enumerate(pending) if i not in indices]
        if len(pending) > 1:
            if list_issue or status == 413:
                # The request itself is too big: send fewer per request from now on.
                self.max_batches_per_request = max(1, len(pending) // 2)
            logger.warning("uplink: HTTP %d names no batch; splitting %d batches", status,
                           len(pending))
            # Send the first half now; the second half stays spooled for the next step.
            return pending[: len(pending) // 2]
        self._dead(pending[0].batch_id, status, text[:500] or f"HTTP {status}")
        return []

    def _dead(self, batch_id: str, status: int, reason: str) -> None:
        logger.error("uplink: batch %s refused (HTTP %d): %s; moved to dead letters",
                     batch_id, status, reason)
        if self.spool.dead_letter(batch_id, reason=reason, status=status):
            self.stats.dead_lettered += 1


def _encode(batches: Sequence[SampleBatch], form: str) -> tuple[bytes, str]:
    """A request body and its content type (see the module docstring)."""
    if form == "json":
        body = {"batches": [b.model_dump(mode="json") for b in batches]}
        return json.dumps(body).encode(), "application/json"
    out = []
    for b in batches:
        d = b.model_dump(mode="json", exclude={"values", "timestamps_ns"}, exclude_none=True)
        d["values"] = np.ascontiguousarray(b.values_array(), dtype="<f8").tobytes()
        d["values_dtype"] = "float64"
        if b.timestamps_ns is not None:
            d["timestamps_ns"] = np.asarray(b.timestamps_ns, dtype="<i8").tobytes()
        out.append(d)
    return msgpack.packb({"batches": out}), "application/msgpack"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
