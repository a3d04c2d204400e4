"""The alerts' own SQLite file: rules (with their tracks), fired alerts and the webhook outbox.

It is independent of the state store (``data_dir / "alerts.sqlite3"`` by default), so the
alerts work the same over any :class:`~wearemo.store.StateStore`. Every write is one
transaction: a rule's new track, the alerts it fired and their deliveries are stored together,
so after a crash either all of them exist or none. Deliveries are the durable outbox: a
``pending`` row is sent (again) after a restart.

Secrets are kept in this file (they sign each delivery, so they cannot be hashed); the file is
created with mode 0600 and secrets are never returned by the API after creation.

Example
-------
>>> db = AlertDB(":memory:")
>>> rule = db.add_rule("s1", RuleSpec(kind="no_data", url="http://127.0.0.1:9/h"), "k" * 32,
...                    now_ns=0)
>>> [r.id for r in db.rules("s1")] == [rule.id]
True
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from wearemo.alerts.rules import NoDataTrack, RuleSpec, StressTrack
from wearemo.store.sqlite import connect_wal, truncate_wal

__all__ = ["AlertDB", "AlertRecord", "Attempt", "Delivery", "NewDelivery", "RuleRecord"]

DeliveryStatus = Literal["pending", "delivered", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (
    id TEXT PRIMARY KEY,
    subject_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    secret TEXT NOT NULL,
    track TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rules_subject ON rules (subject_id);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    fired_ns INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    resolved_ns INTEGER,
    resolved_reason TEXT
);
CREATE INDEX IF NOT EXISTS alerts_subject ON alerts (subject_id, created_ns);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ns INTEGER,
    created_ns INTEGER NOT NULL,
    finished_ns INTEGER,
    last_status_code INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_ns);
CREATE INDEX IF NOT EXISTS deliveries_subject ON deliveries (subject_id, created_ns);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_ns INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    next_retry_ns INTEGER,
    PRIMARY KEY (delivery_id, attempt)
);
"""


@dataclass(frozen=True, slots=True)
class RuleRecord:
    """A stored rule (its secret stays in the database)."""

    id: str
    subject_id: str
    spec: RuleSpec
    track: dict[str, Any]
    created_ns: int
    updated_ns: int

    def stress_track(self) -> StressTrack:
        """The track of a ``stress_sustained`` rule."""
        return StressTrack(**self.track)

    def no_data_track(self) -> NoDataTrack:
        """The track of a ``no_data`` rule."""
        return NoDataTrack(**self.track)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """A fired alert and, once its episode ended, when and why."""

    id: str
    rule_id: str
    subject_id: str
    kind: str
    fired_ns: int
    created_ns: int
    reason: str
    detail: dict[str, Any]
    resolved_ns: int | None
    resolved_reason: str | None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a delivery."""

    attempt: int
    started_ns: int
    duration_ms: float
    status_code: int | None
    error: str | None
    next_retry_ns: int | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook delivery in the outbox and its attempts so far."""

    id: str
    alert_id: str
    rule_id: str
    subject_id: str
    event: str
    url: str
    body: bytes
    status: DeliveryStatus
    attempts: int
    next_attempt_ns: int | None
    created_ns: int
    finished_ns: int | None
    last_status_code: int | None
    last_error: str | None
    history: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to enqueue with an event (see :meth:`AlertDB.record`)."""

    event: str
    url: str
    body: bytes


class AlertDB:
    """Thread-safe access to the alerts' SQLite file (one connection, one lock).

    Parameters
    ----------
    path
        The file (created with its directory), or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        # owner-only from the start (connect_wal): rule secrets and webhook bodies live here
        self._db = connect_wal(path, timeout_s=5.0)  # sqlite3's default busy timeout
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- rules ------------------------------------------------------------------------------

    def add_rule(self, subject_id: str, spec: RuleSpec, secret: str, *, now_ns: int) -> RuleRecord:
        """Store a new rule with a fresh (idle) track."""
        rid = uuid.uuid4().hex
        track = StressTrack() if spec.kind == "stress_sustained" else NoDataTrack()
        with self._tx() as db:
            db.execute(
                "INSERT INTO rules VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rid, subject_id, _spec_json(spec), secret, json.dumps(track.to_dict()),
                 now_ns, now_ns),
            )
        return RuleRecord(rid, subject_id, spec.model_copy(update={"secret": None}),
                          track.to_dict(), now_ns, now_ns)

    def replace_rule(
        self, rule_id: str, spec: RuleSpec, secret: str | None, *, now_ns: int
    ) -> RuleRecord | None:
        """Replace a rule's settings (and secret, unless ``None``); its track starts afresh."""
        track = StressTrack() if spec.kind == "stress_sustained" else NoDataTrack()
        with self._tx() as db:
            row = db.execute("SELECT subject_id, created_ns FROM rules WHERE id = ?",
                             (rule_id,)).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE rules SET spec = ?, track = ?, updated_ns = ?, secret = COALESCE(?, secret)"
                " WHERE id = ?",
                (_spec_json(spec), json.dumps(track.to_dict()), now_ns, secret, rule_id),
            )
            _close_open_alerts(db, rule_id, now_ns, "rule changed")
        return RuleRecord(rule_id, row[0], spec.model_copy(update={"secret": None}),
                          track.to_dict(), row[1], now_ns)

    def delete_rule(self, rule_id: str) -> bool:
        """Delete a rule; its undelivered webhooks are marked failed. ``False`` if unknown."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM rules WHERE id = ?", (rule_id,)).rowcount > 0
            _close_open_alerts(db, rule_id, time.time_ns(), "rule deleted")
            db.execute(
                "UPDATE deliveries SET status = 'failed', next_attempt_ns = NULL, "
                "last_error = 'rule deleted' WHERE rule_id = ? AND status = 'pending'",
                (rule_id,),
            )
        return gone

    def erase_subject(self, subject_id: str) -> int:
        """Delete everything of a subject: rules, alerts, deliveries and their attempts.

        For the erasure of a subject (privacy); returns the rows deleted.

        Example
        -------
        >>> AlertDB(":memory:").erase_subject("s1")
        0
        """
        with self._tx() as db:
            n = db.execute("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries "
                           "WHERE subject_id = ?)", (subject_id,)).rowcount
            for table in ("deliveries", "alerts", "rules"):
                n += db.execute(f"DELETE FROM {table} WHERE subject_id = ?",
                                (subject_id,)).rowcount
        return n

    def truncate_wal(self) -> bool:
        """Empty the write-ahead log, so erased rows leave no copy on disk
        (:func:`~wearemo.store.sqlite.truncate_wal`).

        Example
        -------
        >>> AlertDB(":memory:").truncate_wal()
        True
        """
        return truncate_wal(self._db, lock=self._lock)

    def rule(self, rule_id: str) -> RuleRecord | None:
        """One rule, or ``None``."""
        with self._lock:
            row = self._db.execute(f"SELECT {_RULE_COLS} FROM rules WHERE id = ?",
                                   (rule_id,)).fetchone()
        return None if row is None else _rule(row)

    def rules(self, subject_id: str | None = None, *, kind: str | None = None) -> list[RuleRecord]:
        """Rules of a subject (all subjects when ``None``), oldest first."""
        sql = f"SELECT {_RULE_COLS} FROM rules WHERE 1=1"
        args: list[Any] = []
        if subject_id is not None:
            sql += " AND subject_id = ?"
            args.append(subject_id)
        if kind is not None:
            sql += " AND json_extract(spec, '$.kind') = ?"
            args.append(kind)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_ns, id", args).fetchall()
        return [_rule(r) for r in rows]

    def subjects_with_rules(self) -> set[str]:
        """Subjects that have at least one rule."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT subject_id FROM rules")}

    def secret(self, rule_id: str) -> str | None:
        """A rule's webhook secret (for signing only)."""
        with self._lock:
            row = self._db.execute("SELECT secret FROM rules WHERE id = ?", (rule_id,)).fetchone()
        return None if row is None else str(row[0])

    # -- evaluation results -----------------------------------------------------------------

    def record(
        self,
        rule_id: str,
        track: dict[str, Any],
        fired: Sequence[tuple[AlertRecord, NewDelivery]] = (),
        resolved: Sequence[tuple[str, int, str, NewDelivery]] = (),
        *,
        now_ns: int,
    ) -> None:
        """Store a rule's new track, the alerts it fired, resolutions and their deliveries.

        ``resolved`` items are ``(alert_id, at_ns, reason, delivery)`` and close that alert.
        Nothing is stored if the rule was deleted meanwhile.
        """
        with self._tx() as db:
            if db.execute("UPDATE rules SET track = ? WHERE id = ?",
                          (json.dumps(track), rule_id)).rowcount == 0:
                return
            for alert, delivery in fired:
                db.execute(
                    "INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                    (alert.id, alert.rule_id, alert.subject_id, alert.kind, alert.fired_ns,
                     alert.created_ns, alert.reason, json.dumps(alert.detail)),
                )
                _enqueue(db, alert.id, alert.rule_id, alert.subject_id, delivery, now_ns)
            for alert_id, at_ns, reason, delivery in resolved:
                row = db.execute("SELECT subject_id FROM alerts WHERE id = ? AND resolved_ns IS "
                                 "NULL", (alert_id,)).fetchone()
                if row is None:
                    continue
                db.execute("UPDATE alerts SET resolved_ns = ?, resolved_reason = ? WHERE id = ?",
                           (at_ns, reason, alert_id))
                _enqueue(db, alert_id, rule_id, row[0], delivery, now_ns)

    def open_alert_id(self, rule_id: str) -> str | None:
        """The id of the rule's alert that has not resolved yet."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM alerts WHERE rule_id = ? AND resolved_ns IS NULL "
                "ORDER BY created_ns DESC LIMIT 1", (rule_id,)).fetchone()
        return None if row is None else str(row[0])

    def alerts(self, subject_id: str, *, limit: int = 100) -> list[AlertRecord]:
        """A subject's fired alerts, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, rule_id, subject_id, kind, fired_ns, created_ns, reason, detail, "
                "resolved_ns, resolved_reason FROM alerts WHERE subject_id = ? "
                "ORDER BY created_ns DESC, rowid DESC LIMIT ?", (subject_id, limit)).fetchall()
        return [AlertRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8], r[9])
                for r in rows]

    # -- outbox -----------------------------------------------------------------------------

    def due(self, now_ns: int, *, limit: int, exclude: Sequence[str] = ()) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE status = 'pending' AND "
                "next_attempt_ns <= ? ORDER BY next_attempt_ns, created_ns LIMIT ?",
                (now_ns, limit + len(exclude))).fetchall()
        skip = set(exclude)
        return [_delivery(r) for r in rows if r[0] not in skip][:limit]

    def next_due_ns(self) -> int | None:
        """When the earliest pending delivery is due (``None``: outbox empty)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_ns) FROM deliveries "
                                   "WHERE status = 'pending'").fetchone()
        return None if row[0] is None else int(row[0])

    def pending_count(self) -> int:
        """Deliveries not yet delivered or given up."""
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0])

    def record_attempt(
        self,
        delivery_id: str,
        attempt: Attempt,
        *,
        status: DeliveryStatus,
        now_ns: int,
    ) -> None:
        """Store one attempt and the delivery's new status / next try."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (delivery_id, attempt.attempt, attempt.started_ns, attempt.duration_ms,
                 attempt.status_code, attempt.error, attempt.next_retry_ns),
            )
            db.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_ns = ?, "
                "finished_ns = ?, last_status_code = ?, last_error = ? "
                "WHERE id = ? AND status = 'pending'",
                (status, attempt.attempt, attempt.next_retry_ns,
                 None if status == "pending" else now_ns, attempt.status_code, attempt.error,
                 delivery_id),
            )

    def deliveries(self, subject_id: str, *, limit: int = 100) -> list[Delivery]:
        """A subject's deliveries with every attempt, newest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE subject_id = ? "
                "ORDER BY created_ns DESC, rowid DESC LIMIT ?", (subject_id, limit)).fetchall()
            out = []
            for r in rows:
                tries = self._db.execute(
                    "SELECT attempt, started_ns, duration_ms, status_code, error, next_retry_ns "
                    "FROM attempts WHERE delivery_id = ? ORDER BY attempt", (r[0],)).fetchall()
                out.append(_delivery(r, tuple(Attempt(*t) for t in tries)))
        return out


_RULE_COLS = "id, subject_id, spec, track, created_ns, updated_ns"
_DELIVERY_FIELDS = ("id", "alert_id", "rule_id", "subject_id", "event", "url", "body", "status",
                    "attempts", "next_attempt_ns", "created_ns", "finished_ns",
                    "last_status_code", "last_error")
_DELIVERY_COLS = ", ".join(_DELIVERY_FIELDS)


def _spec_json(spec: RuleSpec) -> str:
    return spec.model_dump_json(exclude={"secret"})


def _rule(row: Sequence[Any]) -> RuleRecord:
    return RuleRecord(row[0], row[1], RuleSpec.model_validate_json(row[2]), json.loads(row[3]),
                      row[4], row[5])


def _delivery(row: Sequence[Any], history: tuple[Attempt, ...] = ()) -> Delivery:
    values = dict(zip(_DELIVERY_FIELDS, row, strict=True))
    values["body"] = bytes(values["body"])
    return Delivery(**values, history=history)


def _enqueue(db: sqlite3.Connection, alert_id: str, rule_id: str, subject_id: str,
             d: NewDelivery, now_ns: int) -> None:
    db.execute(
        "INSERT INTO deliveries (id, alert_id, rule_id, subject_id, event, url, body, status, "
        "attempts, next_attempt_ns, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
        (uuid.uuid4().hex, alert_id, rule_id, subject_id, d.event, d.url, d.body, now_ns, now_ns),
    )


def _close_open_alerts(db: sqlite3.Connection, rule_id: str, now_ns: int, reason: str) -> None:
    # An episode cut short by a rule change is closed, not left open for ever.
    db.execute("UPDATE alerts SET resolved_ns = ?, resolved_reason = ? WHERE rule_id = ? AND "
               "resolved_ns IS NULL", (now_ns, reason, rule_id))
