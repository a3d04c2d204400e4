"""SQLiteStore: every StateStore method round-trips, idempotency survives a reopen, WAL is on."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from wearemo.features import FeatureWindow
from wearemo.model import StateEstimate
from wearemo.samples import Channel, SampleBatch
from wearemo.settings import Settings
from wearemo.store import (
    BatchConflictError,
    SQLiteStore,
    StateStore,
    SubjectSummary,
    batch_digest,
    open_store,
)
from wearemo.store.base import Calibration
from wearemo.store.sqlite import SCHEMA_VERSION

T0 = 1_700_000_000_000_000_000
S = 1_000_000_000


def ppg(i: int, *, subject: str = "s1", n: int = 64, rate: float = 64.0) -> SampleBatch:
    start = T0 + i * round(n / rate * S)
    return SampleBatch(
        batch_id=f"d1:ppg:{i}",
        subject_id=subject,
        device_id="d1",
        channel="ppg",
        start_ns=start,
        rate_hz=rate,
        values=[math.sin(0.1 * (i * n + k)) + 1e-9 * k for k in range(n)],
    )


def state(end_s: int, label: str = "non_stress", *, subject: str = "s1") -> StateEstimate:
    withheld = label == "withheld"
    return StateEstimate(
        subject_id=subject,
        window_start_ns=T0 + (end_s - 60) * S,
        window_end_ns=T0 + end_s * S,
        state=label,  # type: ignore[arg-type]
        p_stress=None if withheld else (0.9 if label == "stress" else 0.1),
        reason="warm-up: personal baseline 10/240 s" if withheld else None,
        model_version="test-1",
        channels_used=["eda", "ppg"],
        top_features={} if withheld else {"rel_hr_mean_bpm": 4.25, "rel_hrv_rmssd_ms": -38.5},
    )


def window(end_s: int, *, subject: str = "s1") -> FeatureWindow:
    return FeatureWindow(
        subject_id=subject,
        start_ns=T0 + (end_s - 60) * S,
        end_ns=T0 + end_s * S,
        features={"hr_mean_bpm": 71.5, "hrv_rmssd_ms": 42.0, "eda_scl_mean_uS": float("nan")},
        sample_counts={"ppg": 3840, "eda": 240},
        coverage={"ppg": 1.0, "eda": 0.75},
        quality={"ppg": 0.93},
        motion=True,
        beat_source="ppg",
        n_beats=71,
        methods={"ppg_peaks": "elgendi", "neurokit2": "0.2.13"},
    )


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "db" / "w.sqlite3")
    yield s
    s.close()


def test_is_a_state_store_with_wal(store: SQLiteStore, tmp_path: Path) -> None:
    assert isinstance(store, StateStore)
    assert store.journal_mode() == "wal"
    assert store.ping()
    # synchronous=NORMAL (1) on our connection; WAL is persistent in the file itself
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    with sqlite3.connect(tmp_path / "db" / "w.sqlite3") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_batches_round_trip_bit_exact(store: SQLiteStore) -> None:
    batches = [ppg(i) for i in range(3)]
    assert [store.add_batch(b) for b in batches] == [True, True, True]
    got = store.samples("s1", Channel.PPG)
    want_t = np.concatenate([b.times_ns() for b in batches])
    want_v = np.concatenate([b.values_array() for b in batches])
    np.testing.assert_array_equal(got.times_ns, want_t)
    np.testing.assert_array_equal(got.values, want_v)  # float64 blobs: exact
    assert got.times_ns.dtype == np.int64
    # time range [start, end) cuts inside batches
    cut = store.samples("s1", Channel.PPG, start_ns=int(want_t[10]), end_ns=int(want_t[100]))
    np.testing.assert_array_equal(cut.times_ns, want_t[10:100])
    assert store.last_sample_ns("s1", Channel.PPG) == batches[-1].end_ns
    assert store.last_sample_ns("s1", Channel.EDA) is None
    assert store.has_batch("s1", "d1:ppg:1") and not store.has_batch("s2", "d1:ppg:1")


def test_timestamped_and_acc_batches(store: SQLiteStore) -> None:
    rr = SampleBatch(batch_id="rr0", subject_id="s1", device_id="d1", channel="rr",
                     start_ns=T0, timestamps_ns=[T0, T0 + 812_000_000, T0 + 1_620_000_000],
                     values=[812.0, 808.0, 790.5])
    acc = SampleBatch(batch_id="acc0", subject_id="s1", device_id="d1", channel="acc",
                      start_ns=T0, rate_hz=32.0, values=[[0.01 * k, -1.0, 0.5] for k in range(40)])
    assert store.add_batch(rr) and store.add_batch(acc)
    got_rr = store.samples("s1", Channel.RR)
    assert got_rr.times_ns.tolist() == rr.timestamps_ns
    assert got_rr.values.tolist() == [812.0, 808.0, 790.5]
    got_acc = store.samples("s1", Channel.ACC)
    assert got_acc.values.shape == (40, 3)
    np.testing.assert_array_equal(got_acc.values, acc.values_array())
    np.testing.assert_array_equal(got_acc.times_ns, acc.times_ns())
    assert store.samples("s1", Channel.ACC, start_ns=T0 + 10 * S).values.shape == (0, 3)


def test_regular_times_match_sample_batch_at_awkward_rates(store: SQLiteStore) -> None:
    # rate-based batches store no time blob: the reconstruction must equal SampleBatch.times_ns
    b = SampleBatch(batch_id="odd", subject_id="s1", device_id="d", channel="ppg",
                    start_ns=T0 + 7, rate_hz=25.6, values=[0.0] * 1001)
    store.add_batch(b)
    np.testing.assert_array_equal(store.samples("s1", Channel.PPG).times_ns, b.times_ns())


def test_add_batch_idempotent_across_reopen_and_conflict(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as s:
        assert s.add_batch(ppg(0)) is True
        assert s.add_batch(ppg(0)) is False
    with SQLiteStore(path) as s:
        assert s.add_batch(ppg(0)) is False  # still known after restart
        assert s.subject_summary("s1").samples == {"ppg": 64}  # stored once
        changed = ppg(0).model_copy(update={"values": [0.0] * 64})
        with pytest.raises(BatchConflictError, match="different content"):
            s.add_batch(changed)
        # same batch id for another subject is another batch
        assert s.add_batch(ppg(0, subject="s2")) is True
        assert s.samples("s1", Channel.PPG).values.tolist() == ppg(0).values


def test_digest_depends_on_content_only() -> None:
    a = ppg(0)
    assert batch_digest(a) == batch_digest(a.model_copy(update={"seq": 5}))
    assert batch_digest(a) != batch_digest(a.model_copy(update={"start_ns": a.start_ns + 1}))


def test_windows_round_trip_and_replace(store: SQLiteStore) -> None:
    ws = [window(e) for e in (60, 65, 70)]
    store.add_windows(ws)
    got = store.windows("s1")
    assert [w.end_ns for w in got] == [w.end_ns for w in ws]
    g, w0 = got[0], ws[0]
    assert math.isnan(g.features["eda_scl_mean_uS"])
    assert {k: v for k, v in g.features.items() if not math.isnan(v)} == {
        "hr_mean_bpm": 71.5, "hrv_rmssd_ms": 42.0}
    assert (g.sample_counts, g.coverage, g.quality, g.motion, g.beat_source, g.n_beats,
            g.methods) == (w0.sample_counts, w0.coverage, w0.quality, w0.motion,
                           w0.beat_source, w0.n_beats, w0.methods)
    assert [w.end_ns for w in store.windows("s1", start_ns=T0 + 65 * S, end_ns=T0 + 70 * S)] == [
        T0 + 65 * S]
    assert len(store.windows("s1", limit=2)) == 2
    store.add_windows([window(60)])  # same key: replaced, not duplicated
    assert len(store.windows("s1")) == 3


def test_states_round_trip_ranges_and_latest(store: SQLiteStore) -> None:
    assert store.latest_state("s1") is None
    sts = [state(60, "withheld"), state(65, "stress"), state(70, "non_stress"), state(75, "stress")]
    store.add_states(list(reversed(sts)))
    assert store.states("s1") == sts  # every field, oldest first
    assert store.latest_state("s1") == sts[-1]
    # [start, end) on the window end
    assert store.states("s1", start_ns=T0 + 65 * S, end_ns=T0 + 75 * S) == sts[1:3]
    assert store.states("s1", start_ns=T0 + 66 * S) == sts[2:]
    assert store.states("s1", end_ns=T0 + 65 * S) == sts[:1]
    assert store.states("s1", limit=2) == sts[:2]
    assert store.states("nobody") == []
    store.add_states([state(75, "non_stress")])  # re-estimate replaces
    assert store.latest_state("s1").state == "non_stress"


def test_subjects_and_summary(store: SQLiteStore) -> None:
    assert store.subject_ids() == [] and store.subject_summary("s1") is None
    for i in range(3):
        store.add_batch(ppg(i))
    store.add_batch(SampleBatch(batch_id="e0", subject_id="s1", device_id="d1", channel="eda",
                                start_ns=T0, rate_hz=4.0, values=[0.5] * 12))
    store.add_batch(ppg(0, subject="s0"))
    store.add_windows([window(60), window(65)])
    store.add_states([state(60, "withheld"), state(65, "stress"), state(70, "stress")])
    assert store.subject_ids() == ["s0", "s1"]
    assert store.has_subject("s1") and not store.has_subject("s9")
    summary = store.subject_summary("s1")
    assert summary == SubjectSummary(
        subject_id="s1",
        samples={"eda": 12, "ppg": 192},
        batches=4,
        windows=2,
        states={"stress": 2, "non_stress": 0, "withheld": 1},
        first_sample_ns=T0,
        last_sample_ns=ppg(2).end_ns,
        last_state=state(70, "stress"),
    )


def test_concurrent_writers_from_threads(store: SQLiteStore) -> None:
    def work(subject: str) -> None:
        for i in range(50):
            assert store.add_batch(ppg(i, subject=subject, n=8))

    threads = [threading.Thread(target=work, args=(f"s{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [store.subject_summary(f"s{k}").samples["ppg"] for k in range(4)] == [400] * 4


def test_open_store_from_settings(tmp_path: Path) -> None:
    s = open_store(Settings(data_dir=tmp_path / "d"))
    try:
        assert isinstance(s, SQLiteStore) and s.path == tmp_path / "d" / "wearemo.sqlite3"
    finally:
        s.close()


def test_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as c:
        c.execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        SQLiteStore(path)


def test_state_outputs_round_trip(store: SQLiteStore) -> None:
    s = StateEstimate(
        subject_id="s1", window_start_ns=0, window_end_ns=60, state="stress", p_stress=0.8,
        model_version="m", arousal=0.7, affect="amusement",
        affect_p={"baseline": 0.2, "amusement": 0.7, "stress": 0.1},
        not_estimated={"valence": "model not trained on valence labels"},
    )
    store.add_states([s])
    assert store.latest_state("s1") == s


def test_opens_schema_1_file_and_keeps_its_states(tmp_path: Path) -> None:
    # A store written before arousal/affect outputs existed (schema 1) gains the columns.
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE states (subject_id TEXT NOT NULL, window_start_ns INTEGER NOT NULL, "
        "window_end_ns INTEGER NOT NULL, state TEXT NOT NULL, p_stress REAL, reason TEXT, "
        "model_version TEXT NOT NULL, channels_used TEXT NOT NULL, top_features TEXT NOT NULL, "
        "PRIMARY KEY (subject_id, window_end_ns))"
    )
    conn.execute("INSERT INTO states VALUES ('s1', 0, 60, 'non_stress', 0.1, NULL, 'm', "
                 "'[\"eda\"]', '{}')")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as s:
        old = s.latest_state("s1")
        assert old is not None and old.p_stress == 0.1 and old.arousal is None
        assert old.not_estimated == {}
        s.add_states([old.model_copy(update={"window_end_ns": 120, "arousal": 0.4})])
        assert s.latest_state("s1").arousal == 0.4  # type: ignore[union-attr]


def calibration(subject: str = "s1", *, start_s: int = 0, used: int = 51) -> Calibration:
    return Calibration(subject_id=subject, start_ns=T0 + start_s * S,
                       end_ns=T0 + (start_s + 372) * S, windows_through_ns=T0 + (start_s + 371) * S,
                       windows_used=used, created_ns=T0 + 999 * S)


def test_calibration_round_trips_replaces_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as s:
        assert s.calibration("s1") is None
        s.set_calibration(calibration())
        s.set_calibration(calibration("s2", used=12))
        assert s.calibration("s1") == calibration()
        s.set_calibration(calibration(start_s=600, used=40))  # a new calibration replaces it
        assert s.calibration("s1") == calibration(start_s=600, used=40)
    with SQLiteStore(path) as s:
        assert s.calibration("s1") == calibration(start_s=600, used=40)
        assert s.calibration("s2") == calibration("s2", used=12)
        assert s.subject_ids() == []  # a calibration alone does not make a subject


def test_calibration_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="windows_used"):
        calibration(used=-1)


def test_opens_schema_2_file_and_adds_calibrations(tmp_path: Path) -> None:
    # A store written before calibrations existed (schema 2) gains the table, keeps its data.
    path = tmp_path / "old.db"
    with SQLiteStore(path) as s:
        s.add_states([state(60)])
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE calibrations")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with SQLiteStore(path) as s:
        assert s.latest_state("s1") == state(60)
        assert s.calibration("s1") is None
        s.set_calibration(calibration())
        assert s.calibration("s1") == calibration()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 3


# -- privacy: erasure and retention (a contract: tests/store/test_store_influx.py runs these too)


def _fill_two_subjects(store: StateStore) -> None:
    for subject in ("s1", "s2"):
        for i in range(4):  # 1-s ppg batches at T0 + 0..3 s
            assert store.add_batch(ppg(i, subject=subject))
        store.add_batch(SampleBatch(batch_id="rr0", subject_id=subject, device_id="d1",
                                    channel="rr", start_ns=T0, timestamps_ns=[T0, T0 + 3 * S],
                                    values=[800.0, 810.0]))
        store.add_windows([window(e, subject=subject) for e in (1, 2, 3)])
        store.add_states([state(e, "stress", subject=subject) for e in (1, 2, 3)])
        store.set_calibration(calibration(subject, start_s=-400))


def test_erase_subject_removes_everything_and_only_it(store: StateStore) -> None:
    _fill_two_subjects(store)
    before_s2 = store.subject_summary("s2")
    counts = store.erase_subject("s1")
    assert counts == {"samples": 4 * 64 + 2, "batches": 5, "windows": 3, "states": 3,
                      "calibrations": 1}
    # queried afterwards: nothing of s1 remains anywhere
    assert store.subject_ids() == ["s2"] and not store.has_subject("s1")
    assert store.subject_summary("s1") is None
    assert store.samples("s1", Channel.PPG).n_samples == 0
    assert store.samples("s1", Channel.RR).n_samples == 0
    assert store.batches("s1") == [] and store.windows("s1") == [] and store.states("s1") == []
    assert store.latest_state("s1") is None and store.calibration("s1") is None
    assert not store.has_batch("s1", "d1:ppg:0") and store.last_sample_ns("s1", Channel.PPG) is None
    # the other subject is intact
    assert store.subject_summary("s2") == before_s2
    assert store.calibration("s2") == calibration("s2", start_s=-400)
    # an erased batch id may be sent again (the subject starts afresh)
    assert store.add_batch(ppg(0, subject="s1")) is True
    assert store.erase_subject("nobody") == dict.fromkeys(counts, 0)


def test_delete_before_keeps_newer_data_and_whole_straddling_batches(store: StateStore) -> None:
    _fill_two_subjects(store)
    cutoff = T0 + 2 * S + S // 2  # inside ppg batch 2 (T0+2 s .. T0+3 s)
    counts = store.delete_before(cutoff)
    # per subject: ppg batches 0 and 1 end before the cutoff; rr0 reaches past it (kept whole);
    # windows/states ending at 1 and 2 s; the calibration period ended long before
    assert counts == {"samples": 2 * 2 * 64, "batches": 2 * 2, "windows": 2 * 2,
                      "states": 2 * 2, "calibrations": 2}
    for subject in ("s1", "s2"):
        got = store.samples(subject, Channel.PPG)
        want = np.concatenate([ppg(i, subject=subject).times_ns() for i in (2, 3)])
        np.testing.assert_array_equal(got.times_ns, want)  # batch 2 kept whole
        assert [b.batch_id for b in store.batches(subject)] == ["rr0", "d1:ppg:2", "d1:ppg:3"]
        assert store.samples(subject, Channel.RR).values.tolist() == [800.0, 810.0]
        assert [w.end_ns for w in store.windows(subject)] == [T0 + 3 * S]
        assert [s.window_end_ns for s in store.states(subject)] == [T0 + 3 * S]
        assert store.calibration(subject) is None
        summary = store.subject_summary(subject)
        assert summary is not None and summary.samples == {"ppg": 128, "rr": 2}
        assert summary.batches == 3 and summary.first_sample_ns == T0
        assert not store.has_batch(subject, "d1:ppg:0") and store.has_batch(subject, "d1:ppg:2")
    assert store.delete_before(cutoff) == dict.fromkeys(counts, 0)  # idempotent
