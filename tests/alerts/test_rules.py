"""Rule semantics on crafted state sequences (window ends every 5 s), signing and retry timing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from wearemo.alerts import AlertDB, AlertEngine, RetryPolicy, RuleSpec
from wearemo.alerts.rules import Event, StressTrack, stress_step
from wearemo.alerts.webhooks import signature_header, verify_signature
from wearemo.model import StateEstimate
from wearemo.samples import Channel

S = 1_000_000_000
T0 = 1_700_000_000 * S


def state(t_s: float, p: float | None, subject: str = "s1") -> StateEstimate:
    end = T0 + int(t_s * S)
    return StateEstimate(
        subject_id=subject, window_start_ns=end - 60 * S, window_end_ns=end,
        state="withheld" if p is None else ("stress" if p >= 0.5 else "non_stress"),
        p_stress=p, reason="motion" if p is None else None, model_version="test")


def run(rule: RuleSpec, seq: list[tuple[float, float | None]],
        track: StressTrack | None = None) -> tuple[StressTrack, list[tuple[float, Event]]]:
    track = track if track is not None else StressTrack()
    events = []
    for t, p in seq:
        events += [(t, e) for e in stress_step(rule, track, state(t, p))]
    return track, events


RULE = RuleSpec(kind="stress_sustained", url="https://hooks.example.invalid/h", threshold=0.8,
                duration_s=60, max_gap_s=30, cooldown_s=300)


def test_fires_when_estimated_time_reaches_duration() -> None:
    track, events = run(RULE, [(t, 0.9) for t in range(0, 100, 5)])
    assert [(t, e.kind) for t, e in events] == [(60, "fired")]  # 0 s .. 60 s covered
    assert events[0][1].detail["covered_s"] == 60 and events[0][1].detail["estimated_states"] == 13
    assert track.phase == "firing" and track.covered_ns == 95 * S


def test_withheld_states_pause_without_firing_or_resetting() -> None:
    seq = [(t, 0.9) for t in range(0, 35, 5)] + [(t, None) for t in range(35, 55, 5)] + \
          [(t, 0.9) for t in range(55, 120, 5)]
    _, events = run(RULE, seq)
    # 30 s covered before the pause, none during it (35..50 withheld, 30->55 not counted),
    # then 5 s per state: 60 s at 85 s.
    assert [(t, e.kind) for t, e in events] == [(85, "fired")]
    assert events[0][1].detail["withheld_states"] == 4
    assert events[0][1].detail["run_start_ns"] == T0


def test_long_withheld_stretch_resets_with_a_reason() -> None:
    seq = [(t, 0.9) for t in range(0, 40, 5)] + [(t, None) for t in range(40, 80, 5)] + \
          [(t, 0.9) for t in range(80, 130, 5)]
    track, events = run(RULE, seq)
    assert events == []  # 35 s, then a 40-s withheld gap (> max_gap_s 30), then only 45 s
    assert track.phase == "pending" and track.run_start_ns == T0 + 80 * S
    # the reset was recorded, not silent (the status endpoint shows it until the next one)
    track, _ = run(RULE, [(0, 0.9), (5, None), (40, None)])
    assert track.phase == "idle"
    assert track.last_reset == ("no estimated state above the threshold for 40 s "
                                "(max_gap_s 30; withheld)")


def test_a_low_estimate_resets_a_pending_run() -> None:
    track, events = run(RULE, [(t, 0.9) for t in range(0, 55, 5)] + [(55, 0.5)]
                        + [(t, 0.9) for t in range(60, 110, 5)])
    assert events == [] and track.last_reset == "p_stress 0.50 at or below threshold 0.80"
    assert track.run_start_ns == T0 + 60 * S


def test_hysteresis_and_cooldown_give_one_alert_per_episode() -> None:
    high = [(t, 0.9) for t in range(0, 65, 5)]               # fires at 60
    band = [(t, 0.75) for t in range(65, 200, 5)]            # between clear (0.7) and 0.8
    track, events = run(RULE, high + band + [(200, 0.6)])    # resolves at 200
    assert [(t, e.kind) for t, e in events] == [(60, "fired"), (200, "resolved")]
    assert events[1][1].reason == "p_stress 0.60 below clear_below 0.70"
    # stress again at once: 60 s covered at 265, but the cool-down (300 s) holds until 360
    _, later = run(RULE, [(t, 0.9) for t in range(205, 400, 5)], track)
    assert [(t, e.kind) for t, e in later] == [(360, "fired")]


def test_old_states_are_ignored() -> None:
    track, events = run(RULE, [(t, 0.9) for t in range(0, 65, 5)])
    again, more = run(RULE, [(t, 0.9) for t in range(0, 65, 5)], track)
    assert len(events) == 1 and more == [] and again.covered_ns == 60 * S


class _OneSampleStore:
    """Just enough of a StateStore for no_data: one subject's newest sample."""

    def __init__(self) -> None:
        self.latest: int | None = T0

    def last_sample_ns(self, subject_id: str, channel: Channel) -> int | None:
        return self.latest if channel is Channel.EDA else None


def test_episode_and_outbox_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "alerts.sqlite3"
    store = _OneSampleStore()
    db = AlertDB(path)
    engine = AlertEngine(db, store)  # type: ignore[arg-type]
    rule, secret = engine.create_rule("s1", RULE)
    engine.evaluate([state(t, 0.9) for t in range(0, 40, 5)])
    db.close()
    db = AlertDB(path)  # a restart: the run goes on from 35 s covered
    engine = AlertEngine(db, store)  # type: ignore[arg-type]
    assert db.secret(rule.id) == secret and (path.stat().st_mode & 0o777) == 0o600
    engine.evaluate([state(t, 0.9) for t in range(40, 80, 5)])
    [alert] = db.alerts("s1")
    assert alert.fired_ns == T0 + 60 * S
    [due] = db.due(2**62, limit=10)
    assert due.event == "alert.fired" and b'"covered_s":60.0' in due.body
    assert db.pending_count() == 1
    engine.delete_rule(rule.id)  # its undelivered webhook is dropped, the alert kept, closed
    assert db.pending_count() == 0 and db.deliveries("s1")[0].last_error == "rule deleted"
    [alert] = db.alerts("s1")
    assert alert.resolved_reason == "rule deleted"
    # erasure of the subject removes everything of it, and nothing of others
    engine.create_rule("s2", RULE)
    engine.evaluate([state(t, 0.9, "s2") for t in range(0, 65, 5)])
    assert engine.erase_subject("s1") == 2  # its alert and delivery (the rule is gone)
    assert db.alerts("s1") == [] and db.deliveries("s1") == [] and len(db.alerts("s2")) == 1
    assert engine.erase_subject("s2") == 3 and db.rules() == [] and db.pending_count() == 0


def test_no_data_uses_the_wall_clock_since_the_last_new_sample() -> None:
    store = _OneSampleStore()
    now = [0]
    engine = AlertEngine(AlertDB(":memory:"), store,  # type: ignore[arg-type]
                         clock_ns=lambda: now[0])
    engine.create_rule("s1", RuleSpec(kind="no_data", url="https://hooks.example.invalid/h",
                                      duration_s=1800))
    for minute, latest in ((0, T0), (29, T0), (31, T0 + S), (60, T0 + S), (62, T0 + S)):
        now[0] = minute * 60 * S
        store.latest = latest
        engine.check_no_data()
    [alert] = engine.db.alerts("s1")  # silent from minute 31 (new sample) to 62: 31 min
    assert alert.fired_ns == 62 * 60 * S and alert.detail["silent_s"] == 31 * 60
    store.latest = T0 + 2 * S
    engine.check_no_data()
    assert engine.db.alerts("s1")[0].resolved_reason == "data arrived again"


def test_signature_verification() -> None:
    key, raw = b"k" * 32, b'{"event":"alert.fired"}'
    header = signature_header(key, raw, timestamp=1_700_000_000)
    assert verify_signature(key, raw, header, now=1_700_000_100)
    assert not verify_signature(key, raw + b" ", header, now=1_700_000_100)   # body changed
    assert not verify_signature(b"x" * 32, raw, header, now=1_700_000_100)    # other secret
    assert not verify_signature(key, raw, header, now=1_700_001_000)          # too old: replay
    assert not verify_signature(key, raw, "v1=abc", now=1_700_000_000)        # malformed


@pytest.mark.parametrize("seed", range(3))
def test_backoff_doubles_with_jitter_up_to_the_cap(seed: int) -> None:
    policy = RetryPolicy(base_s=2, cap_s=60, max_attempts=8, rng=random.Random(seed).random)
    for attempt, raw in enumerate([2, 4, 8, 16, 32, 60, 60], start=1):
        assert raw / 2 <= policy.delay_s(attempt) <= raw
