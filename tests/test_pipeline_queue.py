"""Background processing from the store's durable queue: restart safety and backpressure.

Ground truth: an uninterrupted inline run over the same batches. Whatever is accepted in
background mode, across a crash between acceptance and processing, must end up as exactly the
windows and states of that run.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import simdata

from wearemo.model import StressModel, load_model
from wearemo.pipeline import Pipeline, PipelineBusyError
from wearemo.samples import SampleBatch
from wearemo.store import SQLiteStore


@pytest.fixture(scope="module")
def model() -> StressModel:
    return load_model("default")


@pytest.fixture(scope="module")
def batches() -> list[SampleBatch]:
    return simdata.sim_batches("q1", 240, hr_bpm=70.0, seed=4)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, model: StressModel,
              batches: list[SampleBatch]) -> list[tuple[int, str, float]]:
    with SQLiteStore(tmp_path_factory.mktemp("ref") / "w.sqlite3") as store:
        report = Pipeline(store, model).ingest(batches)
        assert report.states == len(store.states("q1")) > 20
        return _states(store)


def _states(store: SQLiteStore) -> list[tuple[int, str, float]]:
    return [(s.window_end_ns, s.state, -1.0 if s.p_stress is None else s.p_stress)
            for s in store.states("q1", limit=10_000)]


def _same(got: list[tuple[int, str, float]], want: list[tuple[int, str, float]]) -> None:
    assert [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], atol=1e-9)


def _wait_processed(pipeline: Pipeline, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pipeline.lag().pending_batches:
        assert time.monotonic() < deadline, pipeline.lag()
        time.sleep(0.05)


def test_background_answers_before_processing_and_workers_catch_up(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch],
    reference: list[tuple[int, str, float]],
) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model, mode="background")
        pipeline.start()
        try:
            for i in range(0, len(batches), 12):
                report = pipeline.ingest(batches[i:i + 12])
                assert report.stored == len(batches[i:i + 12])
                assert report.windows == report.states == 0  # processing happens later
            _wait_processed(pipeline)
            lag = pipeline.lag()
            assert lag.processed_batches == len(batches) and lag.pending_samples == 0
            assert lag.processing_samples_per_s is not None and lag.processing_samples_per_s > 0
        finally:
            pipeline.close()
        _same(_states(store), reference)


def test_crash_between_acceptance_and_processing_loses_nothing(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch],
    reference: list[tuple[int, str, float]],
) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        first = Pipeline(store, model, mode="background")  # no workers: nothing processes
        first.ingest(batches[:20])
        first.drain()  # the first 100 s processed ...
        first.ingest(batches[20:40])  # ... the next 100 s only accepted, then the process dies
        assert first.lag().pending_batches == 20
        partial = _states(store)
        assert 0 < len(partial) < len(reference)
    with SQLiteStore(path) as store:
        assert store.pending_counts() == {"q1": (20, sum(b.n_samples for b in batches[20:40]))}
        restarted = Pipeline(store, model, mode="background")
        restarted.start()  # finds the unprocessed batches in the store and processes them
        try:
            _wait_processed(restarted)
            assert restarted.ingest(batches[38:40]).duplicates == 2  # idempotency survived
            restarted.ingest(batches[40:])
            _wait_processed(restarted)
        finally:
            restarted.close()
        assert store.pending_counts() == {}
        _same(_states(store), reference)


def test_backpressure_refuses_and_stores_nothing_until_processing_catches_up(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch],
) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as store:
        pipeline = Pipeline(store, model, mode="background", max_pending_samples=5000)
        pipeline.ingest(batches[:12])  # 60 s: 4,080 samples, under the bound
        pipeline.ingest(batches[12:14])  # now 4,760 pending ...
        pipeline.ingest(batches[14:16])  # ... 5,440: over it
        with pytest.raises(PipelineBusyError) as refused:
            pipeline.ingest(batches[16:18])
        assert refused.value.pending_samples == 5440
        assert 1 <= refused.value.retry_after_s <= 60
        assert "max_pending_samples" in str(refused.value)
        assert not store.has_batch("q1", batches[16].batch_id)  # nothing of it stored
        assert store.subject_summary("q1").batches == 16  # type: ignore[union-attr]
        pipeline.drain()
        assert pipeline.ingest(batches[16:18]).stored == 2  # accepted again once caught up


def test_inline_flush_and_schema_3_files(tmp_path: Path, model: StressModel,
                                          batches: list[SampleBatch]) -> None:
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        Pipeline(store, model).ingest(batches[:20])
        assert store.pending_counts() == {}
    # A schema-3 file (before processing cursors) was processed inline: nothing is pending.
    with sqlite3.connect(path) as c:
        c.execute("DROP TABLE processing")
        c.execute("PRAGMA user_version=3")
    with SQLiteStore(path) as store:
        assert store.pending_counts() == {}
        cursor = store.processing_cursor("q1")
        assert cursor.seq == 20 and cursor.end_ns == max(b.end_ns for b in batches[:20])
        # background accept, then flush: flush processes the queue before closing windows
        pipeline = Pipeline(store, model, mode="background")
        pipeline.ingest(batches[20:30])
        report = pipeline.flush()
        assert report.states > 0 and store.pending_counts() == {}


def test_slices_stopped_mid_batch_and_restarted_give_the_uninterrupted_states(
    tmp_path: Path, model: StressModel, batches: list[SampleBatch],
    reference: list[tuple[int, str, float]],
) -> None:
    """Background workers with the smallest slice (one batch or 16 windows per turn), whose
    batches each complete many windows (all 240 s in two batches per channel), stopped in the
    middle of a batch and restarted: exactly the states of the uninterrupted run."""
    merged = _merged(batches, 120)
    path = tmp_path / "w.sqlite3"
    with SQLiteStore(path) as store:
        first = Pipeline(store, model, mode="background", slice_s=0.0)
        first.ingest(merged)
        first.start()
        deadline = time.monotonic() + 120
        while len(_states(store)) < 16:  # the first chunk of the batch's windows is stored
            assert time.monotonic() < deadline, first.lag()
            time.sleep(0.01)
        first.close()  # stops at the next chunk: inside a batch, whose windows are not all done
        partial = _states(store)
        assert 16 <= len(partial) < len(reference)
        assert first.lag().pending_batches > 0  # a batch counts until its windows are stored
    with SQLiteStore(path) as store:
        assert store.pending_counts()  # the cursor has not passed the unfinished batch
        restarted = Pipeline(store, model, mode="background", slice_s=0.0)
        restarted.start()
        try:
            _wait_processed(restarted)
        finally:
            restarted.close()
        assert store.pending_counts() == {}
        _same(_states(store), reference)


def _merged(batches: list[SampleBatch], seconds: int) -> list[SampleBatch]:
    """The same samples in batches of ``seconds`` per channel (in order of their first sample)."""
    out = []
    by_channel: dict[str, list[SampleBatch]] = {}
    for b in batches:
        by_channel.setdefault(b.channel.value, []).append(b)
    for ch, runs in by_channel.items():
        per = seconds // 10
        for k in range(0, len(runs), per):
            part = runs[k:k + per]
            out.append(part[0].model_copy(update={
                "batch_id": f"{part[0].subject_id}:{ch}:m{k}",
                "values": [v for b in part for v in b.values]}))
    out.sort(key=lambda b: (b.start_ns, b.channel.value != "ppg"))
    return out
