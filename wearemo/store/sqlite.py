"""Embedded SQLite store: the zero set-up default :class:`~wearemo.store.base.StateStore`.

Layout (schema version 3):

``batches``
    One row per ``SampleBatch``: ids, channel, ``start_ns``/``end_ns``, ``rate_hz`` or an
    ``int64`` timestamp blob, and the values as one little-endian ``float64`` blob. A row per
    batch rather than per sample keeps ingest at one insert per upload (per-sample rows cost ~30x
    the space and insert time at 64 Hz) while ``float64`` keeps values bit-exact. Unique on
    ``(subject_id, batch_id)`` (the idempotency key); indexed on
    ``(subject_id, channel, start_ns)`` for time-range reads.
``channels``
    Per ``(subject_id, channel)`` running counts and the last sample time, updated in the same
    transaction as the batch insert, so ordering checks after a restart are O(1).
``windows``
    Feature windows, keyed on ``(subject_id, end_ns)``; the variable parts as JSON.
``states``
    State estimates with every field, keyed on ``(subject_id, window_end_ns)``.
``calibrations``
    The latest personal-baseline calibration period of each subject, keyed on ``subject_id``.
``processing``
    Per subject, the processing cursor: the ``batches.id`` (arrival order) of the last batch
    the pipeline has turned into windows and states, and the latest sample time among the
    processed batches. Batches after it are the durable processing queue: accepted, stored,
    not yet processed (see :meth:`SQLiteStore.pending_batches`).

Older files are upgraded in place when opened: schema 2 added the states' arousal and affect
columns, schema 3 the ``calibrations`` table, schema 4 the ``processing`` cursors (set to
"everything processed", which is what earlier versions did inline). Versions 3 and 4 are not
optional for older wearemo: it would ignore a subject's calibration (and, in 4, leave the
processing cursors behind), so it refuses the file instead.

The database runs in WAL mode with ``synchronous=NORMAL`` (a commit survives a process crash;
a power cut may lose the last transactions but never corrupts the file). One connection is
shared by all threads behind a lock: SQLite serializes writers anyway, and reads are short.
Deleted content is overwritten (``secure_delete``), and erasure and retention end with
:meth:`SQLiteStore.truncate_wal`, so no copy of deleted rows stays in the write-ahead log.
The files are owner-only (0600, see :mod:`wearemo.store.private`).

Example
-------
>>> store = SQLiteStore(":memory:")
>>> b = SampleBatch(batch_id="b1", subject_id="s1", device_id="d1", channel="eda",
...                 start_ns=0, rate_hz=4.0, values=[1.0, 1.5])
>>> store.add_batch(b), store.add_batch(b), store.last_sample_ns("s1", Channel.EDA)
(True, False, 250000000)
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wearemo.features.window import FeatureWindow
from wearemo.model.state import StateEstimate
from wearemo.samples import CHANNEL_AXES, CHANNEL_UNITS, Channel, ChannelSamples, SampleBatch
from wearemo.store.base import (
    ERASE_KINDS,
    BatchConflictError,
    Calibration,
    ProcessingCursor,
    QueuedBatch,
    SubjectSummary,
    digest_arrays,
    window_from_json,
    window_to_json,
)
from wearemo.store.private import private_file, tighten

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "connect_wal", "truncate_wal"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

#: How long an erasure waits, in all, for readers that keep the WAL from being truncated.
WAL_TRUNCATE_WAIT_S = 5.0


def connect_wal(
    path: str | Path, *, timeout_s: float = 30.0, foreign_keys: bool = False
) -> sqlite3.Connection:
    """Open a SQLite file the way every wearemo database is opened (creating its directory).

    Autocommit (callers open explicit transactions), usable from any thread (callers hold
    their own lock), WAL with ``synchronous=NORMAL``: readers never wait for the writer, and
    a commit is durable against a process crash (a power cut may lose the last ones).
    ``secure_delete`` is on whatever the SQLite build's default: deleted content is
    overwritten with zeros instead of lingering in free pages (erasure relies on it, with
    :func:`truncate_wal`). The file is created 0600 in a 0700 directory (SQLite gives its
    ``-wal`` and ``-shm`` files the database file's mode); an existing one is tightened.

    Example
    -------
    >>> conn = connect_wal(":memory:")
    >>> [conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("synchronous", "secure_delete")]
    [1, 1]
    """
    if str(path) != ":memory:":
        private_file(path)
        for suffix in ("-wal", "-shm"):  # left by an older version or a crash
            tighten(f"{path}{suffix}")
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    if foreign_keys:
        conn.execute("PRAGMA foreign_keys=ON")
    return conn


def truncate_wal(
    conn: sqlite3.Connection,
    *,
    lock: contextlib.AbstractContextManager[Any] | None = None,
    wait_s: float = WAL_TRUNCATE_WAIT_S,
) -> bool:
    """Checkpoint a WAL database and truncate its ``-wal`` file to zero bytes.

    After rows are deleted, the write-ahead log still holds the pages as they were before
    (and the database file until the checkpoint): this writes every page back and empties the
    log, so the deleted rows leave no copy on disk (with ``secure_delete``, see
    :func:`connect_wal`). A reader in the middle of a transaction (another process with the
    file open) blocks the truncation; it is retried, with ``lock`` released between attempts
    so the connection's other users go on, until ``wait_s`` has passed.

    Parameters
    ----------
    conn
        A connection from :func:`connect_wal` (not inside a transaction).
    lock
        The lock its callers hold to use ``conn``; held during each attempt only.
    wait_s
        Longest wait for blocking readers, in all, seconds.

    Returns
    -------
    bool
        ``True`` when the log is empty; ``False`` (logged as a warning) when readers still
        blocked it after ``wait_s``: the next truncation (a later erasure or retention run)
        completes it.

    Example
    -------
    >>> truncate_wal(connect_wal(":memory:"))
    True
    """
    deadline = time.monotonic() + wait_s
    pause = 0.02
    while True:
        with lock if lock is not None else contextlib.nullcontext():
            # a short busy wait per attempt: the lock is not held for the whole wait_s
            before = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
            conn.execute("PRAGMA busy_timeout=100")
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout={before}")
        if not busy:
            return True
        if time.monotonic() >= deadline:
            name = conn.execute("PRAGMA database_list").fetchone()[2] or ":memory:"
            log.warning("%s-wal could not be truncated within %.1f s: another connection "
                        "keeps a read transaction open; deleted rows stay in the log until "
                        "the next truncation", name, wait_s)
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.5)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id          INTEGER PRIMARY KEY,
    subject_id  TEXT    NOT NULL,
    batch_id    TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    start_ns    INTEGER NOT NULL,
    end_ns      INTEGER NOT NULL,
    n_samples   INTEGER NOT NULL,
    rate_hz     REAL,
    seq         INTEGER,
    times       BLOB,
    vals        BLOB    NOT NULL,
    digest      TEXT    NOT NULL,
    received_ns INTEGER NOT NULL,
    UNIQUE (subject_id, batch_id)
);
CREATE INDEX IF NOT EXISTS batches_subject_time ON batches (subject_id, channel, start_ns);
CREATE TABLE IF NOT EXISTS channels (
    subject_id      TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    batches         INTEGER NOT NULL,
    samples         INTEGER NOT NULL,
    first_sample_ns INTEGER NOT NULL,
    last_sample_ns  INTEGER NOT NULL,
    PRIMARY KEY (subject_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    subject_id TEXT    NOT NULL,
    start_ns   INTEGER NOT NULL,
    end_ns     INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (subject_id, end_ns)
);
CREATE TABLE IF NOT EXISTS states (
    subject_id      TEXT    NOT NULL,
    window_start_ns INTEGER NOT NULL,
    window_end_ns   INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    p_stress        REAL,
    reason          TEXT,
    model_version   TEXT    NOT NULL,
    channels_used   TEXT    NOT NULL,
    top_features    TEXT    NOT NULL,
    arousal         REAL,
    outputs         TEXT    NOT NULL DEFAULT '{}',
    PRIMARY KEY (subject_id, window_end_ns)
);
CREATE TABLE IF NOT EXISTS calibrations (
    subject_id         TEXT    NOT NULL PRIMARY KEY,
    start_ns           INTEGER NOT NULL,
    end_ns             INTEGER NOT NULL,
    windows_through_ns INTEGER NOT NULL,
    windows_used       INTEGER NOT NULL,
    created_ns         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS processing (
    subject_id TEXT    NOT NULL PRIMARY KEY,
    batch_seq  INTEGER NOT NULL,
    end_ns     INTEGER
) WITHOUT ROWID;
"""

_STATE_COLUMNS = (
    "subject_id, window_start_ns, window_end_ns, state, p_stress, reason, model_version, "
    "channels_used, top_features, arousal, outputs"
)
# Added in schema 2 (arousal and affect outputs): an older file gets them by ALTER TABLE.
_STATE_MIGRATIONS = {
    "arousal": "ALTER TABLE states ADD COLUMN arousal REAL",
    "outputs": "ALTER TABLE states ADD COLUMN outputs TEXT NOT NULL DEFAULT '{}'",
}


def _regular_times_ns(start_ns: int, rate_hz: float, n: int) -> np.ndarray:
    # Must equal SampleBatch.times_ns() for rate-based batches (checked by a test).
    return start_ns + np.round(np.arange(n) * (1e9 / rate_hz)).astype(np.int64)


def _time_clause(column: str, start_ns: int | None, end_ns: int | None) -> tuple[str, list[int]]:
    sql, args = "", []
    if start_ns is not None:
        sql += f" AND {column} >= ?"
        args.append(int(start_ns))
    if end_ns is not None:
        sql += f" AND {column} < ?"
        args.append(int(end_ns))
    return sql, args


class SQLiteStore:
    """A :class:`~wearemo.store.base.StateStore` in one SQLite file.

    Parameters
    ----------
    path
        Database file (parent directories are created) or ``":memory:"``.
    timeout_s
        How long to wait for another process holding the write lock.

    Example
    -------
    >>> SQLiteStore(":memory:").subject_ids()
    []
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = path if str(path) == ":memory:" else Path(path)
        self._lock = threading.RLock()
        # autocommit mode; write methods open explicit transactions.
        self._conn = connect_wal(self.path, timeout_s=timeout_s, foreign_keys=True)
        self._file_id: tuple[int, int] | None = None
        if isinstance(self.path, Path):
            st = self.path.stat()  # exists now: the PRAGMAs above created it
            self._file_id = (st.st_dev, st.st_ino)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise RuntimeError(
                f"{path}: schema version {version} is newer than this wearemo ({SCHEMA_VERSION})"
            )
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                tables = {r[0] for r in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)  # IF NOT EXISTS: idempotent
                have = {r[1] for r in self._conn.execute("PRAGMA table_info(states)")}
                for column, alter in _STATE_MIGRATIONS.items():
                    if column not in have:
                        self._conn.execute(alter)
                if "batches" in tables and "processing" not in tables:
                    # Schema < 4 processed every batch inline: all stored batches are done.
                    self._conn.execute(
                        "INSERT INTO processing SELECT subject_id, MAX(id), MAX(end_ns) "
                        "FROM batches GROUP BY subject_id"
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    # -- raw batches -------------------------------------------------------------------------

    def add_batch(self, batch: SampleBatch) -> bool:
        """Store a batch; ``False`` if already stored, :class:`BatchConflictError` on id reuse.

        Example
        -------
        >>> s = SQLiteStore(":memory:")
        >>> s.add_batch(SampleBatch(batch_id="b", subject_id="s", device_id="d", channel="hr",
        ...             start_ns=0, rate_hz=1.0, values=[60.0]))
        True
        """
        return self.add_batches([batch])[0]

    def add_batches(self, batches: Sequence[SampleBatch]) -> list[bool]:
        """Store batches in one transaction; per batch ``False`` if its id was already stored.

        All or nothing: a :class:`BatchConflictError` (an id already stored with other content)
        stores none of them. One transaction per request is what makes ingest cheap: a commit
        costs more than the inserts of a whole request.

        Example
        -------
        >>> s = SQLiteStore(":memory:")
        >>> b = SampleBatch(batch_id="b", subject_id="s", device_id="d", channel="hr",
        ...                 start_ns=0, rate_hz=1.0, values=[60.0])
        >>> s.add_batches([b, b.model_copy(update={"batch_id": "c", "start_ns": 10**9})])
        [True, True]
        """
        rows = []
        for batch in batches:
            times = batch.times_ns()
            values = np.ascontiguousarray(batch.values_array(), dtype="<f8")
            rows.append((
                batch,
                int(times[-1]),
                values.tobytes(),
                None if batch.rate_hz is not None else times.astype("<i8").tobytes(),
                digest_arrays(batch.device_id, batch.channel, times, values),
            ))
        out: list[bool] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for batch, end_ns, vals, times_blob, digest in rows:
                    out.append(self._insert_batch(batch, end_ns, vals, times_blob, digest))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return out

    def _insert_batch(
        self, batch: SampleBatch, end_ns: int, vals: bytes, times_blob: bytes | None,
        digest: str,
    ) -> bool:
        # Inside a transaction. ON CONFLICT DO NOTHING also covers another process that stored
        # the same id between a caller's check and this insert.
        cur = self._conn.execute(
            "INSERT INTO batches (subject_id, batch_id, device_id, channel, start_ns, "
            "end_ns, n_samples, rate_hz, seq, times, vals, digest, received_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (subject_id, batch_id) DO NOTHING",
            (
                batch.subject_id,
                batch.batch_id,
                batch.device_id,
                batch.channel.value,
                batch.start_ns,
                end_ns,
                batch.n_samples,
                batch.rate_hz,
                batch.seq,
                times_blob,
                vals,
                digest,
                time.time_ns(),
            ),
        )
        if cur.rowcount == 0:
            row = self._conn.execute(
                "SELECT digest FROM batches WHERE subject_id = ? AND batch_id = ?",
                (batch.subject_id, batch.batch_id),
            ).fetchone()
            if row is not None and row[0] != digest:
                raise BatchConflictError(
                    f"batch_id {batch.batch_id!r} of subject {batch.subject_id!r} was already "
                    "stored with different content"
                )
            return False
        self._conn.execute(
            "INSERT INTO channels VALUES (?, ?, 1, ?, ?, ?) "
            "ON CONFLICT (subject_id, channel) DO UPDATE SET "
            "batches = batches + 1, samples = samples + excluded.samples, "
            "first_sample_ns = MIN(first_sample_ns, excluded.first_sample_ns), "
            "last_sample_ns = MAX(last_sample_ns, excluded.last_sample_ns)",
            (batch.subject_id, batch.channel.value, batch.n_samples, batch.start_ns, end_ns),
        )
        return True

    def has_batch(self, subject_id: str, batch_id: str) -> bool:
        """Whether ``(subject_id, batch_id)`` is stored."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM batches WHERE subject_id = ? AND batch_id = ?",
                (subject_id, batch_id),
            ).fetchone()
        return row is not None

    def batches(
        self,
        subject_id: str,
        *,
        channel: Channel | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 10_000,
        through_seq: int | None = None,
    ) -> list[SampleBatch]:
        """Stored batches with samples in ``[start_ns, end_ns)``, as sent, by ``start_ns``.

        ``through_seq`` keeps only batches with arrival number (``id``) up to it: the
        processed ones, when it is the processing cursor.

        Example
        -------
        >>> SQLiteStore(":memory:").batches("s1")
        []
        """
        sql = (
            "SELECT id, batch_id, device_id, channel, start_ns, rate_hz, seq, times, vals "
            "FROM batches WHERE subject_id = ?"
        )
        args: list[object] = [subject_id]
        if channel is not None:
            sql += " AND channel = ?"
            args.append(Channel(channel).value)
        if start_ns is not None:
            sql += " AND end_ns >= ?"
            args.append(int(start_ns))
        if end_ns is not None:
            sql += " AND start_ns < ?"
            args.append(int(end_ns))
        if through_seq is not None:
            sql += " AND id <= ?"
            args.append(int(through_seq))
        with self._lock:
            rows = self._conn.execute(
                sql + " ORDER BY start_ns, id LIMIT ?", [*args, int(limit)]
            ).fetchall()
        return [_batch_from_row(subject_id, row).batch for row in rows]

    def pending_batches(
        self, subject_id: str, *, after_seq: int, limit: int = 1000
    ) -> list[QueuedBatch]:
        """Batches of a subject stored after ``after_seq`` (arrival number), in arrival order.

        Example
        -------
        >>> s = SQLiteStore(":memory:")
        >>> _ = s.add_batch(SampleBatch(batch_id="b", subject_id="s", device_id="d",
        ...                             channel="hr", start_ns=0, rate_hz=1.0, values=[60.0]))
        >>> [(q.seq, q.batch.batch_id) for q in s.pending_batches("s", after_seq=0)]
        [(1, 'b')]
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, batch_id, device_id, channel, start_ns, rate_hz, seq, times, vals "
                "FROM batches WHERE id > ? AND subject_id = ? ORDER BY id LIMIT ?",
                (int(after_seq), subject_id, int(limit)),
            ).fetchall()
        return [_batch_from_row(subject_id, row) for row in rows]

    def processing_cursor(self, subject_id: str) -> ProcessingCursor:
        """The subject's processing cursor (``seq=0``: nothing processed yet)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT batch_seq, end_ns FROM processing WHERE subject_id = ?", (subject_id,)
            ).fetchone()
        if row is None:
            return ProcessingCursor(subject_id=subject_id)
        return ProcessingCursor(subject_id=subject_id, seq=int(row[0]),
                                end_ns=None if row[1] is None else int(row[1]))

    def set_processing_cursor(self, cursor: ProcessingCursor) -> None:
        """Record that the subject's batches up to ``cursor.seq`` are processed.

        Example
        -------
        >>> s = SQLiteStore(":memory:")
        >>> s.set_processing_cursor(ProcessingCursor(subject_id="s", seq=3, end_ns=9))
        >>> s.processing_cursor("s").seq
        3
        """
        self._write_many(
            "INSERT OR REPLACE INTO processing (subject_id, batch_seq, end_ns) VALUES (?, ?, ?)",
            [(cursor.subject_id, cursor.seq, cursor.end_ns)],
        )

    def pending_counts(self) -> dict[str, tuple[int, int]]:
        """Subject -> ``(batches, samples)`` stored after its processing cursor.

        Example
        -------
        >>> SQLiteStore(":memory:").pending_counts()
        {}
        """
        with self._lock:
            # Only the tail after the oldest cursor is read (a rowid range; NOT INDEXED keeps
            # the planner from scanning an index in subject order instead): this runs at every
            # start. Subjects never processed have no cursor row; their first batch bounds the
            # range. A long-idle subject's old cursor still widens the range (worst case: the
            # whole table, as a plain GROUP BY would read).
            lo = self._conn.execute(
                "SELECT MIN(m) FROM ("
                "SELECT MIN(batch_seq) AS m FROM processing UNION ALL "
                "SELECT MIN(id) - 1 FROM batches WHERE subject_id IN ("
                "SELECT subject_id FROM channels EXCEPT SELECT subject_id FROM processing))"
            ).fetchone()[0]
            if lo is None:
                return {}
            rows = self._conn.execute(
                "SELECT b.subject_id, COUNT(*), SUM(b.n_samples) FROM batches b NOT INDEXED "
                "LEFT JOIN processing p ON p.subject_id = b.subject_id "
                "WHERE b.id > ? AND b.id > COALESCE(p.batch_seq, 0) GROUP BY b.subject_id",
                (int(lo),),
            ).fetchall()
        return {str(sid): (int(n), int(k)) for sid, n, k in rows}

    def samples(
        self,
        subject_id: str,
        channel: Channel,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> ChannelSamples:
        """Raw samples of one channel with ``start_ns <= t < end_ns``, time-ordered.

        Example
        -------
        >>> SQLiteStore(":memory:").samples("s", Channel.PPG).times_ns.shape
        (0,)
        """
        channel = Channel(channel)
        sql = (
            "SELECT start_ns, n_samples, rate_hz, times, vals FROM batches "
            "WHERE subject_id = ? AND channel = ?"
        )
        args: list[object] = [subject_id, channel.value]
        if start_ns is not None:
            sql += " AND end_ns >= ?"
            args.append(int(start_ns))
        if end_ns is not None:
            sql += " AND start_ns < ?"
            args.append(int(end_ns))
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY start_ns", args).fetchall()
        axes = CHANNEL_AXES[channel]
        times_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        for b_start, n, rate_hz, times_blob, vals_blob in rows:
            t = (
                _regular_times_ns(b_start, rate_hz, n)
                if times_blob is None
                else np.frombuffer(times_blob, dtype="<i8").astype(np.int64)
            )
            v = np.frombuffer(vals_blob, dtype="<f8").astype(np.float64)
            times_parts.append(t)
            value_parts.append(v.reshape(-1, 3) if axes == 3 else v)
        if not times_parts:
            empty_shape: tuple[int, ...] = (0, 3) if axes == 3 else (0,)
            return ChannelSamples(np.zeros(0, np.int64), np.zeros(empty_shape, np.float64))
        times = np.concatenate(times_parts)
        values = np.concatenate(value_parts)
        keep = np.ones(times.shape, dtype=bool)
        if start_ns is not None:
            keep &= times >= start_ns
        if end_ns is not None:
            keep &= times < end_ns
        order = np.argsort(times[keep], kind="stable")
        return ChannelSamples(times[keep][order], values[keep][order])

    def last_sample_ns(self, subject_id: str, channel: Channel) -> int | None:
        """Latest stored sample time of a subject's channel, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT last_sample_ns FROM channels WHERE subject_id = ? AND channel = ?",
                (subject_id, Channel(channel).value),
            ).fetchone()
        return None if row is None else int(row[0])

    # -- windows ----------------------------------------------------------------------------

    def add_windows(self, windows: Sequence[FeatureWindow]) -> None:
        """Store feature windows, replacing any with the same subject and end time."""
        rows = [
            (
                w.subject_id,
                w.start_ns,
                w.end_ns,
                window_to_json(w),
            )
            for w in windows
        ]
        if rows:
            self._write_many(
                "INSERT OR REPLACE INTO windows (subject_id, start_ns, end_ns, body) "
                "VALUES (?, ?, ?, ?)",
                rows,
            )

    def windows(
        self,
        subject_id: str,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 1000,
    ) -> list[FeatureWindow]:
        """Windows with ``start_ns <= window end < end_ns``, oldest first, at most ``limit``."""
        clause, args = _time_clause("end_ns", start_ns, end_ns)
        with self._lock:
            rows = self._conn.execute(
                "SELECT subject_id, start_ns, end_ns, body FROM windows WHERE subject_id = ?"
                + clause
                + " ORDER BY end_ns LIMIT ?",
                [subject_id, *args, int(limit)],
            ).fetchall()
        return [window_from_json(*row) for row in rows]

    # -- states -----------------------------------------------------------------------------

    def add_states(self, states: Sequence[StateEstimate]) -> None:
        """Store state estimates, replacing any with the same subject and window end."""
        rows = [
            (
                s.subject_id,
                s.window_start_ns,
                s.window_end_ns,
                s.state,
                s.p_stress,
                s.reason,
                s.model_version,
                json.dumps(list(s.channels_used)),
                json.dumps(s.top_features),
                s.arousal,
                json.dumps({"affect": s.affect, "affect_p": s.affect_p, "valence": s.valence,
                            "not_estimated": s.not_estimated, "variant": s.variant,
                            "explanation": [c.model_dump() for c in s.explanation]}),
            )
            for s in states
        ]
        if rows:
            self._write_many(
                f"INSERT OR REPLACE INTO states ({_STATE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def latest_state(self, subject_id: str) -> StateEstimate | None:
        """The state with the latest window end, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM states WHERE subject_id = ? "
                "ORDER BY window_end_ns DESC LIMIT 1",
                (subject_id,),
            ).fetchone()
        return None if row is None else _state_from_row(row)

    def states(
        self,
        subject_id: str,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 1000,
    ) -> list[StateEstimate]:
        """States with ``start_ns <= window_end_ns < end_ns``, oldest first, at most ``limit``."""
        clause, args = _time_clause("window_end_ns", start_ns, end_ns)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_STATE_COLUMNS} FROM states WHERE subject_id = ?"
                + clause
                + " ORDER BY window_end_ns LIMIT ?",
                [subject_id, *args, int(limit)],
            ).fetchall()
        return [_state_from_row(r) for r in rows]

    # -- calibrations -----------------------------------------------------------------------

    def set_calibration(self, calibration: Calibration) -> None:
        """Store a subject's calibration period, replacing any earlier one of that subject.

        Example
        -------
        >>> s = SQLiteStore(":memory:")
        >>> s.set_calibration(Calibration(subject_id="s1", start_ns=0, end_ns=10, windows_used=12,
        ...                               windows_through_ns=5, created_ns=1))
        >>> s.calibration("s1").windows_used, s.calibration("s2")
        (12, None)
        """
        c = calibration
        self._write_many(
            "INSERT OR REPLACE INTO calibrations (subject_id, start_ns, end_ns, "
            "windows_through_ns, windows_used, created_ns) VALUES (?, ?, ?, ?, ?, ?)",
            [(c.subject_id, c.start_ns, c.end_ns, c.windows_through_ns, c.windows_used,
              c.created_ns)],
        )

    def calibration(self, subject_id: str) -> Calibration | None:
        """The subject's latest calibration period, or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT start_ns, end_ns, windows_through_ns, windows_used, created_ns "
                "FROM calibrations WHERE subject_id = ?",
                (subject_id,),
            ).fetchone()
        if row is None:
            return None
        start, end, through, used, created = (int(v) for v in row)
        return Calibration(subject_id=subject_id, start_ns=start, end_ns=end,
                           windows_through_ns=through, windows_used=used, created_ns=created)

    # -- subjects ---------------------------------------------------------------------------

    def subject_ids(self) -> list[str]:
        """All subjects with any stored batch, sorted."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT subject_id FROM channels ORDER BY subject_id"
            ).fetchall()
        return [r[0] for r in rows]

    def has_subject(self, subject_id: str) -> bool:
        """Whether any batch of the subject is stored."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM channels WHERE subject_id = ? LIMIT 1", (subject_id,)
            ).fetchone()
        return row is not None

    def subject_summary(self, subject_id: str) -> SubjectSummary | None:
        """Counts for one subject, ``None`` when the subject has no stored batch."""
        with self._lock:
            channel_rows = self._conn.execute(
                "SELECT channel, batches, samples, first_sample_ns, last_sample_ns "
                "FROM channels WHERE subject_id = ? ORDER BY channel",
                (subject_id,),
            ).fetchall()
            if not channel_rows:
                return None
            n_windows = self._conn.execute(
                "SELECT COUNT(*) FROM windows WHERE subject_id = ?", (subject_id,)
            ).fetchone()[0]
            state_rows = self._conn.execute(
                "SELECT state, COUNT(*) FROM states WHERE subject_id = ? GROUP BY state",
                (subject_id,),
            ).fetchall()
            last = self.latest_state(subject_id)
        states = {"stress": 0, "non_stress": 0, "withheld": 0}
        states.update({label: int(n) for label, n in state_rows})
        return SubjectSummary(
            subject_id=subject_id,
            samples={ch: int(n) for ch, _, n, _, _ in channel_rows},
            batches=sum(int(b) for _, b, _, _, _ in channel_rows),
            windows=int(n_windows),
            states=states,
            first_sample_ns=min(int(r[3]) for r in channel_rows),
            last_sample_ns=max(int(r[4]) for r in channel_rows),
            last_state=last,
        )

    # -- privacy: erasure and retention ------------------------------------------------------

    def erase_subject(self, subject_id: str) -> dict[str, int]:
        """Delete every record of one subject in one transaction; counts removed per kind.

        The rows are overwritten in the database file (``secure_delete``); the write-ahead log
        keeps its copies until :meth:`truncate_wal`.

        Example
        -------
        >>> s = SQLiteStore(":memory:")
        >>> _ = s.add_batch(SampleBatch(batch_id="b", subject_id="s1", device_id="d",
        ...                             channel="hr", start_ns=0, rate_hz=1.0, values=[60.0]))
        >>> s.erase_subject("s1"), s.has_subject("s1")
        ({'samples': 1, 'batches': 1, 'windows': 0, 'states': 0, 'calibrations': 0}, False)
        """
        where = "WHERE subject_id = ?"
        return self._delete_counted(
            {
                "batches": (where, (subject_id,)),
                "windows": (where, (subject_id,)),
                "states": (where, (subject_id,)),
                "calibrations": (where, (subject_id,)),
                "channels": (where, (subject_id,)),
                "processing": (where, (subject_id,)),
            }
        )

    def delete_before(self, cutoff_ns: int) -> dict[str, int]:
        """Retention: drop batches ending, windows/states/calibrations ending, before a cutoff.

        A batch reaching past the cutoff is kept whole (its samples and digest stay intact);
        the per-channel counts are rebuilt from what remains.

        Example
        -------
        >>> SQLiteStore(":memory:").delete_before(10**18)["samples"]
        0
        """
        cut = (int(cutoff_ns),)
        return self._delete_counted(
            {
                "batches": ("WHERE end_ns < ?", cut),
                "windows": ("WHERE end_ns < ?", cut),
                "states": ("WHERE window_end_ns < ?", cut),
                "calibrations": ("WHERE end_ns < ?", cut),
            },
            rebuild_channels=True,
        )

    def _delete_counted(
        self,
        plan: dict[str, tuple[str, tuple[object, ...]]],
        *,
        rebuild_channels: bool = False,
    ) -> dict[str, int]:
        counts = dict.fromkeys(ERASE_KINDS, 0)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                where, args = plan["batches"]
                n_batches, n_samples = self._conn.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(n_samples), 0) FROM batches {where}", args
                ).fetchone()
                counts["batches"], counts["samples"] = int(n_batches), int(n_samples)
                for table, (where, args) in plan.items():
                    n = self._conn.execute(f"DELETE FROM {table} {where}", args).rowcount
                    if table in counts and table != "batches":
                        counts[table] = int(n)
                if rebuild_channels:
                    # the running counts must describe what is left, not what was ever stored
                    self._conn.execute("DELETE FROM channels")
                    self._conn.execute(
                        "INSERT INTO channels SELECT subject_id, channel, COUNT(*), "
                        "SUM(n_samples), MIN(start_ns), MAX(end_ns) FROM batches "
                        "GROUP BY subject_id, channel"
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return counts

    def truncate_wal(self, *, wait_s: float = WAL_TRUNCATE_WAIT_S) -> bool:
        """Empty the write-ahead log, so deleted rows leave no copy on disk (:func:`truncate_wal`).

        Example
        -------
        >>> SQLiteStore(":memory:").truncate_wal()
        True
        """
        return truncate_wal(self._conn, lock=self._lock, wait_s=wait_s)

    # -- housekeeping -----------------------------------------------------------------------

    def journal_mode(self) -> str:
        """The SQLite journal mode in effect (``"wal"`` for a file database)."""
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def ping(self) -> bool:
        """``True`` when the database answers a query and its path is still the open file.

        SQLite keeps writing to a file that was deleted or replaced under it (a removed data
        directory, an unmounted volume), and everything written then is lost at the next start;
        so the file's identity is checked, not just that the connection answers.
        """
        try:
            with self._lock:
                self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if isinstance(self.path, Path) and self._file_id is not None:
                st = self.path.stat()
                if (st.st_dev, st.st_ino) != self._file_id:
                    return False
        except (sqlite3.Error, OSError):
            return False
        return True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()  # closing twice is harmless

    def _write_many(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batch_from_row(subject_id: str, row: tuple[Any, ...]) -> QueuedBatch:
    rowid, batch_id, device_id, ch, b_start, rate_hz, seq, times_blob, vals_blob = row
    channel = Channel(ch)
    values = np.frombuffer(vals_blob, dtype="<f8")
    if CHANNEL_AXES[channel] == 3:
        values = values.reshape(-1, 3)
    # Validated when it was accepted and stored bit-exact since: skip re-validation, which
    # costs more than the read itself.
    batch = SampleBatch.model_construct(
        batch_id=batch_id,
        subject_id=subject_id,
        device_id=device_id,
        channel=channel,
        start_ns=int(b_start),
        rate_hz=rate_hz,
        timestamps_ns=None if times_blob is None else np.frombuffer(times_blob, "<i8").tolist(),
        values=values.tolist(),
        unit=CHANNEL_UNITS[channel],
        seq=seq,
    )
    return QueuedBatch(int(rowid), batch)


def _state_from_row(row: tuple[Any, ...]) -> StateEstimate:
    subject, w_start, w_end, state, p_stress, reason, version, channels, top, arousal, out = row
    outputs = json.loads(str(out))
    return StateEstimate(
        subject_id=str(subject),
        window_start_ns=int(w_start),
        window_end_ns=int(w_end),
        state=state,
        p_stress=None if p_stress is None else float(p_stress),
        reason=None if reason is None else str(reason),
        model_version=str(version),
        channels_used=json.loads(str(channels)),
        top_features=json.loads(str(top)),
        arousal=None if arousal is None else float(arousal),
        affect=outputs.get("affect"),
        affect_p=outputs.get("affect_p") or {},
        valence=outputs.get("valence"),
        not_estimated=outputs.get("not_estimated") or {},
        variant=outputs.get("variant"),
        explanation=outputs.get("explanation") or [],
    )
