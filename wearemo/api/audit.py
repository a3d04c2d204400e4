"""Append-only audit log of who read or changed whose data, chained with HMAC-SHA256 under a
key kept outside the database, and the middleware that writes it.

Each entry records who (``key_id``, ``role``, and the ``client`` address), what (``action``:
method and route, or a CLI command), whose data (``subject_id``; one entry per subject a
request touched), when (``at_ns``), the outcome (the HTTP status, or 0 for a CLI action that
succeeded), a short ``detail`` and how many requests it stands for (``count``).

**Chain.** Entry ``n`` stores ``prev_sha256``, the chain value of entry ``n - 1``, and its own
``sha256``: HMAC-SHA256 over all its fields under the audit key (``WEAREMO_AUDIT_KEY`` or
``data_dir/audit.key``, see :func:`wearemo.api.auth.load_audit_key`). Someone who can write the
database but does not hold the key cannot delete, edit or insert entries and recompute a
chain that :meth:`AuditLog.verify` accepts. SQLite triggers refuse ``UPDATE`` and ``DELETE``.
Cutting entries off the end still leaves a valid shorter chain: keep the head ``verify``
reports elsewhere to detect that too.

**Older logs.** Entries written before the chain was keyed (``keyed`` false) carry a plain
SHA-256 chain. They are kept as they were; the first keyed entry (``audit chain keyed``) takes
their head as its ``prev_sha256`` and so seals them: rewriting them changes that head.
:func:`open_audit_log` seals such a log when it generates the key (the first start after the
upgrade); with a key set in the environment ``wearemo audit migrate`` does it. Unkeyed entries
after a keyed one, or a log with a key but no keyed entry, fail verification.

**Refusals.** Refused requests (no or bad key, a scope the key lacks, a subject outside its
grant) are not written one by one: the first of each kind (outcome, reason, key, client,
route, and for a valid key the subject) in an interval (``audit_refusal_interval_s``) is
written at once, the rest of the interval as one entry with their ``count``; past
``audit_refusal_buckets`` kinds per interval all share one entry. An unauthenticated flood
therefore adds a bounded number of entries per interval. Accepted requests are written one
by one.

**Hostile text.** Every text field is escaped (control and format characters, line
separators and the backslash become ``\\xNN``/``\\uNNNN``/``\\\\``) and truncated:
``key_id``, ``role``, ``subject_id`` and ``client`` to :data:`MAX_ID_CHARS` characters,
``action`` to :data:`MAX_ACTION_CHARS`, ``detail`` to :data:`MAX_DETAIL_CHARS`, followed by
``…(+N more characters)`` when cut.

Example
-------
>>> log = AuditLog(":memory:", key=b"an audit key kept elsewhere......")
>>> _ = log.append(AuditEntry.new("k1", "reader", "GET /v1/subjects/{subject_id}", "s01", 200))
>>> log.verify().ok
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wearemo.api.auth import AUDIT_KEY_FILE, load_audit_key
from wearemo.settings import Settings
from wearemo.store.sqlite import connect_wal

__all__ = [
    "MAX_ACTION_CHARS",
    "MAX_DETAIL_CHARS",
    "MAX_ID_CHARS",
    "AuditContext",
    "AuditEntry",
    "AuditKeyError",
    "AuditLog",
    "AuditMiddleware",
    "ChainReport",
    "escape_field",
    "open_audit_log",
]

log = logging.getLogger(__name__)

_GENESIS = "0" * 64
#: Longest ``key_id``, ``role``, ``subject_id`` and ``client`` kept (a valid subject id has
#: at most 128 characters, so only invalid ones are ever cut).
MAX_ID_CHARS = 128
#: Longest ``action`` kept (method and route template, or a CLI command).
MAX_ACTION_CHARS = 256
#: Longest ``detail`` kept.
MAX_DETAIL_CHARS = 1000
#: Action of the entry that seals the unkeyed entries of an older log.
SEAL_ACTION = "audit chain keyed"

_COLUMNS = ("seq", "at_ns", "key_id", "role", "action", "subject_id", "outcome", "detail",
            "prev_sha256", "sha256", "client", "count", "keyed")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM audit"

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
#: Columns added since the first release; a table of that release gets them when opened.
_ADDED_COLUMNS = {
    "client": "client TEXT",
    "count": "count INTEGER NOT NULL DEFAULT 1",
    "keyed": "keyed INTEGER NOT NULL DEFAULT 0",
}
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape_char(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if unicodedata.category(ch) not in _ESCAPED:
        return ch
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def escape_field(value: str | None, limit: int) -> str | None:
    """``value`` with control and format characters escaped, cut to ``limit`` characters.

    Control (``Cc``), format (``Cf``: e.g. bidi overrides), surrogate, line and paragraph
    separator characters become ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``; the backslash
    becomes ``\\\\``, so an escaped value cannot pose as another. The work is bounded by
    ``limit``: a 40,000-character value is not read past its first ``limit`` characters.

    Example
    -------
    >>> escape_field("s01", 128)
    's01'
    >>> print(escape_field("a\\x00b\\u202ec" + "x" * 50, 12))
    a\\x00b\\u202e…(+51 more characters)
    """
    if value is None:
        return None
    if len(value) <= limit and value.isprintable() and "\\" not in value:
        return value
    out: list[str] = []
    used = 0
    for i, ch in enumerate(value):
        piece = _escape_char(ch)
        if used + len(piece) > limit:
            return "".join(out) + f"…(+{len(value) - i} more characters)"
        out.append(piece)
        used += len(piece)
    return "".join(out)


class AuditKeyError(ValueError):
    """The audit key is missing, wrong, or the log must be migrated to the keyed chain first;
    the message says what to do."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record; ``seq``, ``prev_sha256``, ``sha256`` and ``keyed`` are set when
    appended."""

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
    client: str | None = None
    count: int = 1
    keyed: bool = False

    @classmethod
    def new(cls, key_id: str | None, role: str | None, action: str, subject_id: str | None,
            outcome: int, detail: str = "", *, client: str | None = None,
            count: int = 1) -> AuditEntry:
        """An entry stamped now."""
        return cls(time.time_ns(), key_id, role, action, subject_id, outcome, detail,
                   client=client, count=count)

    def digest(self) -> str:
        """The unkeyed chain value of entries written before the chain was keyed: SHA-256
        (hex) over the first release's fields, as canonical JSON."""
        fields = [self.seq, self.at_ns, self.key_id, self.role, self.action, self.subject_id,
                  self.outcome, self.detail, self.prev_sha256]
        return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()

    def mac(self, key: bytes) -> str:
        """The keyed chain value: HMAC-SHA256 (hex) under ``key`` over every field but
        ``sha256`` and ``keyed``, as canonical JSON."""
        fields = ["wearemo-audit-v2", self.seq, self.at_ns, self.key_id, self.role, self.action,
                  self.subject_id, self.outcome, self.detail, self.client, self.count,
                  self.prev_sha256]
        payload = json.dumps(fields, separators=(",", ":")).encode()
        return hmac.new(key, payload, hashlib.sha256).hexdigest()

    def escaped(self) -> AuditEntry:
        """This entry with every text field escaped and truncated (see the module notes)."""
        return replace(
            self,
            key_id=escape_field(self.key_id, MAX_ID_CHARS),
            role=escape_field(self.role, MAX_ID_CHARS),
            action=escape_field(self.action, MAX_ACTION_CHARS) or "",
            subject_id=escape_field(self.subject_id, MAX_ID_CHARS),
            detail=escape_field(self.detail, MAX_DETAIL_CHARS) or "",
            client=escape_field(self.client, MAX_ID_CHARS),
        )


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of :meth:`AuditLog.verify`: ``ok``, entries checked, the head value, the first
    broken entry with why, where the keyed chain starts, and ``unkeyed`` (no entry is keyed:
    only the plain SHA-256 chain could be checked)."""

    ok: bool
    entries: int
    head_sha256: str
    broken_seq: int | None = None
    reason: str | None = None
    keyed_from_seq: int | None = None
    unkeyed: bool = False


@dataclass(slots=True)
class _Tally:
    """Refusals of one kind in the current interval: the first (written) and how many more."""

    first: AuditEntry
    more: int
    last_ns: int


_OVERFLOW = ("*",)


class AuditLog:
    """The keyed, chained audit table (in the key store's SQLite file).

    Parameters
    ----------
    path
        The SQLite file (table created, or given the columns added since, if needed), or
        ``":memory:"``.
    key
        The HMAC key of the chain. Without it the log can be read, not appended to or
        verified past its unkeyed entries. Services open it with :func:`open_audit_log`.
    refusal_interval_s, refusal_buckets
        How refused requests are aggregated (see the module notes).

    Example
    -------
    >>> log = AuditLog(":memory:", key=b"k" * 32)
    >>> e = log.append(AuditEntry.new(None, None, "cli keys list", None, 0))
    >>> e.seq, e.prev_sha256 == "0" * 64, e.keyed, len(log.entries())
    (1, True, True, 1)
    """

    def __init__(self, path: str | Path, *, key: bytes | None = None,
                 refusal_interval_s: float = 60.0, refusal_buckets: int = 100) -> None:
        self._db = connect_wal(path)
        self._lock = threading.Lock()
        self._key = key
        self._interval_ns = max(1, round(refusal_interval_s * 1e9))
        self._origin_ns = time.time_ns()  # intervals count from here
        self._buckets = refusal_buckets
        self._refusal_lock = threading.Lock()
        self._tallies: dict[tuple[Any, ...], _Tally] = {}
        self._window: int | None = None
        #: The sealing entry, when :func:`open_audit_log` sealed an older log.
        self.sealed: AuditEntry | None = None
        with self._lock:
            self._db.executescript(_SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(audit)")}
            for name, ddl in _ADDED_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE audit ADD COLUMN {ddl}")

    def close(self) -> None:
        """Write the pending refusal counts, then close the database."""
        try:
            if self._key is not None:
                self.flush_refusals(force=True)
        except Exception:
            log.exception("audit: could not write the pending refusal counts")
        with self._lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def append(self, entry: AuditEntry) -> AuditEntry:
        """Append one entry; returns it (escaped) with its sequence number and chain values."""
        return self.extend([entry])[0]

    def extend(self, entries: Sequence[AuditEntry]) -> list[AuditEntry]:
        """Append entries in one transaction (escaped, then chained in order)."""
        return self._append([e.escaped() for e in entries])

    def _append(self, entries: Sequence[AuditEntry], *, seal: bool = False) -> list[AuditEntry]:
        key = self._key
        if key is None:
            raise AuditKeyError("the audit log was opened without its key: it can be read, "
                                "not appended to")
        out: list[AuditEntry] = []
        with self._lock:
            # IMMEDIATE: another process (the CLI) cannot append between read and insert.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT seq, sha256, keyed FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0], row[1]) if row is not None else (0, _GENESIS)
                if row is not None and not row[2] and not seal:
                    raise AuditKeyError(
                        "the audit log holds unkeyed entries that were never sealed: open it "
                        "with open_audit_log() or run `wearemo audit migrate`")
                for e in entries:
                    seq += 1
                    e = replace(e, seq=seq, prev_sha256=prev, sha256="", keyed=True)
                    e = replace(e, sha256=e.mac(key))
                    self._db.execute(
                        f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(_COLUMNS))})",
                        (e.seq, e.at_ns, e.key_id, e.role, e.action, e.subject_id, e.outcome,
                         e.detail, e.prev_sha256, e.sha256, e.client, e.count, 1))
                    out.append(e)
                    prev = e.sha256
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def record(self, ctx: AuditContext, action: str, outcome: int, *,
               client: str | None = None) -> None:
        """Audit one request from what its :class:`AuditContext` gathered: one entry per
        subject when it was accepted, through :meth:`refuse` when access control refused it.
        """
        subjects: list[str | None] = list(ctx.subjects) or [None]
        if ctx.refusal is None:
            self.extend([AuditEntry.new(ctx.key_id, ctx.role, action, s, outcome, ctx.detail,
                                        client=client) for s in subjects])
            return
        for s in subjects:
            self.refuse(AuditEntry.new(ctx.key_id, ctx.role, action, s, outcome, ctx.refusal),
                        client=client)

    def refuse(self, entry: AuditEntry, *, client: str | None) -> None:
        """Audit a refused request, aggregated: the first of its kind (outcome, reason in
        ``detail``, key, client, action; and the subject when the key is valid: who tried to
        reach whose data stays on record) in the current interval is written now, the others
        are counted and written as one entry when the interval ends (:meth:`flush_refusals`).
        Without a valid key the subject (the caller's choice) is not part of the kind: the
        first is written, the count names none.

        Example
        -------
        >>> log = AuditLog(":memory:", key=b"k" * 32)
        >>> for _ in range(1000):
        ...     log.refuse(AuditEntry.new(None, None, "GET /v1/subjects", None, 401,
        ...                               "missing API key"), client="10.0.0.1")
        >>> len(log.entries()), log.flush_refusals(force=True)
        (1, 1)
        >>> [e.count for e in log.entries()]
        [1, 999]
        """
        e = replace(entry, client=client, count=1).escaped()
        window = (e.at_ns - self._origin_ns) // self._interval_ns
        with self._refusal_lock:
            writes = self._close_window(window)
            kind: tuple[Any, ...] = (e.outcome, e.detail, e.key_id, e.role, e.client, e.action,
                                     e.subject_id if e.key_id is not None else None)
            tally = self._tallies.get(kind)
            if tally is None and len(self._tallies) >= self._buckets:
                kind, tally = _OVERFLOW, self._tallies.get(_OVERFLOW)
                e = AuditEntry(e.at_ns, None, None, "*", None, e.outcome,
                               "refused requests of more kinds (reason, key, client, route) "
                               "than audit_refusal_buckets in this interval", client="*")
            if tally is None:
                self._tallies[kind] = _Tally(e, 0, e.at_ns)
                writes.append(e)
            else:
                tally.more += 1
                tally.last_ns = e.at_ns
            if writes:
                self._append(writes)

    def _close_window(self, window: int | None) -> list[AuditEntry]:
        """Entries counting the refusals of an interval that ended (refusal lock held)."""
        if self._window == window:
            return []
        out = [replace(t.first, at_ns=t.last_ns, count=t.more,
                       subject_id=t.first.subject_id if t.first.key_id is not None else None,
                       detail=f"{t.first.detail} (repeated)")
               for t in self._tallies.values() if t.more]
        self._tallies.clear()
        self._window = window
        return out

    def flush_refusals(self, *, force: bool = False) -> int:
        """Write the counts of refusals whose interval ended (all of them with ``force``);
        returns how many entries were written. The API calls it every interval and at
        shutdown."""
        with self._refusal_lock:
            window = None if force else (time.time_ns() - self._origin_ns) // self._interval_ns
            writes = self._close_window(window)
            if writes:
                self._append(writes)
        return len(writes)

    # -- reading ---------------------------------------------------------------------------

    def entries(
        self, *, after_seq: int = 0, subject_id: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Entries with ``seq > after_seq`` (optionally of one subject), oldest first."""
        sql = f"{_SELECT} WHERE seq > ?"
        args: list[object] = [after_seq]
        if subject_id is not None:
            sql += " AND subject_id = ?"
            args.append(subject_id)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_entry(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        """(entries, keyed entries)."""
        with self._lock:
            n, keyed = self._db.execute("SELECT COUNT(*), COALESCE(SUM(keyed), 0) FROM audit"
                                        ).fetchone()
        return int(n), int(keyed)

    def _last(self) -> AuditEntry | None:
        with self._lock:
            row = self._db.execute(f"{_SELECT} ORDER BY seq DESC LIMIT 1").fetchone()
        return _entry(row) if row is not None else None

    def verify(self) -> ChainReport:
        """Recompute the whole chain; the first entry that does not fit is reported.

        Keyed entries are checked with the key (:class:`AuditKeyError` if the log was opened
        without it); unkeyed ones only before the first keyed entry. With a key, a log that
        has entries but no keyed one fails: it was never sealed, or it was rewritten.

        Example
        -------
        >>> AuditLog(":memory:", key=b"k" * 32).verify().entries
        0
        """
        return self._verify(self._key)

    def _verify(self, key: bytes | None) -> ChainReport:
        prev, n, keyed_from = _GENESIS, 0, None
        with self._lock:
            cursor = self._db.execute(f"{_SELECT} ORDER BY seq")
            try:
                for row in cursor:
                    e = _entry(row)
                    n += 1
                    why = None
                    if e.seq != n:
                        why = f"sequence gap: expected entry {n}, found {e.seq} (entries deleted)"
                    elif e.prev_sha256 != prev:
                        why = ("prev_sha256 does not match the previous entry (entries changed "
                               "or removed before it)")
                    elif e.keyed:
                        if key is None:
                            raise AuditKeyError("the audit log has keyed entries: verifying "
                                                "it needs the audit key")
                        keyed_from = keyed_from or e.seq
                        if not hmac.compare_digest(e.mac(key), e.sha256):
                            why = ("content does not match its HMAC: the entry was changed, or "
                                   "the chain was recomputed without the audit key (entries "
                                   "deleted or inserted), or the key is not the log's")
                    elif keyed_from is not None:
                        why = ("an unkeyed entry after keyed ones: the chain was rewritten "
                               "(only entries older than the keyed chain may be unkeyed)")
                    elif e.digest() != e.sha256:
                        why = "content does not match its sha256 (the entry was changed)"
                    if why is not None:
                        return ChainReport(False, n - 1, prev, e.seq, why, keyed_from)
                    prev = e.sha256
            finally:
                cursor.close()
        if n and keyed_from is None and key is not None:
            return ChainReport(
                False, 0, _GENESIS, 1,
                f"none of the {n} entries is keyed: in the old unkeyed format, which anyone "
                "can recompute. The log was either never sealed under the key (`wearemo audit "
                "migrate`) or rewritten", unkeyed=True)
        return ChainReport(True, n, prev, keyed_from_seq=keyed_from,
                           unkeyed=bool(n) and keyed_from is None)

    def seal_legacy(self, *, accept_broken: bool = False) -> AuditEntry | None:
        """Seal the unkeyed entries of an older log under the key: append the first keyed
        entry, whose ``prev_sha256`` is their head. Nothing to do (None) if the log is empty
        or already keyed.

        Raises
        ------
        AuditKeyError
            Their unkeyed chain is broken (unless ``accept_broken``: the seal then records
            where, and ``verify`` keeps failing there).
        """
        n, keyed = self.counts()
        if n == 0 or keyed:
            return None
        report = self._verify(None)
        if not report.ok and not accept_broken:
            raise AuditKeyError(
                f"the audit log predates the keyed chain and its unkeyed chain is broken at "
                f"entry {report.broken_seq} ({report.reason}); it is not sealed. Investigate "
                "(`wearemo audit show`), then `wearemo audit migrate --accept-broken` seals it "
                "as it is (verify keeps reporting the break)")
        last = self._last()
        assert last is not None
        detail = (f"entries 1-{n} were written unkeyed (SHA-256 chain, head {last.sha256}); "
                  "HMAC-SHA256 from here on")
        if not report.ok:
            detail += (f"; their chain was already broken at entry {report.broken_seq} when "
                       "sealed")
        return self._append([AuditEntry.new(None, None, SEAL_ACTION, None, 0, detail)],
                            seal=True)[0]


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    seq, at_ns, key_id, role, action, subject_id, outcome, detail, prev, sha, client, count, \
        keyed = row
    return AuditEntry(at_ns=at_ns, key_id=key_id, role=role, action=action,
                      subject_id=subject_id, outcome=outcome, detail=detail, seq=seq,
                      prev_sha256=prev, sha256=sha, client=client, count=count,
                      keyed=bool(keyed))


def open_audit_log(settings: Settings, *, migrate: bool = False,
                   accept_broken: bool = False) -> AuditLog:
    """The service's audit log with its key, ready to append to.

    The key is ``WEAREMO_AUDIT_KEY`` or ``data_dir/audit.key``; the file is generated only
    while the log has no keyed entry (a new key could never verify an existing chain). A log
    of an older release (unkeyed entries only) is sealed under the key when the key is
    generated now, or when ``migrate`` (``wearemo audit migrate``), after checking its
    unkeyed chain.

    Raises
    ------
    AuditKeyError
        The log has keyed entries but no key is available; the key does not verify the newest
        entry; an older log needs ``wearemo audit migrate`` (the key was set, not generated);
        or its unkeyed chain is broken (see :meth:`AuditLog.seal_legacy`).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, open_audit_log(Settings(data_dir=d)) as log:
    ...     log.append(AuditEntry.new("cli", "admin", "cli keys list", None, 0)).keyed
    True
    """
    audit = AuditLog(settings.resolved_auth_path(),
                     refusal_interval_s=settings.audit_refusal_interval_s,
                     refusal_buckets=settings.audit_refusal_buckets)
    try:
        n, keyed = audit.counts()
        legacy = n > 0 and keyed == 0
        if legacy and not accept_broken:
            report = audit._verify(None)  # refuse before a key file is made for it
            if not report.ok:
                raise AuditKeyError(
                    f"the audit log predates the keyed chain and its unkeyed chain is broken "
                    f"at entry {report.broken_seq} ({report.reason}); it is not sealed. "
                    "Investigate (`wearemo audit show`), then `wearemo audit migrate "
                    "--accept-broken` seals it as it is (verify keeps reporting the break)")
        key, created = load_audit_key(settings, create=keyed == 0)
        where = f"{Path(settings.data_dir) / AUDIT_KEY_FILE} or WEAREMO_AUDIT_KEY"
        if key is None:
            raise AuditKeyError(
                f"the audit log has {keyed} keyed entries but there is no audit key "
                f"({Path(settings.data_dir) / AUDIT_KEY_FILE} is missing and "
                "WEAREMO_AUDIT_KEY is unset): restore the key file; a new key could not "
                "verify the log")
        audit._key = key
        if legacy:
            if not (created or migrate):
                raise AuditKeyError(
                    f"the audit log holds {n} entries in the old unkeyed format and the audit "
                    "key was set, not generated: run `wearemo audit migrate` once (it checks "
                    "the old chain, then seals it under the key)")
            audit.sealed = audit.seal_legacy(accept_broken=accept_broken)
            log.warning("audit: sealed %d unkeyed entries of an older release under the "
                        "audit key (entry %d)", n, audit.sealed.seq if audit.sealed else 0)
        elif keyed:
            last = audit._last()
            if last is not None and last.keyed and not hmac.compare_digest(last.mac(key),
                                                                          last.sha256):
                raise AuditKeyError(
                    f"the audit key does not verify the newest audit entry ({last.seq}): it is "
                    f"not the key the log was written with ({where}), or the entry was "
                    "changed; `wearemo audit verify` names the first entry that fails")
    except BaseException:
        audit.close()
        raise
    return audit


@dataclass(slots=True)
class AuditContext:
    """What a request's dependencies learned, for its audit entries.

    Set by authentication (``key_id``, ``role``) and extended by the subject checks and
    handlers (``subjects``, ``detail``); written by :class:`AuditMiddleware` once the
    response status is known. ``refusal`` (why access control refused the request) makes
    it an aggregated entry (:meth:`AuditLog.refuse`).
    """

    key_id: str | None = None
    role: str | None = None
    subjects: list[str] = field(default_factory=list)
    detail: str = ""
    refusal: str | None = None

    def touch(self, subject_id: str) -> None:
        """Record that the request concerns ``subject_id`` (once)."""
        if subject_id not in self.subjects:
            self.subjects.append(subject_id)


#: Key of the :class:`AuditContext` in the request state.
STATE_KEY = "audit"


class AuditMiddleware:
    """ASGI middleware: one audit entry per subject for every request that went through
    authentication (a request to a public route has no context and is not recorded);
    requests refused by access control are aggregated (:meth:`AuditLog.refuse`).

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
        client = scope.get("client")
        try:
            await run_in_threadpool(resources.audit.record, ctx, action, status,
                                    client=client[0] if client else None)
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
