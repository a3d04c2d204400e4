"""On-disk store-and-forward queue of :class:`SampleBatch`es (SQLite, survives crashes).

The bridge puts every assembled batch here before anything is sent; the uplink peeks, sends,
and acks what the API accepted. Delivery is at-least-once; batch ids make it idempotent at the
API. Batches the API refuses for good (HTTP 4xx) move to a dead-letter table with the reason:
they are kept, never silently dropped.

Durability: the database runs in WAL mode with ``synchronous=FULL`` by default, so a committed
``put`` survives a power loss as well as a process crash (one fsync per ``put``/``ack``
transaction, which batching keeps to a few per second). ``synchronous="NORMAL"`` is offered for
flash-wearing or slow disks: in WAL mode it stays consistent and survives a process crash but
may lose the last transactions on power loss.

Private: the spool holds a wearer's samples, so its directory is created 0700 and the
database 0600 (SQLite gives the ``-wal`` and ``-shm`` files the same mode), whatever the umask.

Bounded: when a ``put`` would exceed ``max_batches`` or ``max_bytes`` it is refused as a whole
with :class:`SpoolFullError` and counted (``refused_batches``); nothing already queued is evicted.

Example
-------
>>> import tempfile, pathlib
>>> from wearemo.samples import SampleBatch
>>> b = SampleBatch(batch_id="d:eda:0", subject_id="s", device_id="d", channel="eda",
...                 start_ns=0, rate_hz=4.0, values=[1.0, 1.1])
>>> with tempfile.TemporaryDirectory() as tmp:
...     spool = Spool(pathlib.Path(tmp) / "spool.db")
...     spool.put([b]), spool.depth, [x.batch_id for x in spool.peek(10)], spool.ack(["d:eda:0"])
...     spool.close()
(1, 1, ['d:eda:0'], 1)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wearemo.samples import SampleBatch

__all__ = ["DeadLetter", "Spool", "SpoolFullError"]


def _create_private(path: Path) -> None:
    """Missing directories 0700 and the file 0600 (an existing file is tightened)."""
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)  # mkdir's mode went through the umask
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):  # left by an older version or a crash
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    subject_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    n_samples INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    batch_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL,
    dead_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    device_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (device_id, channel)
);
"""


class SpoolFullError(RuntimeError):
    """A ``put`` would exceed the spool's bound; nothing of it was stored."""


@dataclass(frozen=True)
class DeadLetter:
    """A batch the API refused for good, with the HTTP status and the reason given.

    ``batch`` is None when the stored body no longer parses (``body`` keeps it verbatim).
    """

    batch_id: str
    body: str
    batch: SampleBatch | None
    status: int | None
    reason: str
    dead_ns: int


class Spool:
    """SQLite-backed FIFO of sample batches.

    Parameters
    ----------
    path
        Database file (created with its parent directory if missing).
    max_batches
        Most batches queued at once.
    max_bytes
        Most JSON bytes queued at once.
    synchronous
        SQLite ``synchronous`` level in WAL mode: ``"FULL"`` (default, power-loss safe) or
        ``"NORMAL"`` (crash safe; may lose the last commits on power loss).

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with Spool(pathlib.Path(tmp) / "s.db", max_batches=10) as spool:
    ...         spool.depth
    0
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_batches: int = 200_000,
        max_bytes: int = 1 << 30,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if max_batches < 1 or max_bytes < 1:
            raise ValueError("max_batches and max_bytes must be positive")
        self.path = Path(path)
        _create_private(self.path)
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM batches"
        ).fetchone()
        self._depth, self._bytes = int(row[0]), int(row[1])

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database (idempotent)."""
        self._db.close()  # closing twice is harmless in sqlite3

    # -- queue -----------------------------------------------------------------------------------

    def put(
        self,
        batches: Iterable[SampleBatch],
        *,
        cursors: Mapping[tuple[str, str], int] | None = None,
    ) -> int:
        """Queue batches in one transaction; return how many were new.

        A batch whose id is already queued is skipped (idempotent). ``cursors`` —
        ``(device_id, channel) -> position`` (the newest frame seq, or for ``hr``/``rr`` the
        newest sample time, that the spooled batches of that channel hold) — are stored in the
        same transaction, so after a crash :meth:`cursors` says exactly where spooled data ends
        and a restarted bridge resumes there: nothing lost, nothing twice.

        Raises
        ------
        SpoolFullError
            The whole call would exceed ``max_batches`` or ``max_bytes``; nothing was stored
            and ``refused_batches`` grew by the number of batches offered.

        Example
        -------
        >>> import tempfile, pathlib
        >>> b = SampleBatch(batch_id="x", subject_id="s", device_id="d", channel="temp",
        ...                 start_ns=0, rate_hz=4.0, values=[33.0])
        >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...     sp.put([b]), sp.put([b])
        (1, 0)
        """
        rows = [
            (b.batch_id, b.subject_id, b.channel.value, b.n_samples, b.model_dump_json())
            for b in batches
        ]
        if not rows and not cursors:
            return 0
        size = sum(len(r[4]) for r in rows)
        if self._depth + len(rows) > self.max_batches or self._bytes + size > self.max_bytes:
            self._bump("refused_batches", len(rows))
            raise SpoolFullError(
                f"spool full ({self._depth}/{self.max_batches} batches, "
                f"{self._bytes}/{self.max_bytes} bytes): refused {len(rows)} batch(es)"
            )
        now = time.time_ns()
        inserted = 0
        added_bytes = 0
        with self._transaction():
            for (device, channel_name), value in (cursors or {}).items():
                self._db.execute(
                    "INSERT INTO cursors (device_id, channel, value) VALUES (?, ?, ?) "
                    "ON CONFLICT(device_id, channel) DO UPDATE SET value = excluded.value",
                    (device, channel_name, int(value)),
                )
            for batch_id, subject, channel, n, body in rows:
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO batches "
                    "(batch_id, subject_id, channel, n_samples, body, created_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (batch_id, subject, channel, n, body, now),
                )
                if cur.rowcount:
                    inserted += 1
                    added_bytes += len(body)
        self._depth += inserted
        self._bytes += added_bytes
        return inserted

    def cursors(self, device_id: str) -> dict[str, int]:
        """The positions stored with :meth:`put` for one device (channel -> position).

        Example
        -------
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...     _ = sp.put([], cursors={("d", "ppg"): 7})
        ...     sp.cursors("d"), sp.cursors("other")
        ({'ppg': 7}, {})
        """
        rows = self._db.execute(
            "SELECT channel, value FROM cursors WHERE device_id = ?", (device_id,)
        ).fetchall()
        return {str(c): int(v) for c, v in rows}

    def peek(self, n: int) -> list[SampleBatch]:
        """The ``n`` oldest queued batches (not removed).

        A row that no longer parses as a ``SampleBatch`` is moved to the dead letters (with
        the parse error) instead of blocking the queue.

        Example
        -------
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...     sp.peek(5)
        []
        """
        out: list[SampleBatch] = []
        while len(out) < n:
            rows = self._db.execute(
                "SELECT batch_id, body FROM batches ORDER BY id LIMIT ? OFFSET ?",
                (int(n) - len(out), len(out)),
            ).fetchall()
            if not rows:
                break
            for batch_id, body in rows:
                try:
                    out.append(SampleBatch.model_validate_json(body))
                except ValueError as error:
                    # Unreadable row (corruption, older format): set aside, never block the queue.
                    self.dead_letter(batch_id, reason=f"unreadable in spool: {error}")
        return out

    def ack(self, batch_ids: Sequence[str]) -> int:
        """Remove delivered batches; return how many were queued (unknown ids are ignored).

        Example
        -------
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...     sp.ack(["nope"])
        0
        """
        if not batch_ids:
            return 0
        removed = 0
        removed_bytes = 0
        with self._transaction():
            for batch_id in batch_ids:
                row = self._db.execute(
                    "DELETE FROM batches WHERE batch_id = ? RETURNING LENGTH(body)", (batch_id,)
                ).fetchone()
                if row is not None:
                    removed += 1
                    removed_bytes += int(row[0])
        self._depth -= removed
        self._bytes -= removed_bytes
        return removed

    def dead_letter(self, batch_id: str, *, reason: str, status: int | None = None) -> bool:
        """Move a queued batch to the dead-letter table; False when it is not queued.

        Example
        -------
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as tmp, Spool(pathlib.Path(tmp) / "s.db") as sp:
        ...     sp.dead_letter("nope", reason="422")
        False
        """
        with self._transaction():
            row = self._db.execute(
                "DELETE FROM batches WHERE batch_id = ? RETURNING body", (batch_id,)
            ).fetchone()
            if row is None:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letters (batch_id, body, status, reason, dead_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch_id, row[0], status, reason, time.time_ns()),
            )
        self._depth -= 1
        self._bytes -= len(row[0])
        return True

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead-lettered batch, oldest first."""
        rows = self._db.execute(
            "SELECT batch_id, body, status, reason, dead_ns FROM dead_letters ORDER BY dead_ns"
        ).fetchall()
        out: list[DeadLetter] = []
        for batch_id, body, status, reason, dead_ns in rows:
            try:
                batch: SampleBatch | None = SampleBatch.model_validate_json(body)
            except ValueError:
                batch = None
            out.append(DeadLetter(batch_id, body, batch, status, reason, dead_ns))
        return out

    # -- sizes and counters ------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Batches queued (not yet acked or dead-lettered)."""
        return self._depth

    @property
    def bytes_queued(self) -> int:
        """JSON bytes queued."""
        return self._bytes

    @property
    def dead_depth(self) -> int:
        """Batches in the dead-letter table."""
        return int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])

    @property
    def refused_batches(self) -> int:
        """Batches refused because the spool was full (persisted across restarts)."""
        row = self._db.execute(
            "SELECT value FROM counters WHERE name = 'refused_batches'"
        ).fetchone()
        return int(row[0]) if row else 0

    def queued_samples(self) -> dict[str, dict[str, int]]:
        """Queued sample counts per subject and channel (for reports)."""
        out: dict[str, dict[str, int]] = {}
        for subject, channel, n in self._db.execute(
            "SELECT subject_id, channel, SUM(n_samples) FROM batches GROUP BY 1, 2"
        ):
            out.setdefault(subject, {})[channel] = int(n)
        return out

    # -- internals ---------------------------------------------------------------------------------

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

