"""Cohort rules in the engine (each member its own episode, members joining later), and an
alerts file written before cohort rules existed opening unchanged (real SQLite files)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from wearemo.alerts import AlertDB, AlertEngine, RuleSpec
from wearemo.model import StateEstimate
from wearemo.samples import Channel

S = 1_000_000_000
T0 = 1_700_000_000 * S
URL = "https://hooks.example.invalid/h"
STRESS = RuleSpec(kind="stress_sustained", url=URL, threshold=0.8, duration_s=60, max_gap_s=30)


def state(t_s: float, p: float, subject: str) -> StateEstimate:
    end = T0 + int(t_s * S)
    return StateEstimate(subject_id=subject, window_start_ns=end - 60 * S, window_end_ns=end,
                         state="stress" if p >= 0.5 else "non_stress", p_stress=p,
                         model_version="test")


class _Store:
    """The newest sample per subject, for no_data."""

    def __init__(self) -> None:
        self.latest: dict[str, int] = {}

    def last_sample_ns(self, subject_id: str, channel: Channel) -> int | None:
        return self.latest.get(subject_id) if channel is Channel.EDA else None


def _engine(cohorts: dict[str, set[str]], store: _Store | None = None,
            clock: list[int] | None = None) -> AlertEngine:
    now = clock if clock is not None else [0]
    return AlertEngine(
        AlertDB(":memory:"), store or _Store(),  # type: ignore[arg-type]
        cohorts_of=lambda s: sorted(c for c, m in cohorts.items() if s in m),
        members_of=lambda c: sorted(cohorts.get(c, ())), clock_ns=lambda: now[0])


def test_each_member_has_its_own_episode_and_later_members_are_covered() -> None:
    cohorts = {"ca": {"s1"}, "cb": {"s9"}}
    engine = _engine(cohorts)
    rule, _ = engine.create_cohort_rule("ca", STRESS)
    assert engine.member_status(rule) == {"s1": engine.member_status(rule)["s1"]}
    engine.submit([state(0, 0.9, "s7")])  # any subject may be a member: queued for the worker
    assert engine.queue_depth() == 1

    engine.evaluate([state(t, 0.9, "s1") for t in range(0, 40, 5)])
    engine.evaluate([state(t, 0.9, "s9") for t in range(0, 70, 5)])  # not a member of ca
    assert engine.db.alerts("s1") == [] and engine.db.alerts("s9") == []
    engine.evaluate([state(t, 0.9, "s1") for t in range(40, 70, 5)])
    [a1] = engine.db.alerts("s1")
    assert a1.fired_ns == T0 + 60 * S and a1.rule_id == rule.id

    cohorts["ca"].add("s2")  # joins later: evaluated from its first state, from idle
    engine.evaluate([state(t, 0.9, "s2") for t in range(100, 165, 5)])
    [a2] = engine.db.alerts("s2")
    assert a2.fired_ns == T0 + 160 * S
    status = engine.member_status(rule)
    assert status["s1"]["phase"] == status["s2"]["phase"] == "firing"
    assert status["s1"]["run_start_ns"] == T0 and status["s2"]["run_start_ns"] == T0 + 100 * S
    # resolving one member's episode leaves the other's open
    engine.evaluate([state(170, 0.1, "s2")])
    assert engine.db.alerts("s2")[0].resolved_ns is not None
    assert engine.db.alerts("s1")[0].resolved_ns is None
    bodies = [json.loads(d.body) for d in engine.db.due(2**62, limit=10)]
    assert sorted((b["subject_id"], b["event"], b["cohort"]) for b in bodies) == [
        ("s1", "alert.fired", "ca"), ("s2", "alert.fired", "ca"), ("s2", "alert.resolved", "ca")]

    # a replaced rule starts every member afresh; erasure and deletion leave no member rows
    engine.replace_rule(rule.id, STRESS.model_copy(update={"threshold": 0.7}))
    assert all(s["phase"] == "idle" for s in engine.member_status(rule).values())
    engine.evaluate([state(200, 0.9, "s1")])
    engine.erase_subject("s1")
    assert set(engine.db.member_tracks(rule.id)) == set()
    engine.evaluate([state(300, 0.9, "s2")])
    assert engine.delete_rule(rule.id) and engine.db.member_tracks(rule.id) == {}
    engine.submit([state(400, 0.9, "s7")])  # no cohort rule left: not queued
    assert engine.queue_depth() == 1


def test_no_data_counts_each_members_silence_from_when_it_is_first_seen() -> None:
    cohorts = {"ca": {"s1"}}
    store, now = _Store(), [0]
    engine = _engine(cohorts, store, now)
    engine.create_cohort_rule("ca", RuleSpec(kind="no_data", url=URL, duration_s=60))
    engine.check_no_data()  # s1 never sent anything: its silence starts now
    now[0] = 30 * S
    cohorts["ca"].add("s2")
    store.latest["s2"] = T0
    engine.check_no_data()
    now[0] = 61 * S
    engine.check_no_data()
    assert [a.subject_id for a in engine.db.alerts("s1")] == ["s1"]
    assert engine.db.alerts("s2") == []  # silent for 31 s only
    now[0] = 91 * S
    engine.check_no_data()
    [a2] = engine.db.alerts("s2")
    assert a2.detail["silent_s"] == 61
    store.latest["s1"] = T0 + S
    now[0] = 92 * S
    engine.check_no_data()
    assert engine.db.alerts("s1")[0].resolved_reason == "data arrived again"


_BEFORE_COHORT_RULES = """
CREATE TABLE rules (id TEXT PRIMARY KEY, subject_id TEXT NOT NULL, spec TEXT NOT NULL,
    secret TEXT NOT NULL, track TEXT NOT NULL, created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL);
CREATE INDEX rules_subject ON rules (subject_id);
CREATE TABLE alerts (id TEXT PRIMARY KEY, rule_id TEXT NOT NULL, subject_id TEXT NOT NULL,
    kind TEXT NOT NULL, fired_ns INTEGER NOT NULL, created_ns INTEGER NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, resolved_ns INTEGER, resolved_reason TEXT);
CREATE TABLE deliveries (id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, rule_id TEXT NOT NULL,
    subject_id TEXT NOT NULL, event TEXT NOT NULL, url TEXT NOT NULL, body BLOB NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ns INTEGER,
    created_ns INTEGER NOT NULL, finished_ns INTEGER, last_status_code INTEGER,
    last_error TEXT);
CREATE TABLE attempts (delivery_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    started_ns INTEGER NOT NULL, duration_ms REAL NOT NULL, status_code INTEGER, error TEXT,
    next_retry_ns INTEGER, PRIMARY KEY (delivery_id, attempt));
"""


def test_a_file_from_before_cohort_rules_opens_with_its_rules_and_outbox(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    spec = RuleSpec(kind="no_data", url="https://Hooks.Example.org/h")
    with sqlite3.connect(path) as old:
        old.executescript(_BEFORE_COHORT_RULES)
        old.execute("INSERT INTO rules VALUES ('r1', 's1', ?, 'k', '{}', 1, 1)",
                    (spec.model_dump_json(exclude={"secret"}),))
        old.execute("INSERT INTO deliveries (id, alert_id, rule_id, subject_id, event, url, body,"
                    " status, attempts, next_attempt_ns, created_ns) VALUES ('d1', 'a1', 'r1', "
                    "'s1', 'alert.fired', 'https://hooks.example.org/h', x'7b7d', 'pending', 0,"
                    " 5, 5)")
    db = AlertDB(path)
    [rule] = db.rules("s1")
    assert (rule.id, rule.subject_id, rule.cohort, db.secret("r1")) == ("r1", "s1", None, "k")
    [d] = db.due(10, limit=5)
    assert (d.id, d.dest) == ("d1", "hooks.example.org")
    cohort_rule = db.add_cohort_rule("ca", spec, "k" * 32, now_ns=2)  # subject_id may be NULL
    assert [r.id for r in db.cohort_rules(["ca"])] == [cohort_rule.id]
    db.close()
    db = AlertDB(path)  # opening it again changes nothing
    assert {r.id for r in db.rules()} == {"r1", cohort_rule.id} and db.pending_count() == 1
