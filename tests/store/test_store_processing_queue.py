"""The store's durable processing queue: arrival order, cursors, pending counts, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from wearemo.samples import SampleBatch
from wearemo.store import BatchConflictError, SQLiteStore
from wearemo.store.base import ProcessingCursor


def eda(subject: str, i: int, value: float = 1.0) -> SampleBatch:
    return SampleBatch(batch_id=f"{subject}:{i}", subject_id=subject, device_id="d",
                       channel="eda", start_ns=i * 10**9, rate_hz=4.0, values=[value] * 3)


def test_queue_follows_arrival_order_and_cursors(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as s:
        assert s.add_batches([eda("a", 0), eda("b", 0), eda("a", 1), eda("c", 0),
                              eda("b", 1)]) == [True] * 5
        assert s.pending_counts() == {"a": (2, 6), "b": (2, 6), "c": (1, 3)}
        assert [(q.seq, q.batch.batch_id) for q in s.pending_batches("b", after_seq=0)] == [
            (2, "b:0"), (5, "b:1")]
        assert s.pending_batches("b", after_seq=2, limit=1)[0].batch == eda("b", 1)
        s.set_processing_cursor(ProcessingCursor(subject_id="a", seq=3, end_ns=10**9))
        s.set_processing_cursor(ProcessingCursor(subject_id="b", seq=2, end_ns=5 * 10**8))
        assert s.pending_counts() == {"b": (1, 3), "c": (1, 3)}
        # replay of processed batches only (what a restart rebuilds the stream from)
        assert [b.batch_id for b in s.batches("b", through_seq=2)] == ["b:0"]
    with SQLiteStore(tmp_path / "w.sqlite3") as s:  # cursors are durable
        assert s.processing_cursor("a") == ProcessingCursor(subject_id="a", seq=3,
                                                            end_ns=10**9)
        assert s.processing_cursor("zz") == ProcessingCursor(subject_id="zz")
        assert s.pending_counts() == {"b": (1, 3), "c": (1, 3)}


def test_add_batches_is_all_or_nothing(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "w.sqlite3") as s:
        assert s.add_batches([eda("a", 0)]) == [True]
        assert s.add_batches([eda("a", 1), eda("a", 0)]) == [True, False]  # same content
        with pytest.raises(BatchConflictError, match="different content"):
            s.add_batches([eda("a", 2), eda("a", 0, value=9.0)])
        assert not s.has_batch("a", "a:2")  # nothing of the failed call stored
        assert s.subject_summary("a").batches == 2  # type: ignore[union-attr]
