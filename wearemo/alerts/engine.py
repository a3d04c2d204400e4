"""The alert engine: rules in, fired alerts and webhook deliveries out, off the ingest path.

:meth:`AlertEngine.submit` is a :data:`~wearemo.pipeline.StateListener`: it only puts the new
states on a queue (and only for subjects that have rules), so ingest never waits for rule
evaluation or SQLite. One worker thread evaluates the queued states in order, checks the
``no_data`` rules every ``check_interval_s`` and stores each rule's new track together with its
alerts and their deliveries (:meth:`~wearemo.alerts.db.AlertDB.record`); the
:class:`~wearemo.alerts.webhooks.Dispatcher` then sends them.

Example
-------
>>> engine = AlertEngine(AlertDB(":memory:"), store)                      # doctest: +SKIP
>>> unsubscribe = pipeline.subscribe(engine.submit)                      # doctest: +SKIP
>>> engine.start()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from wearemo.alerts.db import AlertDB, AlertRecord, NewDelivery, RuleRecord
from wearemo.alerts.rules import Event, RuleSpec, no_data_step, stress_step
from wearemo.model import StateEstimate
from wearemo.samples import Channel
from wearemo.store import StateStore

__all__ = ["AlertEngine"]

log = logging.getLogger(__name__)

#: Version of the webhook body layout (``docs/alerts.md``).
PAYLOAD_VERSION = 1


class AlertEngine:
    """Evaluates the rules of every subject and fills the webhook outbox.

    Parameters
    ----------
    db
        Rules, alerts and outbox.
    store
        The state store (newest sample per subject for ``no_data``).
    check_interval_s
        How often ``no_data`` rules are checked, seconds.
    on_change
        Called (from the worker thread) after deliveries were enqueued, e.g.
        :meth:`~wearemo.alerts.webhooks.Dispatcher.wake`.
    on_fired
        Called with the rule kind of each fired alert (metrics).
    clock_ns
        Wall clock (``time.time_ns``).
    """

    def __init__(
        self,
        db: AlertDB,
        store: StateStore,
        *,
        check_interval_s: float = 60.0,
        on_change: Callable[[], None] = lambda: None,
        on_fired: Callable[[str], None] = lambda kind: None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.db = db
        self.store = store
        self.check_interval_s = check_interval_s
        self.on_change = on_change
        self.on_fired = on_fired
        self.clock_ns = clock_ns
        self._queue: queue.SimpleQueue[Sequence[StateEstimate] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # rule changes vs. evaluation
        self._watched = frozenset(db.subjects_with_rules())
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="wearemo-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Evaluate what is queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def submit(self, states: Sequence[StateEstimate]) -> None:
        """Queue new states for evaluation (the pipeline listener; never blocks)."""
        if states and states[0].subject_id in self._watched:
            self._queue.put(states)

    def queue_depth(self) -> int:
        """State batches waiting for evaluation."""
        return self._queue.qsize()

    # -- rules ------------------------------------------------------------------------------

    def create_rule(self, subject_id: str, spec: RuleSpec) -> tuple[RuleRecord, str]:
        """Store a rule; returns it and its secret (the only time the secret is given out).

        Example
        -------
        >>> rule, secret = engine.create_rule("s1", spec)  # doctest: +SKIP
        """
        secret = spec.secret or secrets.token_urlsafe(32)
        with self._lock:
            rule = self.db.add_rule(subject_id, spec, secret, now_ns=self.clock_ns())
            self._watched = self._watched | {subject_id}
        return rule, secret

    def replace_rule(self, rule_id: str, spec: RuleSpec) -> RuleRecord | None:
        """Replace a rule's settings (its secret too when ``spec.secret`` is set)."""
        with self._lock:
            return self.db.replace_rule(rule_id, spec, spec.secret, now_ns=self.clock_ns())

    def delete_rule(self, rule_id: str) -> bool:
        """Delete a rule (its pending deliveries are dropped)."""
        with self._lock:
            gone = self.db.delete_rule(rule_id)
            self._watched = frozenset(self.db.subjects_with_rules())
        return gone

    def erase_subject(self, subject_id: str) -> int:
        """Forget a subject's rules, alerts and deliveries (erasure); returns rows deleted."""
        with self._lock:
            n = self.db.erase_subject(subject_id)
            self._watched = frozenset(self.db.subjects_with_rules())
        return n

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, states: Sequence[StateEstimate]) -> None:
        """Run one subject's new states (window order) through its ``stress_sustained`` rules."""
        if not states:
            return
        subject = states[0].subject_id
        changed = False
        with self._lock:
            for rule in self.db.rules(subject, kind="stress_sustained"):
                if not rule.spec.enabled:
                    continue
                track = rule.stress_track()
                events: list[Event] = []
                for state in states:
                    events += stress_step(rule.spec, track, state)
                changed |= self._record(rule, track.to_dict(), events)
        if changed:
            self.on_change()

    def check_no_data(self) -> None:
        """Check every ``no_data`` rule against the newest stored sample of its subject."""
        changed = False
        with self._lock:
            for rule in self.db.rules(kind="no_data"):
                if not rule.spec.enabled:
                    continue
                track = rule.no_data_track()
                latest = self._latest_sample_ns(rule.subject_id)
                events = no_data_step(rule.spec, track, latest_sample_ns=latest,
                                      now_ns=self.clock_ns())
                if events or track.to_dict() != rule.track:
                    changed |= self._record(rule, track.to_dict(), events)
        if changed:
            self.on_change()

    def _latest_sample_ns(self, subject_id: str) -> int | None:
        lasts = [t for ch in Channel
                 if (t := self.store.last_sample_ns(subject_id, ch)) is not None]
        return max(lasts) if lasts else None

    def _record(self, rule: RuleRecord, track: dict[str, Any], events: Sequence[Event]) -> bool:
        now = self.clock_ns()
        fired: list[tuple[AlertRecord, NewDelivery]] = []
        resolved: list[tuple[str, int, str, NewDelivery]] = []
        open_id = self.db.open_alert_id(rule.id) if events else None
        for ev in events:
            if ev.kind == "fired":
                alert = AlertRecord(uuid.uuid4().hex, rule.id, rule.subject_id, rule.spec.kind,
                                    ev.at_ns, now, ev.reason, ev.detail, None, None)
                fired.append((alert, self._delivery(rule, alert.id, ev)))
                open_id = alert.id
                self.on_fired(rule.spec.kind)
            elif open_id is not None:
                resolved.append((open_id, ev.at_ns, ev.reason, self._delivery(rule, open_id, ev)))
                open_id = None
        self.db.record(rule.id, track, fired, resolved, now_ns=now)
        return bool(fired or resolved)

    @staticmethod
    def _delivery(rule: RuleRecord, alert_id: str, ev: Event) -> NewDelivery:
        body = {
            "version": PAYLOAD_VERSION,
            "event": f"alert.{ev.kind}",
            "alert_id": alert_id,
            "rule_id": rule.id,
            "subject_id": rule.subject_id,
            "kind": rule.spec.kind,
            "at_ns": ev.at_ns,
            "reason": ev.reason,
            "detail": ev.detail,
        }
        return NewDelivery(f"alert.{ev.kind}", str(rule.spec.url),
                           json.dumps(body, separators=(",", ":")).encode())

    def _run(self) -> None:
        next_check = time.monotonic()
        while True:
            if time.monotonic() >= next_check:
                try:
                    self.check_no_data()
                except Exception:
                    log.exception("no_data check failed")
                next_check = time.monotonic() + self.check_interval_s
            try:
                item = self._queue.get(timeout=max(next_check - time.monotonic(), 0.0))
            except queue.Empty:
                continue
            if item is None:
                return
            try:
                self.evaluate(item)
            except Exception:
                log.exception("alert evaluation failed for %r", item[0].subject_id)
