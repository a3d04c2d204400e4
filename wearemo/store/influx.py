"""InfluxDB store: the :class:`~wearemo.store.base.StateStore` on a time-series server.

Writes go first into a small on-disk outbox (SQLite, WAL) and a background thread sends them:
``write_mode="v2"`` through ``influxdb-client``'s batching write API (``/api/v2/write``: 5,000
lines a batch, gzip, retries with exponential backoff: InfluxDB 2.x, 3.x, Cloud, 1.8+),
``"v1"`` as the same line protocol posted (gzip) to ``/write`` (InfluxDB 1.x). A row leaves the
outbox only once the server acknowledged all its lines, so nothing is lost while the server is
down; when the outbox reaches ``buffer_max_bytes`` writes fail with
:class:`~wearemo.store.base.StoreBackpressureError` (HTTP 503 with ``Retry-After``). Re-sending
a line is harmless: a point with the same series and time replaces itself.

Reads use InfluxQL on ``/query`` (1.x; 2.x through its DBRP mapping; 3.x), with every
identifier and literal escaped. Reads first wait for the outbox to drain, so a caller reads
its own writes.

Layout (all times unix ns, written with precision ``ns``; see docs/influx.md):

=============== ========================= ===================================================
measurement     tags                      fields (time)
=============== ========================= ===================================================
samples         subject, device, channel  ``v`` (``x``, ``y``, ``z`` for acc) (sample time)
batches         subject, device, channel  batch_id, digest, n, start_ns, rate_hz, seq,
                                          received_ns (time of the batch's last sample)
windows         subject                   start_ns, body (JSON), motion, n_beats, beat_source,
                                          ``f_<feature>`` (window end)
states          subject                   window_start_ns, state, p_stress, arousal,
                                          model_version, variant, body (JSON) (window end)
calibrations    subject                   start_ns, windows_through_ns, windows_used,
                                          created_ns (end of the period)
=============== ========================= ===================================================

Example
-------
>>> store = InfluxStore("http://127.0.0.1:8086", database="wearemo", write_mode="v1",
...                     buffer_dir="/tmp/wearemo-influx")                 # doctest: +SKIP
>>> store.add_batch(batch), store.samples("s1", Channel.PPG)            # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from wearemo.features.window import FeatureWindow
from wearemo.model.state import StateEstimate
from wearemo.samples import CHANNEL_AXES, Channel, ChannelSamples, SampleBatch
from wearemo.store.base import (
    BatchConflictError,
    Calibration,
    ProcessingCursor,
    QueuedBatch,
    StoreBackpressureError,
    StoreUnavailableError,
    SubjectSummary,
    batch_digest,
    window_from_json,
    window_to_json,
)
from wearemo.store.private import private_dir
from wearemo.store.sqlite import WAL_TRUNCATE_WAIT_S, connect_wal, truncate_wal

__all__ = [
    "BATCH_LINES",
    "InfluxQueryError",
    "InfluxStore",
    "influxql_ident",
    "influxql_str",
    "line_tag",
]

log = logging.getLogger(__name__)

#: Lines per write request (InfluxData's recommended batch size).
BATCH_LINES = 5000
_AXES = {1: ("v",), 3: ("x", "y", "z")}
_MEASUREMENTS = ("samples", "batches", "windows", "states", "calibrations")


class InfluxQueryError(RuntimeError):
    """The server rejected an InfluxQL statement (a bug or a permissions problem)."""


# -- escaping -------------------------------------------------------------------------------


def influxql_str(value: str) -> str:
    """An InfluxQL string literal: single-quoted, ``\\`` and ``'`` escaped.

    Example
    -------
    >>> influxql_str("o'brien")
    "'o\\\\'brien'"
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def influxql_ident(name: str) -> str:
    """An InfluxQL identifier: double-quoted, ``\\`` and ``"`` escaped.

    Example
    -------
    >>> influxql_ident('a"b')
    '"a\\\\"b"'
    """
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line_tag(value: str) -> str:
    """A line-protocol tag key or value: commas, equals signs and spaces escaped.

    Backslashes and line breaks are refused: line protocol has no unambiguous escape for them.

    Example
    -------
    >>> line_tag("a b,c=d")
    'a\\\\ b\\\\,c\\\\=d'
    """
    if not value or any(c in value for c in "\\\n\r"):
        raise ValueError(f"{value!r}: empty, or holds a backslash or line break (not storable "
                         "as an InfluxDB tag)")
    return value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _line_str(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"{value[:40]!r}: line breaks cannot be stored in an InfluxDB field")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fields(items: Iterable[tuple[str, object]]) -> str:
    out = []
    for key, v in items:
        if v is None:
            continue  # absent: InfluxDB has no null
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, int):
            text = f"{v}i"
        elif isinstance(v, float):
            if not np.isfinite(v):
                continue
            text = repr(v)  # shortest round-trip form: bit-exact float64
        else:
            text = _line_str(str(v))
        out.append(f"{line_tag(key)}={text}")
    return ",".join(out)


def _rfc3339(ns: int) -> str:
    secs, frac = divmod(int(ns), 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


# -- the outbox -----------------------------------------------------------------------------

_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY,
    body    BLOB    NOT NULL,
    n_lines INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS known (
    subject_id TEXT    NOT NULL,
    batch_id   TEXT    NOT NULL,
    channel    TEXT    NOT NULL,
    digest     TEXT    NOT NULL,
    end_ns     INTEGER NOT NULL,
    PRIMARY KEY (subject_id, batch_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS known_last ON known (subject_id, channel, end_ns);
CREATE TABLE IF NOT EXISTS queue (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT    NOT NULL,
    batch_id   TEXT    NOT NULL,
    n_samples  INTEGER NOT NULL,
    body       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_subject ON queue (subject_id, seq);
CREATE TABLE IF NOT EXISTS processing (
    subject_id TEXT    NOT NULL PRIMARY KEY,
    batch_seq  INTEGER NOT NULL,
    end_ns     INTEGER
) WITHOUT ROWID;
"""


#: What one batch puts in the outbox: its lines, its ``known`` row, its ``queue`` row.
_Entry = tuple[list[str], tuple[str, str, str, str, int] | None, tuple[str, str, int, str] | None]


class InfluxStore:
    """A :class:`~wearemo.store.base.StateStore` on InfluxDB (or a server speaking its APIs).

    Parameters
    ----------
    url
        Server base URL, e.g. ``http://localhost:8086``.
    write_mode
        ``"v2"`` (``influxdb-client``, ``/api/v2/write``) or ``"v1"`` (``/write``).
    database
        InfluxQL database for reads (and v1 writes); defaults to ``bucket``.
    bucket, org, token
        v2 write target and credentials (``token`` is also sent with reads).
    username, password
        v1 credentials (HTTP basic auth).
    buffer_dir
        Directory of the outbox file ``influx-outbox.sqlite3`` (created).
    buffer_max_bytes
        Outbox size at which writes raise :class:`StoreBackpressureError`.
    retry_interval_ms, max_retries
        The write API's first retry delay (doubling each time, at most 8 s apart) and retries
        per batch; after them the outbox keeps the lines and the sender backs off (≤ 2 s).
    read_wait_s
        How long a read waits for the outbox to drain before answering 503.
    timeout_s
        HTTP timeout of one request.

    Example
    -------
    >>> s = InfluxStore("http://127.0.0.1:8086", database="db", write_mode="v1",
    ...                 buffer_dir="/tmp/wearemo-influx-doc")             # doctest: +SKIP
    >>> s.ping()                                                          # doctest: +SKIP
    True
    """

    def __init__(
        self,
        url: str,
        *,
        write_mode: Literal["v2", "v1"] = "v2",
        database: str | None = None,
        bucket: str = "wearemo",
        org: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        buffer_dir: str | Path,
        buffer_max_bytes: int = 256 * 1024 * 1024,
        retry_interval_ms: int = 500,
        max_retries: int = 3,
        read_wait_s: float = 15.0,
        timeout_s: float = 10.0,
    ) -> None:
        if write_mode not in ("v2", "v1"):
            raise ValueError(f"unknown write_mode {write_mode!r}; options: 'v2', 'v1'")
        self.url = url.rstrip("/")
        self.write_mode = write_mode
        self.database = database or bucket
        self.bucket, self.org = bucket, org or "-"
        self.buffer_max_bytes = int(buffer_max_bytes)
        self.read_wait_s = read_wait_s
        self._token = token
        self._retry_interval_ms, self._max_retries = retry_interval_ms, max_retries
        headers = {"Authorization": f"Token {token}"} if token else {}
        auth = (username, password or "") if username else None
        self._http = httpx.Client(base_url=self.url, headers=headers, auth=auth,
                                  timeout=timeout_s)
        self._client: Any = None
        if write_mode == "v2":
            from influxdb_client import InfluxDBClient

            self._client = InfluxDBClient(url=self.url, token=token or "", org=self.org,
                                          enable_gzip=True, timeout=int(timeout_s * 1000))
        path = private_dir(buffer_dir)
        self.buffer_path = path / "influx-outbox.sqlite3"
        self._db = connect_wal(self.buffer_path, timeout_s=5.0)  # sqlite3's default timeout
        for statement in _OUTBOX_SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        self._lock = threading.RLock()  # the outbox connection and the counters below
        self._changed = threading.Condition(self._lock)
        self._buffered_bytes = int(
            self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox").fetchone()[0]
        )
        self._remote_last: dict[tuple[str, str], int | None] = {}
        self._last_error: str | None = None
        self._closed = False
        self._sender = threading.Thread(target=self._send_loop, name="influx-outbox",
                                        daemon=True)
        self._sender.start()

    # -- writing ----------------------------------------------------------------------------

    def add_batch(self, batch: SampleBatch) -> bool:
        """Queue a batch's samples and its registry point; ``False`` if its id is stored.

        Raises :class:`BatchConflictError` if the id is stored with different content, and
        :class:`StoreBackpressureError` when the outbox is full.
        """
        return self.add_batches([batch])[0]

    def add_batches(self, batches: Sequence[SampleBatch]) -> list[bool]:
        """:meth:`add_batch` for several batches in one outbox transaction (all or nothing).

        Each new batch also enters the local processing queue (same transaction), which the
        pipeline reads back with :meth:`pending_batches`.
        """
        return self._enqueue_many([self._batch_entry(b) for b in batches])

    def _batch_entry(self, batch: SampleBatch) -> _Entry | None:
        digest = batch_digest(batch)
        stored = self._stored_digest(batch.subject_id, batch.batch_id)
        if stored is not None:
            if stored != digest:
                raise BatchConflictError(
                    f"batch_id {batch.batch_id!r} of subject {batch.subject_id!r} was already "
                    "stored with different content"
                )
            return None
        times = batch.times_ns()
        tags = (f"channel={line_tag(batch.channel.value)},device={line_tag(batch.device_id)},"
                f"subject={line_tag(batch.subject_id)}")
        values = batch.values_array()
        if values.ndim == 1:
            lines = [f"samples,{tags} v={v!r} {t}" for v, t in
                     zip(values.tolist(), times.tolist(), strict=True)]
        else:
            lines = [f"samples,{tags} x={x!r},y={y!r},z={z!r} {t}" for (x, y, z), t in
                     zip(values.tolist(), times.tolist(), strict=True)]
        end_ns = int(times[-1])
        lines.append(f"batches,{tags} " + _fields([
            ("batch_id", batch.batch_id), ("digest", digest), ("n", batch.n_samples),
            ("start_ns", batch.start_ns), ("rate_hz", batch.rate_hz), ("seq", batch.seq),
            ("received_ns", time.time_ns())]) + f" {end_ns}")
        known = (batch.subject_id, batch.batch_id, batch.channel.value, digest, end_ns)
        queued = (batch.subject_id, batch.batch_id, batch.n_samples,
                  batch.model_dump_json(exclude_none=True))
        return lines, known, queued

    def has_batch(self, subject_id: str, batch_id: str) -> bool:
        """Whether the batch id of this subject is stored (or queued to be)."""
        return self._stored_digest(subject_id, batch_id) is not None

    def add_windows(self, windows: Sequence[FeatureWindow]) -> None:
        """Queue feature windows (a window at the same subject and end replaces the older)."""
        lines = []
        for w in windows:
            fields: list[tuple[str, object]] = [
                ("start_ns", int(w.start_ns)), ("body", window_to_json(w)),
                ("motion", bool(w.motion)), ("n_beats", int(w.n_beats)),
                ("beat_source", w.beat_source),
            ]
            fields += [(f"f_{k}", float(v)) for k, v in sorted(w.features.items())]
            lines.append(f"windows,subject={line_tag(w.subject_id)} {_fields(fields)} {w.end_ns}")
        if lines:
            self._enqueue(lines)

    def add_states(self, states: Sequence[StateEstimate]) -> None:
        """Queue state estimates (one at the same subject and window end replaces the older)."""
        lines = []
        for s in states:
            fields: list[tuple[str, object]] = [
                ("window_start_ns", int(s.window_start_ns)), ("state", s.state),
                ("p_stress", s.p_stress), ("arousal", s.arousal),
                ("model_version", s.model_version), ("variant", s.variant),
                ("body", s.model_dump_json()),
            ]
            lines.append(
                f"states,subject={line_tag(s.subject_id)} {_fields(fields)} {s.window_end_ns}")
        if lines:
            self._enqueue(lines)

    def set_calibration(self, calibration: Calibration) -> None:
        """Queue a subject's calibration period (the latest ``created_ns`` is the one in force)."""
        c = calibration
        fields = _fields([("start_ns", c.start_ns), ("windows_through_ns", c.windows_through_ns),
                          ("windows_used", c.windows_used), ("created_ns", c.created_ns)])
        self._enqueue([f"calibrations,subject={line_tag(c.subject_id)} {fields} {c.end_ns}"])

    def _enqueue(self, lines: list[str]) -> None:
        self._enqueue_many([(lines, None, None)])

    def _enqueue_many(self, entries: Sequence[_Entry | None]) -> list[bool]:
        """Write entries to the outbox in one transaction; per entry whether it was new
        (``None`` entries, and batches another thread stored meanwhile, are not)."""
        bodies = [None if e is None else "\n".join(e[0]).encode() for e in entries]
        size = sum(len(b) for b in bodies if b is not None)
        out: list[bool] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("InfluxStore is closed")
            if self._buffered_bytes + size > self.buffer_max_bytes:
                raise StoreBackpressureError(
                    f"InfluxDB write buffer full ({self._buffered_bytes} of "
                    f"{self.buffer_max_bytes} bytes waiting; server: "
                    f"{self._last_error or 'slow'}); nothing of this write was stored",
                    retry_after_s=5,
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for entry, body in zip(entries, bodies, strict=True):
                    if entry is None or body is None:
                        out.append(False)
                        continue
                    lines, known, queued = entry
                    if known is not None:
                        row = self._db.execute(
                            "SELECT digest FROM known WHERE subject_id = ? AND batch_id = ?",
                            known[:2]).fetchone()
                        if row is not None:  # stored by another thread since our check
                            if row[0] != known[3]:
                                raise BatchConflictError(
                                    f"batch_id {known[1]!r} of subject {known[0]!r} was "
                                    "already stored with different content")
                            out.append(False)
                            continue
                    self._db.execute("INSERT INTO outbox (body, n_lines) VALUES (?, ?)",
                                     (body, len(lines)))
                    if known is not None:
                        self._db.execute("INSERT INTO known VALUES (?, ?, ?, ?, ?)", known)
                    if queued is not None:
                        self._db.execute("INSERT INTO queue (subject_id, batch_id, n_samples, "
                                         "body) VALUES (?, ?, ?, ?)", queued)
                    self._buffered_bytes += len(body)
                    out.append(True)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._buffered_bytes = int(self._db.execute(
                    "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox").fetchone()[0])
                raise
            self._changed.notify_all()
        return out

    # -- the processing queue (local: the pipeline's durable work list) ------------------------

    def pending_batches(self, subject_id: str, *, after_seq: int,
                        limit: int = 1000) -> list[QueuedBatch]:
        """Queued batches of a subject after ``after_seq``, in arrival order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM queue WHERE subject_id = ? AND seq > ? ORDER BY seq "
                "LIMIT ?", (subject_id, int(after_seq), int(limit))).fetchall()
        return [QueuedBatch(int(seq), SampleBatch.model_validate_json(body))
                for seq, body in rows]

    def processing_cursor(self, subject_id: str) -> ProcessingCursor:
        """The subject's processing cursor.

        A subject without one was processed inline before the queue existed (or not at all):
        everything stored counts as processed, up to its latest sample.
        """
        with self._lock:
            row = self._db.execute("SELECT batch_seq, end_ns FROM processing WHERE "
                                   "subject_id = ?", (subject_id,)).fetchone()
            if row is not None:
                return ProcessingCursor(subject_id=subject_id, seq=int(row[0]),
                                        end_ns=None if row[1] is None else int(row[1]))
            first = self._db.execute("SELECT MIN(seq) FROM queue WHERE subject_id = ?",
                                     (subject_id,)).fetchone()[0]
        marks = [t for ch in Channel if (t := self.last_sample_ns(subject_id, ch)) is not None]
        if first is not None:  # queued before any processing: nothing of it is done
            return ProcessingCursor(subject_id=subject_id, seq=int(first) - 1,
                                    end_ns=None)
        return ProcessingCursor(subject_id=subject_id, end_ns=max(marks) if marks else None)

    def set_processing_cursor(self, cursor: ProcessingCursor) -> None:
        """Record the cursor and drop the processed batches from the local queue."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO processing VALUES (?, ?, ?)",
                                 (cursor.subject_id, cursor.seq, cursor.end_ns))
                self._db.execute("DELETE FROM queue WHERE subject_id = ? AND seq <= ?",
                                 (cursor.subject_id, cursor.seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending_counts(self) -> dict[str, tuple[int, int]]:
        """Subject -> ``(batches, samples)`` queued after its cursor."""
        with self._lock:
            rows = self._db.execute(
                "SELECT q.subject_id, COUNT(*), SUM(q.n_samples) FROM queue q LEFT JOIN "
                "processing p ON p.subject_id = q.subject_id "
                "WHERE q.seq > COALESCE(p.batch_seq, 0) GROUP BY q.subject_id").fetchall()
        return {str(sid): (int(n), int(k)) for sid, n, k in rows}

    # -- the sender -------------------------------------------------------------------------

    def buffered(self) -> tuple[int, int]:
        """``(rows, bytes)`` waiting in the outbox.

        Example
        -------
        >>> store.buffered()                                                  # doctest: +SKIP
        (0, 0)
        """
        with self._lock:
            n = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            return int(n), self._buffered_bytes

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued so far reached the server.

        Raises :class:`StoreUnavailableError` after ``timeout_s`` (default ``read_wait_s``).

        Example
        -------
        >>> store.flush(timeout_s=5)                                          # doctest: +SKIP
        """
        deadline = time.monotonic() + (self.read_wait_s if timeout_s is None else timeout_s)
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM outbox").fetchone()
            target = row[0]
            while target is not None:
                first = self._db.execute("SELECT MIN(id) FROM outbox").fetchone()[0]
                if first is None or first > target:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise StoreUnavailableError(
                        f"InfluxDB at {self.url} has not taken the queued writes "
                        f"({self._last_error or 'still sending'})", retry_after_s=5)
                self._changed.wait(min(left, 0.5))

    def _send_loop(self) -> None:
        backoff = 0.2
        while True:
            with self._lock:
                while not self._closed and self._buffered_bytes == 0:
                    self._changed.wait()
                if self._closed:
                    return
                rows = self._db.execute(
                    "SELECT id, body, n_lines FROM outbox ORDER BY id LIMIT 64").fetchall()
                picked: list[tuple[int, bytes]] = []
                n = 0
                for rid, body, lines in rows:
                    if picked and n + lines > 20 * BATCH_LINES:
                        break
                    picked.append((int(rid), bytes(body)))
                    n += lines
            try:
                done = self._send(picked)
                error = None
            except Exception as exc:  # the server is down or refused: keep, back off, retry
                done, error = [], f"{type(exc).__name__}: {exc}"
            with self._lock:
                if done:
                    marks = ",".join("?" * len(done))
                    sizes = self._db.execute(
                        f"SELECT COALESCE(SUM(LENGTH(body)), 0) FROM outbox WHERE id IN ({marks})",
                        done).fetchone()[0]
                    self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", done)
                    self._buffered_bytes -= int(sizes)
                self._last_error = error
                self._changed.notify_all()
                if error is not None:
                    log.warning("InfluxDB write failed, %d bytes kept for retry: %s",
                                self._buffered_bytes, error)
                    self._changed.wait(backoff)  # close() wakes us
                    backoff = min(backoff * 2, 2.0)
                else:
                    backoff = 0.2

    def _send(self, rows: list[tuple[int, bytes]]) -> list[int]:
        """Send outbox rows; the ids of those the server acknowledged in full."""
        if self.write_mode == "v1":
            done = []
            for rid, body in rows:
                lines = body.split(b"\n")
                for k in range(0, len(lines), BATCH_LINES):
                    r = self._http.post(
                        "/write", params={"db": self.database, "precision": "ns"},
                        content=gzip.compress(b"\n".join(lines[k:k + BATCH_LINES]), 1),
                        headers={"Content-Encoding": "gzip"})
                    if r.status_code != 204:
                        raise RuntimeError(f"/write answered {r.status_code}: {r.text[:200]}")
                done.append(rid)
            return done
        return self._send_v2(rows)

    def _send_v2(self, rows: list[tuple[int, bytes]]) -> list[int]:
        from influxdb_client import WriteOptions
        from influxdb_client.client.write_api import WritePrecision

        # line -> the rows holding it (a line re-sent in two rows is acknowledged for both)
        owners: dict[bytes, list[int]] = defaultdict(list)
        missing: dict[int, int] = {}
        for rid, body in rows:
            lines = body.split(b"\n")
            missing[rid] = len(lines)
            for line in lines:
                owners[line].append(rid)
        errors: list[str] = []

        def acked(_conf: object, data: str | bytes) -> None:
            raw = data.encode() if isinstance(data, str) else data
            for line in raw.split(b"\n"):
                for rid in owners.get(line, ()):
                    missing[rid] -= 1

        def failed(_conf: object, _data: object, exc: Exception) -> None:
            errors.append(f"{type(exc).__name__}: {exc}")

        options = WriteOptions(
            batch_size=BATCH_LINES, flush_interval=100, jitter_interval=0,
            retry_interval=self._retry_interval_ms, max_retries=self._max_retries,
            max_retry_delay=8000, exponential_base=2,
            max_retry_time=self._retry_interval_ms * 2 ** (self._max_retries + 1) + 60_000,
            max_close_wait=600_000)
        with self._client.write_api(write_options=options, success_callback=acked,
                                    error_callback=failed) as writer:
            for _, body in rows:
                writer.write(bucket=self.bucket, org=self.org, record=body.split(b"\n"),
                             write_precision=WritePrecision.NS)
        done = [rid for rid, left in missing.items() if left <= 0]
        if errors and len(done) < len(rows):
            raise RuntimeError(errors[-1])
        return done

    # -- queries ----------------------------------------------------------------------------

    def query(self, statements: str, *, post: bool = False) -> list[list[dict[str, Any]]]:
        """Run InfluxQL on ``/query`` (times as unix ns); per statement, its series.

        Each series is ``{"name", "tags", "columns", "values"}``; chunked answers are merged.

        Example
        -------
        >>> store.query('SHOW MEASUREMENTS')                                  # doctest: +SKIP
        [[{'name': 'measurements', 'columns': ['name'], 'values': [['samples'], ...]}]]
        """
        params = {"db": self.database, "q": statements, "epoch": "ns", "chunked": "true",
                  "chunk_size": "10000"}
        try:
            if post:
                r = self._http.post("/query", data=params)
            else:
                r = self._http.get("/query", params=params)
        except httpx.TransportError as exc:
            raise StoreUnavailableError(f"InfluxDB at {self.url} unreachable: {exc}") from exc
        if r.status_code >= 500:
            raise StoreUnavailableError(f"InfluxDB /query answered {r.status_code}")
        merged: dict[int, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        for chunk in r.text.splitlines():
            if not chunk.strip():
                continue
            doc = json.loads(chunk)
            if "error" in doc:
                raise InfluxQueryError(f"InfluxQL rejected ({doc['error']}): {statements[:200]}")
            for result in doc.get("results", []):
                if "error" in result:
                    raise InfluxQueryError(
                        f"InfluxQL rejected ({result['error']}): {statements[:200]}")
                sid = int(result.get("statement_id", 0))
                found = merged[sid]  # a statement without series still has a (empty) result
                for series in result.get("series", []):
                    key = (series.get("name", ""), json.dumps(series.get("tags", {}),
                                                              sort_keys=True))
                    if key in found:
                        found[key]["values"].extend(series.get("values", []))
                    else:
                        found[key] = {"name": key[0], "tags": series.get("tags", {}),
                                            "columns": series["columns"],
                                            "values": list(series.get("values", []))}
        if r.status_code >= 400:
            raise InfluxQueryError(f"/query answered {r.status_code}: {r.text[:200]}")
        n = max(merged, default=-1) + 1
        return [list(merged[i].values()) for i in range(n)]

    def _rows(self, statement: str) -> list[dict[str, Any]]:
        """The rows of a one-statement query as dicts (tags of a GROUP BY included)."""
        self.flush()
        out = []
        for series in (self.query(statement) or [[]])[0]:
            cols = series["columns"]
            for values in series["values"]:
                out.append({**series["tags"], **dict(zip(cols, values, strict=True))})
        return out

    @staticmethod
    def _where(subject_id: str, *, start_ns: int | None = None, end_ns: int | None = None,
               **tags: str) -> str:
        parts = [f'"subject" = {influxql_str(subject_id)}']
        parts += [f"{influxql_ident(k)} = {influxql_str(v)}" for k, v in tags.items()]
        if start_ns is not None:
            parts.append(f"time >= {int(start_ns)}")
        if end_ns is not None:
            parts.append(f"time < {int(end_ns)}")
        return " WHERE " + " AND ".join(parts)

    # -- reading ----------------------------------------------------------------------------

    def _stored_digest(self, subject_id: str, batch_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT digest FROM known WHERE subject_id = ? AND batch_id = ?",
                (subject_id, batch_id)).fetchone()
        if row is not None:
            return str(row[0])
        # Not written through this outbox: ask the server. When it cannot answer the id is
        # taken as new; a batch stored by another writer overlaps its channel's stored range
        # and the ordering check refuses it, and equal points would only replace themselves.
        try:
            rows = self.query(
                f'SELECT "digest" FROM "batches"{self._where(subject_id)} AND '
                f'"batch_id" = {influxql_str(batch_id)} LIMIT 1')
        except StoreUnavailableError:
            return None
        for series in rows[0] if rows else []:
            if series.get("name") == "batches" and "digest" in series["columns"]:
                for values in series["values"]:
                    return str(values[series["columns"].index("digest")])
        return None

    def last_sample_ns(self, subject_id: str, channel: Channel) -> int | None:
        """Latest sample time of a subject's channel (this outbox and the server)."""
        ch = Channel(channel).value
        with self._lock:
            local = self._db.execute(
                "SELECT MAX(end_ns) FROM known WHERE subject_id = ? AND channel = ?",
                (subject_id, ch)).fetchone()[0]
            key = (subject_id, ch)
            cached = key in self._remote_last
            remote = self._remote_last.get(key)
        if not cached:
            try:
                rows = self.query(f'SELECT last("n") FROM "batches"'
                                  f"{self._where(subject_id, channel=ch)}")
            except StoreUnavailableError:
                if local is None:
                    raise
                rows = []
            else:
                remote = max((int(v[0]) for s in rows[0] for v in s["values"]), default=None)
                with self._lock:
                    self._remote_last[key] = remote
        marks = [int(t) for t in (local, remote) if t is not None]
        return max(marks) if marks else None

    def samples(self, subject_id: str, channel: Channel, *, start_ns: int | None = None,
                end_ns: int | None = None) -> ChannelSamples:
        """Raw samples of one channel with ``start_ns <= t < end_ns``, time-ordered."""
        channel = Channel(channel)
        fields = _AXES[CHANNEL_AXES[channel]]
        rows = self._rows(
            f"SELECT {', '.join(influxql_ident(f) for f in fields)} FROM \"samples\""
            + self._where(subject_id, start_ns=start_ns, end_ns=end_ns, channel=channel.value))
        times = np.array([r["time"] for r in rows], dtype=np.int64)
        values = np.array([[r[f] for f in fields] for r in rows], dtype=np.float64)
        values = values.reshape(-1, 3) if len(fields) == 3 else values.reshape(-1)
        order = np.argsort(times, kind="stable")
        return ChannelSamples(times[order], values[order])

    def batches(self, subject_id: str, *, channel: Channel | None = None,
                start_ns: int | None = None, end_ns: int | None = None,
                limit: int = 10_000, through_seq: int | None = None) -> list[SampleBatch]:
        """Stored batches with samples in ``[start_ns, end_ns)``, as sent, by ``start_ns``;
        with ``through_seq``, without those still queued after it (not yet processed)."""
        if through_seq is not None:
            with self._lock:
                later = {r[0] for r in self._db.execute(
                    "SELECT batch_id FROM queue WHERE subject_id = ? AND seq > ?",
                    (subject_id, int(through_seq)))}
            return [b for b in self.batches(subject_id, channel=channel, start_ns=start_ns,
                                            end_ns=end_ns, limit=limit)
                    if b.batch_id not in later]
        where = self._where(subject_id, start_ns=start_ns)  # time = the batch's last sample
        if channel is not None:
            where += f' AND "channel" = {influxql_str(Channel(channel).value)}'
        if end_ns is not None:
            where += f' AND "start_ns" < {int(end_ns)}'
        heads = self._rows(
            'SELECT "batch_id", "n", "start_ns", "rate_hz", "seq" FROM "batches"' + where
            + ' GROUP BY "channel", "device"')
        heads.sort(key=lambda h: (h["start_ns"], h["time"]))
        heads = heads[: int(limit)]
        by_series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for h in heads:
            by_series[(h["channel"], h["device"])].append(h)
        out: dict[str, SampleBatch] = {}
        for (ch, device), hs in by_series.items():
            fields = _AXES[CHANNEL_AXES[Channel(ch)]]
            rows = self._rows(
                f"SELECT {', '.join(influxql_ident(f) for f in fields)} FROM \"samples\""
                + self._where(subject_id, start_ns=min(h["start_ns"] for h in hs),
                              end_ns=max(h["time"] for h in hs) + 1, channel=ch,
                              device=device))
            t = np.array([r["time"] for r in rows], dtype=np.int64)
            for h in hs:
                lo, hi = np.searchsorted(t, [h["start_ns"], h["time"] + 1])
                part = rows[lo:hi]
                values: list[Any] = ([[r[f] for f in fields] for r in part] if len(fields) == 3
                                     else [r["v"] for r in part])
                out[h["batch_id"]] = SampleBatch(
                    batch_id=h["batch_id"], subject_id=subject_id, device_id=device,
                    channel=Channel(ch),
                    start_ns=int(h["start_ns"]), rate_hz=h["rate_hz"],
                    timestamps_ns=None if h["rate_hz"] is not None else t[lo:hi].tolist(),
                    values=values, seq=h["seq"])
        return [out[h["batch_id"]] for h in heads if h["batch_id"] in out]

    def windows(self, subject_id: str, *, start_ns: int | None = None,
                end_ns: int | None = None, limit: int = 1000) -> list[FeatureWindow]:
        """Windows with ``start_ns <= window end < end_ns``, oldest first, at most ``limit``."""
        rows = self._rows('SELECT "start_ns", "body" FROM "windows"'
                          + self._where(subject_id, start_ns=start_ns, end_ns=end_ns)
                          + f" ORDER BY time ASC LIMIT {int(limit)}")
        return [window_from_json(subject_id, r["start_ns"], r["time"], r["body"]) for r in rows]

    def states(self, subject_id: str, *, start_ns: int | None = None,
               end_ns: int | None = None, limit: int = 1000) -> list[StateEstimate]:
        """States with ``start_ns <= window_end_ns < end_ns``, oldest first, at most ``limit``."""
        rows = self._rows('SELECT "body" FROM "states"'
                          + self._where(subject_id, start_ns=start_ns, end_ns=end_ns)
                          + f" ORDER BY time ASC LIMIT {int(limit)}")
        return [StateEstimate.model_validate_json(r["body"]) for r in rows]

    def latest_state(self, subject_id: str) -> StateEstimate | None:
        """The state with the latest window end, or ``None``."""
        rows = self._rows('SELECT "body" FROM "states"' + self._where(subject_id)
                          + " ORDER BY time DESC LIMIT 1")
        return StateEstimate.model_validate_json(rows[0]["body"]) if rows else None

    def calibration(self, subject_id: str) -> Calibration | None:
        """The subject's latest calibration (by ``created_ns``), or ``None``."""
        rows = self._rows('SELECT "start_ns", "windows_through_ns", "windows_used", '
                          '"created_ns" FROM "calibrations"' + self._where(subject_id))
        if not rows:
            return None
        r = max(rows, key=lambda r: (r["created_ns"], r["time"]))
        return Calibration(subject_id=subject_id, start_ns=r["start_ns"], end_ns=r["time"],
                           windows_through_ns=r["windows_through_ns"],
                           windows_used=r["windows_used"], created_ns=r["created_ns"])

    def subject_ids(self) -> list[str]:
        """All subjects with any stored batch, sorted."""
        rows = self._rows('SELECT count("n") FROM "batches" GROUP BY "subject"')
        return sorted(r["subject"] for r in rows if r["count"])

    def has_subject(self, subject_id: str) -> bool:
        """Whether any batch of the subject is stored (or queued)."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM known WHERE subject_id = ? LIMIT 1",
                                (subject_id,)).fetchone():
                return True
        return bool(self._rows('SELECT last("n") FROM "batches"' + self._where(subject_id)))

    def subject_summary(self, subject_id: str) -> SubjectSummary | None:
        """Counts for one subject, ``None`` when the subject has no stored batch."""
        where = self._where(subject_id)
        self.flush()
        res = self.query(
            f'SELECT count("n"), sum("n"), min("start_ns") FROM "batches"{where} '
            'GROUP BY "channel"; '
            f'SELECT last("n") FROM "batches"{where}; '
            f'SELECT count("start_ns") FROM "windows"{where}; '
            + "; ".join(f'SELECT count("window_start_ns") FROM "states"{where} AND '
                        f'"state" = {influxql_str(label)}'
                        for label in ("stress", "non_stress", "withheld")))
        channels = [{**s["tags"], **dict(zip(s["columns"], s["values"][0], strict=True))}
                    for s in res[0]]
        channels = [c for c in channels if c["count"]]
        if not channels:
            return None

        def count(i: int) -> int:
            return sum(int(v[1]) for s in res[i] for v in s["values"]) if len(res) > i else 0

        return SubjectSummary(
            subject_id=subject_id,
            samples={c["channel"]: int(c["sum"]) for c in sorted(channels,
                                                                   key=lambda c: c["channel"])},
            batches=sum(int(c["count"]) for c in channels),
            windows=count(2),
            states={label: count(3 + k) for k, label in
                    enumerate(("stress", "non_stress", "withheld"))},
            first_sample_ns=min(int(c["min"]) for c in channels),
            last_sample_ns=max(int(v[0]) for s in res[1] for v in s["values"]),
            last_state=self.latest_state(subject_id),
        )

    # -- privacy: erasure and retention ------------------------------------------------------

    def erase_subject(self, subject_id: str) -> dict[str, int]:
        """Delete every point of one subject on the server and in the outbox; counts per kind.

        The outbox is drained first (so no queued point of the subject lands afterwards);
        while the server is down this raises :class:`StoreUnavailableError`.
        """
        counts = self._counts(self._where(subject_id))
        for m in _MEASUREMENTS:
            self._delete(m, {"subject": subject_id})
        with self._lock:
            self._db.execute("DELETE FROM known WHERE subject_id = ?", (subject_id,))
            self._db.execute("DELETE FROM queue WHERE subject_id = ?", (subject_id,))
            self._db.execute("DELETE FROM processing WHERE subject_id = ?", (subject_id,))
            self._remote_last = {k: v for k, v in self._remote_last.items()
                                 if k[0] != subject_id}
        return counts

    def truncate_wal(self, *, wait_s: float = WAL_TRUNCATE_WAIT_S) -> bool:
        """Empty the outbox's write-ahead log, so the points and queued batches deleted from
        it leave no copy on disk (:func:`~wearemo.store.sqlite.truncate_wal`)."""
        return truncate_wal(self._db, lock=self._lock, wait_s=wait_s)

    def delete_before(self, cutoff_ns: int) -> dict[str, int]:
        """Retention on the server: batches (whole), windows, states, calibrations before it."""
        cutoff = int(cutoff_ns)
        counts = self._counts(f" WHERE time < {cutoff}")
        # A batch is kept whole when it reaches past the cutoff: per (subject, channel), samples
        # go up to the start of the first batch kept, or up to the cutoff.
        doomed = self._rows(f'SELECT count("n") FROM "batches" WHERE time < {cutoff} '
                            'GROUP BY "subject", "channel"')
        kept = self._rows(f'SELECT first("start_ns") FROM "batches" WHERE time >= {cutoff} '
                          'GROUP BY "subject", "channel"')
        first_kept = {(r["subject"], r["channel"]): int(r["first"]) for r in kept}
        for r in doomed:
            key = (r["subject"], r["channel"])
            bound = min(cutoff, first_kept.get(key, cutoff))
            self._delete("samples", {"subject": key[0], "channel": key[1]}, before_ns=bound)
        for m in ("batches", "windows", "states", "calibrations"):
            self._delete(m, {}, before_ns=cutoff)
        with self._lock:
            self._db.execute("DELETE FROM known WHERE end_ns < ?", (cutoff,))
            self._remote_last.clear()
        return counts

    def _counts(self, where: str) -> dict[str, int]:
        self.flush()
        res = self.query(
            f'SELECT count("n"), sum("n") FROM "batches"{where}; '
            f'SELECT count("start_ns") FROM "windows"{where}; '
            f'SELECT count("window_start_ns") FROM "states"{where}; '
            f'SELECT count("created_ns") FROM "calibrations"{where}')

        def col(i: int, j: int) -> int:
            return sum(int(v[j] or 0) for s in res[i] for v in s["values"]) if len(res) > i else 0

        return {"samples": col(0, 2), "batches": col(0, 1), "windows": col(1, 1),
                "states": col(2, 1), "calibrations": col(3, 1)}

    def _delete(self, measurement: str, tags: dict[str, str], *,
                before_ns: int | None = None) -> None:
        if self.write_mode == "v1":
            where = [f"{influxql_ident(k)} = {influxql_str(v)}" for k, v in tags.items()]
            if before_ns is not None:
                where.append(f"time < {int(before_ns)}")
            clause = " WHERE " + " AND ".join(where) if where else ""
            self.query(f"DELETE FROM {influxql_ident(measurement)}{clause}", post=True)
            return
        # InfluxDB 2.x/3.x: InfluxQL is read-only there; /api/v2/delete takes a predicate.
        pred = [f"_measurement={_delete_value(measurement)}"]
        pred += [f"{k}={_delete_value(v)}" for k, v in tags.items()]
        stop = (int(before_ns) - 1) if before_ns is not None else 2**62
        self._client.delete_api().delete(_rfc3339(0), _rfc3339(stop), " AND ".join(pred),
                                         bucket=self.bucket, org=self.org)

    # -- housekeeping -----------------------------------------------------------------------

    def ping(self) -> bool:
        """``True`` when the server answers ``/ping``."""
        try:
            return self._http.get("/ping").status_code == 204
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Stop the sender (queued lines stay in the outbox for the next start) and disconnect."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        self._sender.join(timeout=30)
        with self._lock:
            self._db.close()
        self._http.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> InfluxStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _delete_value(value: str) -> str:
    # /api/v2/delete predicate syntax: double-quoted string, \" and \\ escaped
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
