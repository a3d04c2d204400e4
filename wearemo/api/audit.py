"""Append-only, hash-chained audit log of who read or changed whose data, and the middleware
that writes one entry per authenticated request.

Each entry records who (``key_id``, ``role``), what (``action``: method and route, or a CLI
command), whose data (``subject_id``; one entry per subject a request touched), when
(``at_ns``), the outcome (the HTTP status, or 0 for a CLI action that succeeded) and a short
``detail``. Entry ``n`` stores ``prev_sha256``, the SHA-256 of entry ``n - 1``, and its own
``sha256`` over all its fields; :meth:`AuditLog.verify` recomputes the chain, so an edited,
inserted or deleted entry is detected. SQLite triggers refuse ``UPDATE`` and ``DELETE`` on
the table, so the log is append-only for every client that does not drop them first; one that
does is caught by the chain. Cutting entries off the end leaves a valid shorter chain: keep
the head hash ``verify`` reports somewhere else to detect that too.

Example
-------
>>> log = AuditLog(":memory:")
>>> _ = log.append(AuditEntry.new("k1", "reader", "GET /v1/subjects/{subject_id}", "s01", 200))
>>> log.verify().ok
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wearemo.store.sqlite import connect_wal

__all__ = ["AuditContext", "AuditEntry", "AuditLog", "AuditMiddleware", "ChainReport"]

log = logging.getLogger(__name__)

_GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at_ns INTEGER NOT NULL,
    key_id TEXT,
    role TEXT,
    action TEXT NOT NULL,
    subject_id TEXT,
    outcome INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    prev_sha256 TEXT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject_id, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record; ``seq``, ``prev_sha256`` and ``sha256`` are set when appended."""

    at_ns: int
    key_id: str | None
    role: str | None
    action: str
    subject_id: str | None
    outcome: int
    detail: str = ""
    seq: int = 0
    prev_sha256: str = ""
    sha256: str = ""

    @classmethod
    def new(cls, key_id: str | None, role: str | None, action: str, subject_id: str | None,
            outcome: int, detail: str = "") -> AuditEntry:
        """An entry stamped now."""
        return cls(time.time_ns(), key_id, role, action, subject_id, outcome, detail)

    def digest(self) -> str:
        """SHA-256 (hex) over every field but ``sha256`` itself, as canonical JSON."""
        fields = [self.seq, self.at_ns, self.key_id, self.role, self.action, self.subject_id,
                  self.outcome, self.detail, self.prev_sha256]
        return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of :meth:`AuditLog.verify`: ``ok``, entries checked, the head hash, and the
    first broken entry with why."""

    ok: bool
    entries: int
    head_sha256: str
    broken_seq: int | None = None
    reason: str | None = None


class AuditLog:
    """The hash-chained audit table (in the key store's SQLite file).

    Parameters
    ----------
    path
        The SQLite file (table created if missing), or ``":memory:"``.

    Example
    -------
    >>> log = AuditLog(":memory:")
    >>> e = log.append(AuditEntry.new(None, None, "cli keys list", None, 0))
    >>> e.seq, e.prev_sha256 == "0" * 64, len(log.entries())
    (1, True, 1)
    """

    def __init__(self, path: str | Path) -> None:
        self._db = connect_wal(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, entry: AuditEntry) -> AuditEntry:
        """Append one entry; returns it with its sequence number and hashes."""
        return self.extend([entry])[0]

    def extend(self, entries: Sequence[AuditEntry]) -> list[AuditEntry]:
        """Append entries in one transaction (chained in order)."""
        out: list[AuditEntry] = []
        with self._lock:
            # IMMEDIATE: another process (the CLI) cannot append between read and insert.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT seq, sha256 FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0], row[1]) if row is not None else (0, _GENESIS)
                for e in entries:
                    seq += 1
                    e = replace(e, seq=seq, prev_sha256=prev, sha256="")
                    e = replace(e, sha256=e.digest())
                    self._db.execute(
                        "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.seq, e.at_ns, e.key_id, e.role, e.action, e.subject_id, e.outcome,
                         e.detail, e.prev_sha256, e.sha256))
                    out.append(e)
                    prev = e.sha256
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def entries(
        self, *, after_seq: int = 0, subject_id: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Entries with ``seq > after_seq`` (optionally of one subject), oldest first."""
        sql = "SELECT * FROM audit WHERE seq > ?"
        args: list[object] = [after_seq]
        if subject_id is not None:
            sql += " AND subject_id = ?"
            args.append(subject_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_entry(r) for r in rows]

    def verify(self) -> ChainReport:
        """Recompute the whole chain; the first entry that does not fit is reported.

        Example
        -------
        >>> AuditLog(":memory:").verify().entries
        0
        """
        prev, n = _GENESIS, 0
        with self._lock:
            cursor = self._db.execute("SELECT * FROM audit ORDER BY seq")
            for row in cursor:
                e = _entry(row)
                n += 1
                why = None
                if e.seq != n:
                    why = f"sequence gap: expected entry {n}, found {e.seq} (entries deleted)"
                elif e.prev_sha256 != prev:
                    why = "prev_sha256 does not match the previous entry (entries changed or " \
                          "removed before it)"
                elif e.digest() != e.sha256:
                    why = "content does not match its sha256 (the entry was changed)"
                if why is not None:
                    cursor.close()
                    return ChainReport(False, n - 1, prev, e.seq, why)
                prev = e.sha256
        return ChainReport(True, n, prev)


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, at_ns, key_id, role, action, subject_id, outcome, detail, prev, sha = row
    return AuditEntry(at_ns=at_ns, key_id=key_id, role=role, action=action,
                      subject_id=subject_id, outcome=outcome, detail=detail, seq=seq,
                      prev_sha256=prev, sha256=sha)


@dataclass(slots=True)
class AuditContext:
    """What a request's dependencies learned, for its audit entries.

    Set by authentication (``key_id``, ``role``) and extended by the subject checks and
    handlers (``subjects``, ``detail``); written by :class:`AuditMiddleware` once the
    response status is known.
    """

    key_id: str | None = None
    role: str | None = None
    subjects: list[str] = field(default_factory=list)
    detail: str = ""

    def touch(self, subject_id: str) -> None:
        """Record that the request concerns ``subject_id`` (once)."""
        if subject_id not in self.subjects:
            self.subjects.append(subject_id)


#: Key of the :class:`AuditContext` in the request state.
STATE_KEY = "audit"


class AuditMiddleware:
    """ASGI middleware: one audit entry per subject for every request that went through
    authentication (a request to a public route has no context and is not recorded).

    Entries are written when the response starts (its status is the outcome) and *before*
    any of it reaches the client: no subject data leaves without its audit entry. If the log
    cannot be written, the client gets HTTP 503 instead of the response. The
    :class:`AuditLog` is found in the lifespan state (``resources.audit``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = False

        async def audited_send(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start":
                refused = not await self._record(scope, int(message["status"]))
                if refused:
                    await _unavailable(send)
                    return
            if not refused:
                await send(message)

        await self.app(scope, receive, audited_send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A live stream reads subject data too: audited when it is accepted (101) or refused
        # (the denial's HTTP status, or 403 for a bare close), before any state is sent.
        decided = False
        blocked = False  # accepted but not audited: the stream is closed instead

        async def audited_send(message: Message) -> None:
            nonlocal decided, blocked
            if blocked:
                return
            if not decided:
                kind = message["type"]
                status = {"websocket.accept": 101, "websocket.close": 403}.get(kind)
                if kind == "websocket.http.response.start":
                    status = int(message["status"])
                if status is not None:
                    decided = True
                    if not await self._record(scope, status) and kind == "websocket.accept":
                        blocked = True
                        await send({"type": "websocket.close", "code": 1011,
                                    "reason": "the audit log cannot be written"})
                        return
            await send(message)

        await self.app(scope, receive, audited_send)

    @staticmethod
    async def _record(scope: Scope, status: int) -> bool:
        state = scope.get("state") or {}
        ctx = state.get(STATE_KEY)
        resources = state.get("resources")
        if not isinstance(ctx, AuditContext) or resources is None:
            return True
        route = scope.get("route")
        method = scope.get("method", "WS" if scope["type"] == "websocket" else "")
        action = f"{method} {getattr(route, 'path', scope.get('path', ''))}"
        subjects: list[str | None] = list(ctx.subjects) or [None]
        entries = [AuditEntry.new(ctx.key_id, ctx.role, action, s, status, ctx.detail)
                   for s in subjects]
        try:
            await run_in_threadpool(resources.audit.extend, entries)
        except Exception:
            log.exception("audit: could not record %s; answering 503", action)
            return False
        return True


async def _unavailable(send: Send) -> None:
    body = json.dumps({"detail": "the audit log cannot be written; the request was not "
                       "answered (try again later)"}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
