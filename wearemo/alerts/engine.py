"""The alert engine: rules in, fired alerts and webhook deliveries out, off the ingest path.

:meth:`AlertEngine.submit` is a :data:`~wearemo.pipeline.StateListener`: it only puts the new
states on a queue (and only for subjects that have rules), so ingest never waits for rule
evaluation or SQLite. One worker thread evaluates the queued states in order, checks the
``no_data`` rules every ``check_interval_s`` and stores each rule's new track together with its
alerts and their deliveries (:meth:`~wearemo.alerts.db.AlertDB.record`); the
:class:`~wearemo.alerts.webhooks.Dispatcher` then sends them.

A cohort's rule is evaluated for every member, each with its own track; who is a member is
asked (``cohorts_of`` / ``members_of``) at each evaluation, so members added later are covered
from their first state (``stress_sustained``) or the next check (``no_data``). Rule URLs are
checked against the webhook destination policy when a rule is created or replaced
(:func:`~wearemo.alerts.destinations.check_destination`).

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
from collections.abc import Callable, Collection, Sequence
from typing import Any

from wearemo.alerts.db import AlertDB, AlertRecord, NewDelivery, RuleRecord
from wearemo.alerts.destinations import WebhookAllowList, check_destination
from wearemo.alerts.rules import (
    Event,
    NoDataTrack,
    RuleSpec,
    StressTrack,
    no_data_step,
    stress_step,
)
from wearemo.model import StateEstimate
from wearemo.samples import Channel
from wearemo.store import StateStore

__all__ = ["AlertEngine"]

log = logging.getLogger(__name__)

#: Version of the webhook body layout (``docs/alerts.md``).
PAYLOAD_VERSION = 1


def _idle_track(spec: RuleSpec) -> dict[str, Any]:
    return (StressTrack() if spec.kind == "stress_sustained" else NoDataTrack()).to_dict()


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
    allow
        Intranet webhook receivers allowed besides public addresses.
    cohorts_of, members_of
        The cohorts a subject is in, and a cohort's members (none when it does not exist).
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
        allow: WebhookAllowList | None = None,
        cohorts_of: Callable[[str], Collection[str]] = lambda subject: (),
        members_of: Callable[[str], Collection[str]] = lambda cohort: (),
    ) -> None:
        self.db = db
        self.store = store
        self.check_interval_s = check_interval_s
        self.on_change = on_change
        self.on_fired = on_fired
        self.clock_ns = clock_ns
        self.allow = allow if allow is not None else WebhookAllowList()
        self.cohorts_of = cohorts_of
        self.members_of = members_of
        self._queue: queue.SimpleQueue[Sequence[StateEstimate] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # rule changes vs. evaluation
        self._watched = frozenset(db.subjects_with_rules())
        self._cohort_rules = db.has_cohort_rules()
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
        # With cohort rules any subject may be a member: the worker asks, not the ingest path.
        if states and (self._cohort_rules or states[0].subject_id in self._watched):
            self._queue.put(states)

    def queue_depth(self) -> int:
        """State batches waiting for evaluation."""
        return self._queue.qsize()

    # -- rules ------------------------------------------------------------------------------

    def create_rule(self, subject_id: str, spec: RuleSpec) -> tuple[RuleRecord, str]:
        """Store a rule; returns it and its secret (the only time the secret is given out).

        Raises
        ------
        DestinationRefusedError
            The rule's URL points at a non-public address that is not allow-listed.

        Example
        -------
        >>> rule, secret = engine.create_rule("s1", spec)  # doctest: +SKIP
        """
        check_destination(str(spec.url), self.allow)
        secret = spec.secret or secrets.token_urlsafe(32)
        with self._lock:
            rule = self.db.add_rule(subject_id, spec, secret, now_ns=self.clock_ns())
            self._watched = self._watched | {subject_id}
        return rule, secret

    def create_cohort_rule(self, cohort: str, spec: RuleSpec) -> tuple[RuleRecord, str]:
        """Store a rule for every current and future member of ``cohort``; returns it and its
        secret (given out only now).

        Raises
        ------
        DestinationRefusedError
            As :meth:`create_rule`.

        Example
        -------
        >>> rule, secret = engine.create_cohort_rule("trial-a", spec)  # doctest: +SKIP
        """
        check_destination(str(spec.url), self.allow)
        secret = spec.secret or secrets.token_urlsafe(32)
        with self._lock:
            rule = self.db.add_cohort_rule(cohort, spec, secret, now_ns=self.clock_ns())
            self._cohort_rules = True
        return rule, secret

    def replace_rule(self, rule_id: str, spec: RuleSpec) -> RuleRecord | None:
        """Replace a rule's settings (its secret too when ``spec.secret`` is set).

        Raises
        ------
        DestinationRefusedError
            As :meth:`create_rule`; the rule is unchanged.
        """
        check_destination(str(spec.url), self.allow)
        with self._lock:
            return self.db.replace_rule(rule_id, spec, spec.secret, now_ns=self.clock_ns())

    def delete_rule(self, rule_id: str) -> bool:
        """Delete a rule (its pending deliveries are dropped)."""
        with self._lock:
            gone = self.db.delete_rule(rule_id)
            self._refresh_watched()
        return gone

    def erase_subject(self, subject_id: str) -> int:
        """Forget a subject's rules, alerts and deliveries (erasure); returns rows deleted."""
        with self._lock:
            n = self.db.erase_subject(subject_id)
            self._refresh_watched()
        return n

    def _refresh_watched(self) -> None:
        self._watched = frozenset(self.db.subjects_with_rules())
        self._cohort_rules = self.db.has_cohort_rules()

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, states: Sequence[StateEstimate]) -> None:
        """Run one subject's new states (window order) through its ``stress_sustained`` rules
        and those of its cohorts."""
        if not states:
            return
        subject = states[0].subject_id
        changed = False
        with self._lock:
            rules = self.db.rules(subject, kind="stress_sustained")
            if self._cohort_rules:
                rules += self.db.cohort_rules(list(self.cohorts_of(subject)),
                                              kind="stress_sustained")
            for rule in rules:
                if not rule.spec.enabled:
                    continue
                track = StressTrack(**self._track(rule, subject))
                events: list[Event] = []
                for state in states:
                    events += stress_step(rule.spec, track, state)
                changed |= self._record(rule, subject, track.to_dict(), events)
        if changed:
            self.on_change()

    def check_no_data(self) -> None:
        """Check every ``no_data`` rule against the newest stored sample of its subject (of
        each member, for a cohort's rule)."""
        changed = False
        with self._lock:
            for rule in self.db.rules(kind="no_data"):
                if not rule.spec.enabled:
                    continue
                subjects = ([rule.subject_id] if rule.subject_id is not None
                            else sorted(self.members_of(rule.cohort or "")))
                for subject in subjects:
                    before = self._track(rule, subject)
                    track = NoDataTrack(**before)
                    latest = self._latest_sample_ns(subject)
                    events = no_data_step(rule.spec, track, latest_sample_ns=latest,
                                          now_ns=self.clock_ns())
                    if events or track.to_dict() != before:
                        changed |= self._record(rule, subject, track.to_dict(), events)
        if changed:
            self.on_change()

    def member_status(self, rule: RuleRecord) -> dict[str, dict[str, Any]]:
        """A cohort rule's track for each current member (idle until first evaluated).

        Example
        -------
        >>> engine.member_status(cohort_rule)["s01"]["phase"]  # doctest: +SKIP
        'idle'
        """
        stored = self.db.member_tracks(rule.id)
        return {m: stored.get(m) or _idle_track(rule.spec)
                for m in sorted(self.members_of(rule.cohort or ""))}

    def _track(self, rule: RuleRecord, subject: str) -> dict[str, Any]:
        """The rule's track for ``subject`` (a cohort member's starts idle)."""
        if rule.cohort is None:
            return rule.track
        stored = self.db.member_track(rule.id, subject)
        return stored if stored is not None else _idle_track(rule.spec)

    def _latest_sample_ns(self, subject_id: str) -> int | None:
        lasts = [t for ch in Channel
                 if (t := self.store.last_sample_ns(subject_id, ch)) is not None]
        return max(lasts) if lasts else None

    def _record(self, rule: RuleRecord, subject: str, track: dict[str, Any],
                events: Sequence[Event]) -> bool:
        now = self.clock_ns()
        member = None if rule.cohort is None else subject
        fired: list[tuple[AlertRecord, NewDelivery]] = []
        resolved: list[tuple[str, int, str, NewDelivery]] = []
        open_id = self.db.open_alert_id(rule.id, member) if events else None
        for ev in events:
            if ev.kind == "fired":
                alert = AlertRecord(uuid.uuid4().hex, rule.id, subject, rule.spec.kind,
                                    ev.at_ns, now, ev.reason, ev.detail, None, None)
                fired.append((alert, self._delivery(rule, subject, alert.id, ev)))
                open_id = alert.id
                self.on_fired(rule.spec.kind)
            elif open_id is not None:
                resolved.append((open_id, ev.at_ns, ev.reason,
                                 self._delivery(rule, subject, open_id, ev)))
                open_id = None
        self.db.record(rule.id, track, fired, resolved, now_ns=now, member=member)
        return bool(fired or resolved)

    @staticmethod
    def _delivery(rule: RuleRecord, subject: str, alert_id: str, ev: Event) -> NewDelivery:
        body = {
            "version": PAYLOAD_VERSION,
            "event": f"alert.{ev.kind}",
            "alert_id": alert_id,
            "rule_id": rule.id,
            "subject_id": subject,
            "cohort": rule.cohort,
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
