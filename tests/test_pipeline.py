"""Pipeline: ingest → store → features → model → store, with the real features stage and model.

Ground truth: a NeuroKit2 PPG simulated at 70 bpm must come back as ~70 bpm in the stored
windows; an interrupted run (process restart) must store exactly the states of an uninterrupted
one.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import simdata
from simdata import T0, S

from wearemo.datasets import load_recording
from wearemo.datasets.e4 import LabelSegment
from wearemo.features import WindowConfig
from wearemo.model import StressModel, load_model
from wearemo.model.baseline import RELATIVE_FEATURES, BaselineConfig
from wearemo.pipeline import BaselineStatus, CalibrationError, Pipeline, UnknownSubjectError
from wearemo.samples import Channel, SampleBatch
from wearemo.store import SQLiteStore

HR_BPM = 70.0


def sim_batches(subject: str, duration_s: int, *, seed: int = 1) -> list[SampleBatch]:
    return simdata.sim_batches(subject, duration_s, hr_bpm=HR_BPM, seed=seed)


@pytest.fixture(scope="module")
def model() -> StressModel:
    return load_model("default")


@pytest.fixture(scope="module")
def batches() -> list[SampleBatch]:
    return sim_batches("s1", 360)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, model: StressModel,
              batches: list[SampleBatch]) -> tuple[list, list]:
    """States and windows of one uninterrupted run."""
    with SQLiteStore(tmp_path_factory.mktemp("ref") / "w.sqlite3") as store:
        Pipeline(store, model).ingest(batches)
        return store.states("s1"), store.windows("s1")


def test_stream_to_states(tmp_path: Path, model: StressModel, batches: list[SampleBatch]) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        report = Pipeline(store, model, config=WindowConfig()).ingest(batches)
        assert report.rejected is None
        assert report.stored == len(batches) == 72 and report.duplicates == 0
        # windows end every 5 s from T0+60 s to the last end the beat and EDA trackers have
        # committed (10-s blocks, each once 5 s past it are in: T0+350 s of T0+360 s)
        assert report.windows == report.states == 59
        windows = store.windows("s1")
        assert [w.end_ns for w in windows] == [T0 + e * S for e in range(60, 355, 5)]
        hr = np.array([w.features["hr_mean_bpm"] for w in windows])
        assert np.all(np.abs(hr - HR_BPM) < 2.0), hr  # simulated 70 bpm recovered within 2 bpm
        states = store.states("s1")
        assert [s.window_end_ns for s in states] == [w.end_ns for w in windows]
        assert all(s.model_version == model.version for s in states)
        assert {s.state for s in states[-5:]} <= {"stress", "non_stress"}  # past the warm-up
        for s in states:  # a withheld state always says why; an estimate has a probability
            assert (s.state == "withheld") == (s.p_stress is None)
            assert s.state != "withheld" or s.reason
        assert store.latest_state("s1") == states[-1]
        summary = store.subject_summary("s1")
        assert summary.samples == {"ppg": 36 * 640, "eda": 36 * 40}
        assert summary.windows == 59 and sum(summary.states.values()) == 59


def test_duplicates_are_stored_once(tmp_path: Path, model: StressModel,
                                    batches: list[SampleBatch]) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        first = pipeline.ingest(batches[:20])
        again = pipeline.ingest(batches[:24])  # a retry that overlaps, plus 4 new batches
        assert [r.status for r in again.results] == ["duplicate"] * 20 + ["stored"] * 4
        assert first.stored + again.stored == 24
        assert store.subject_summary("s1").samples == {"ppg": 12 * 640, "eda": 12 * 40}


def test_listeners_see_every_stored_state_once_and_a_failing_one_breaks_nothing(
        tmp_path: Path, model: StressModel, batches: list[SampleBatch]) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        seen: list = []
        stored_when_seen: list[bool] = []

        def listener(states) -> None:
            seen.extend(states)
            stored_when_seen.append(store.latest_state("s1") == states[-1])

        def broken(states) -> None:
            raise RuntimeError("listener bug")

        pipeline.subscribe(broken)
        unsubscribe = pipeline.subscribe(listener)
        report = pipeline.ingest(batches[:40])
        assert report.rejected is None and report.states > 0
        assert seen == store.states("s1") and all(stored_when_seen)
        unsubscribe()
        more = pipeline.ingest(batches[40:])
        assert more.states > 0 and len(seen) == report.states  # no calls after unsubscribe


def test_out_of_order_batch_is_rejected_and_nothing_lost(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch]
) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        pipeline.ingest(batches[:10])  # up to T0 + 50 s
        before = store.subject_summary("s1")
        late = batches[4].model_copy(update={"batch_id": "late"})  # ppg at T0 + 20 s, new id
        report = pipeline.ingest([batches[10], late, batches[11]])
        assert [r.status for r in report.results] == ["stored", "rejected"]  # stops there
        bad = report.rejected
        assert bad is not None and bad.field == "start_ns" and report.rejected_index == 1
        last = batches[10].end_ns  # ppg, T0 + 60 s - 1/64 s, stored just before
        assert f"start_ns {late.start_ns}" in bad.reason and "'ppg'" in bad.reason
        assert str(last) in bad.reason
        after = store.subject_summary("s1")
        assert after.samples["ppg"] == before.samples["ppg"] + 640  # only batches[10]
        assert not store.has_batch("s1", "late")
        # the stream was not disturbed: the rest of the recording still flows
        rest = pipeline.ingest(batches[11:])
        assert rest.rejected is None and rest.stored == len(batches) - 11


def test_batch_id_reuse_with_other_content_is_rejected(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch]
) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        pipeline.ingest(batches[:2])
        forged = batches[0].model_copy(update={"values": [0.0] * 640})
        report = pipeline.ingest([forged])
        assert report.rejected is not None and report.rejected.field == "batch_id"
        assert "different content" in report.rejected.reason
        assert store.samples("s1", Channel.PPG).values.tolist() == batches[0].values


@pytest.mark.parametrize("split", [13, 40])  # during the warm-up / after the baseline is learned
def test_restart_gives_the_same_states(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch], reference: tuple[list, list],
    split: int,
) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        Pipeline(store, model).ingest(batches[:split])
    with SQLiteStore(path) as store:  # a new process: ordering, baseline and stream from disk
        pipeline = Pipeline(store, model)
        retry = pipeline.ingest(batches[split - 2:split])
        assert [r.status for r in retry.results] == ["duplicate", "duplicate"]
        overlap = batches[split - 2].model_copy(update={"batch_id": "new-id"})
        assert pipeline.ingest([overlap]).rejected is not None  # ordering survived the restart
        pipeline.ingest(batches[split:])
        ref_states, ref_windows = reference
        assert [w.end_ns for w in store.windows("s1")] == [w.end_ns for w in ref_windows]
        got = store.states("s1")
        assert [(s.window_end_ns, s.state, s.reason) for s in got] == [
            (s.window_end_ns, s.state, s.reason) for s in ref_states]
        np.testing.assert_allclose(
            [s.p_stress if s.p_stress is not None else -1 for s in got],
            [s.p_stress if s.p_stress is not None else -1 for s in ref_states], atol=1e-9)


def test_windows_lost_in_a_crash_are_recovered(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch], reference: tuple[list, list]
) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        Pipeline(store, model).ingest(batches[:30])
        for b in batches[30:34]:  # raw data committed, process dies before windows/states
            store.add_batch(b)
    with SQLiteStore(path) as store:
        Pipeline(store, model).ingest(batches[34:])
        assert [s.window_end_ns for s in store.states("s1")] == [
            s.window_end_ns for s in reference[0]]


def test_concurrent_requests(tmp_path: Path, model: StressModel) -> None:
    subjects = {f"c{k}": sim_batches(f"c{k}", 120, seed=k) for k in range(3)}
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        reports = []

        def send(batches: list[SampleBatch]) -> None:
            reports.append(pipeline.ingest(batches))

        # every subject's data sent twice at once (a retry racing the original)
        threads = [threading.Thread(target=send, args=(b,)) for b in subjects.values()]
        threads += [threading.Thread(target=send, args=(b,)) for b in subjects.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.stored for r in reports) == sum(len(b) for b in subjects.values())
        for sid in subjects:
            assert store.subject_summary(sid).samples == {"ppg": 12 * 640, "eda": 12 * 40}
            assert len(store.windows(sid)) == 11  # ends 60..110 s (trackers through 110 s)


def test_flush_closes_pending_windows(tmp_path: Path, model: StressModel,
                                      batches: list[SampleBatch]) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        assert pipeline.ingest(batches[:13]).windows == 0  # ppg to 70 s, eda to 60 s: waiting
        flushed = pipeline.flush()
        assert flushed.windows == flushed.states == 2  # ends 60 and 65 s (newest sample 69.98 s)
        assert [s.window_end_ns for s in store.states("s1")] == [T0 + 60 * S, T0 + 65 * S]
        assert pipeline.flush("s1").windows == 0


# -- calibration period (personal baseline from a labelled rest) ---------------------------------

EXCERPT = (Path(__file__).resolve().parents[1] / "firmware_bridge" / "virtual_wearable" / "data"
           / "stress-predict-S02-excerpt")


@pytest.fixture(scope="module")
def excerpt() -> tuple[list[SampleBatch], LabelSegment, list[int]]:
    """The real S02 excerpt as batches, its first rest, and the batch indices that split it:
    up to 60 s after the rest (calibrate there), then 200 s on (restart there), then the end."""
    rec = load_recording(EXCERPT, subject_id="s02")
    batches = list(rec.iter_batches())
    rest = rec.labels[0]
    assert rest.task == "rest" and rest.label == "non_stress"
    cuts = [next(i for i, b in enumerate(batches) if b.start_ns >= rest.end_ns + t * S)
            for t in (60, 260)]
    return batches, rest, cuts


@pytest.fixture(scope="module")
def calibrated_run(
    tmp_path_factory: pytest.TempPathFactory, model: StressModel, excerpt: tuple
) -> tuple[BaselineStatus, list, list, int]:
    """One uninterrupted run calibrated on the first rest: (status, states, windows, last window
    end before the calibration)."""
    batches, rest, (a, _) = excerpt
    with SQLiteStore(tmp_path_factory.mktemp("cal") / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        pipeline.ingest(batches[:a])
        before = store.latest_state("s02")
        assert before is not None
        status = pipeline.calibrate("s02", rest.start_ns, rest.end_ns)
        pipeline.ingest(batches[a:])
        return status, store.states("s02"), store.windows("s02"), before.window_end_ns


def _gated_rows(model: StressModel, windows: list) -> list[dict[str, float]]:
    est = model.for_subject("s02")  # a fresh estimator's gate
    return [f for f, _ in map(est._usable, windows) if f is not None]


def test_calibration_sets_the_baseline_and_later_states_use_it(
    model: StressModel, excerpt: tuple, calibrated_run: tuple
) -> None:
    _, rest, _ = excerpt
    status, states, windows, calibrated_at = calibrated_run
    period = [w for w in windows if rest.start_ns <= w.end_ns < rest.end_ns]
    rows = _gated_rows(model, period)
    assert len(period) == 63 and len(rows) == 51  # motion windows of the rest do not count
    assert status.source == "calibration" and status.ready
    cal = status.calibration
    assert cal is not None and (cal.start_ns, cal.end_ns) == (rest.start_ns, rest.end_ns)
    assert cal.windows_used == 51 and cal.windows_through_ns == period[-1].end_ns
    # ground truth: the median of each feature over the gated windows, computed here directly
    expected = {}
    for name in RELATIVE_FEATURES:
        vals = np.array([r[name] for r in rows if name in r], dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            expected[name] = float(np.median(vals))
    assert expected and status.medians == pytest.approx(expected, rel=1e-12)
    # states before the calibration came from the warm-up baseline, later ones from the rest
    warm = model.for_subject("s02")
    calibrated = model.for_subject("s02")
    assert calibrated.calibrate(period) == 51
    differ = 0
    for w, s in zip(windows, states, strict=True):
        ref = warm.update(w)
        if w.end_ns > calibrated_at:
            cal_ref = calibrated.update(w)
            assert (s.state, s.reason, s.top_features) == (
                cal_ref.state, cal_ref.reason, cal_ref.top_features)
            assert s.p_stress == pytest.approx(cal_ref.p_stress, abs=1e-12)
            differ += s.p_stress is not None and s.p_stress != pytest.approx(ref.p_stress)
        else:
            assert s.p_stress == pytest.approx(ref.p_stress, abs=1e-12) and s.reason == ref.reason
    assert warm.baseline.ready and warm.baseline.source == "warm-up"
    assert set(warm.baseline.medians) == set(status.medians)
    assert warm.baseline.medians != pytest.approx(status.medians)  # two different baselines
    assert differ > 10, differ  # and the calibration changed what the service says


def test_restart_after_calibration_gives_the_same_states(
    tmp_path: Path, model: StressModel, excerpt: tuple, calibrated_run: tuple
) -> None:
    batches, rest, (a, b) = excerpt
    status, ref_states, _, _ = calibrated_run
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        pipeline = Pipeline(store, model)
        pipeline.ingest(batches[:a])
        pipeline.calibrate("s02", rest.start_ns, rest.end_ns)
        pipeline.ingest(batches[a:b])
    with SQLiteStore(path) as store:  # a new process: the baseline comes from the stored period
        pipeline = Pipeline(store, model)
        after = pipeline.baseline("s02")
        assert after.source == "calibration"
        assert (after.medians, after.spreads) == (status.medians, status.spreads)
        assert after.calibration is not None and after.calibration.windows_used == 51
        pipeline.ingest(batches[b:])
        got = store.states("s02")
    assert [(s.window_end_ns, s.state, s.reason, s.top_features) for s in got] == [
        (s.window_end_ns, s.state, s.reason, s.top_features) for s in ref_states]
    np.testing.assert_allclose([s.p_stress if s.p_stress is not None else -1 for s in got],
                               [s.p_stress if s.p_stress is not None else -1 for s in ref_states],
                               atol=1e-12)


def test_calibration_errors_change_nothing(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch]
) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        with pytest.raises(UnknownSubjectError, match="unknown subject 'nobody'"):
            pipeline.calibrate("nobody", T0, T0 + 60 * S)
        with pytest.raises(UnknownSubjectError):
            pipeline.baseline("nobody")
        pipeline.ingest(batches[:28])  # 140 s: windows end at 60..130 s
        before = pipeline.baseline("s1")
        assert before.source == "warm-up" and not before.ready and before.medians == {}
        assert before.warmup_covered_s == 70.0 and before.warmup_windows == 15
        assert (before.warmup_s, before.min_windows) == (240.0, 12)
        with pytest.raises(CalibrationError, match="must be after start"):
            pipeline.calibrate("s1", T0 + 60 * S, T0 + 60 * S)
        with pytest.raises(CalibrationError) as err:
            pipeline.calibrate("s1", T0, T0 + 100 * S)  # windows end at 60..95 s: 8 of 12
        assert "has 8 usable windows; the baseline needs at least 12" in str(err.value)
        assert "8 windows of this subject end in the period" in str(err.value)
        assert pipeline.baseline("s1") == before and store.calibration("s1") is None
        # the same windows, once enough of them: accepted, and the warm-up is over
        cal = pipeline.calibrate("s1", T0, T0 + 200 * S)
        assert cal.ready and cal.source == "calibration" and cal.calibration is not None
        assert cal.calibration.windows_used == 15
        assert cal.calibration.windows_through_ns == T0 + 130 * S
        assert abs(cal.medians["hr_mean_bpm"] - HR_BPM) < 2.0  # simulated 70 bpm
        assert store.calibration("s1") == cal.calibration


def test_a_calibration_replaces_the_earlier_one(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch]
) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model)
        pipeline.ingest(batches)  # windows end at 60..350 s
        first = pipeline.calibrate("s1", T0, T0 + 150 * S)
        second = pipeline.calibrate("s1", T0 + 200 * S, T0 + 400 * S)
        assert first.calibration is not None and first.calibration.windows_used == 18
        assert second.calibration is not None and second.calibration.windows_used == 31
        # a period reaching past the stored windows counts only those stored (ends 200..350 s)
        assert second.calibration.windows_through_ns == T0 + 350 * S
        assert store.calibration("s1") == second.calibration
        assert pipeline.baseline("s1") == second
        assert abs(second.medians["hr_mean_bpm"] - HR_BPM) < 2.0  # simulated 70 bpm


def test_stored_calibration_the_model_no_longer_accepts_falls_back_to_warm_up(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        pipeline = Pipeline(store, model)
        pipeline.ingest(batches[:40])
        pipeline.calibrate("s1", T0, T0 + 200 * S)
    stricter = dataclasses.replace(model, baseline=BaselineConfig(min_windows=100))
    with SQLiteStore(path) as store, caplog.at_level("WARNING"):
        status = Pipeline(store, stricter).baseline("s1")
        assert status.source == "warm-up" and status.calibration is None and not status.ready
        assert "no longer gives a baseline" in caplog.text
        assert store.calibration("s1") is not None  # kept: the old model could use it again
