"""OrderTracker and IngestReport: per-(subject, channel) ordering with history from a lookup."""

from __future__ import annotations

import pytest

from wearemo.ingest import BatchResult, IngestReport, OrderTracker
from wearemo.samples import Channel, SampleBatch

S = 1_000_000_000


def eda(batch_id: str, start_s: float, n: int = 8, *, subject: str = "s1") -> SampleBatch:
    return SampleBatch(batch_id=batch_id, subject_id=subject, device_id="d", channel="eda",
                       start_ns=round(start_s * S), rate_hz=4.0, values=[1.0] * n)


def test_forward_batches_pass_and_advance_the_mark() -> None:
    tracker = OrderTracker(lambda s, c: None)
    a, b = eda("a", 0.0), eda("b", 2.0)  # a covers 0 .. 1.75 s
    assert tracker.check(a) is None
    tracker.accept(a)
    assert tracker.last_accepted_ns("s1", Channel.EDA) == round(1.75 * S)
    assert tracker.check(b) is None
    tracker.accept(b)
    assert tracker.last_accepted_ns("s1", Channel.EDA) == round(3.75 * S)


@pytest.mark.parametrize("start_s", [0.0, 1.0, 1.75])  # same start / inside / exactly at last
def test_overlap_or_rewind_is_named(start_s: float) -> None:
    tracker = OrderTracker(lambda s, c: None)
    tracker.accept(eda("a", 0.0))
    v = tracker.check(eda("x", start_s))
    assert v is not None
    assert (v.field, v.start_ns, v.last_accepted_ns, v.channel) == (
        "start_ns", round(start_s * S), round(1.75 * S), Channel.EDA)
    assert f"start_ns {round(start_s * S)}" in v.message
    assert "'eda'" in v.message and str(round(1.75 * S)) in v.message and "'s1'" in v.message


def test_channels_and_subjects_are_independent() -> None:
    tracker = OrderTracker(lambda s, c: None)
    tracker.accept(eda("a", 10.0))
    assert tracker.check(eda("b", 0.0, subject="s2")) is None
    ppg = SampleBatch(batch_id="p", subject_id="s1", device_id="d", channel="ppg", start_ns=0,
                      rate_hz=64.0, values=[0.0] * 4)
    assert tracker.check(ppg) is None


def test_history_comes_from_the_lookup_once() -> None:
    calls: list[tuple[str, Channel]] = []

    def lookup(subject: str, channel: Channel) -> int | None:
        calls.append((subject, channel))
        return 5 * S if channel is Channel.EDA else None

    tracker = OrderTracker(lookup)
    assert tracker.check(eda("old", 4.0)) is not None  # before the stored mark (restart)
    assert tracker.check(eda("new", 5.25)) is None
    assert calls == [("s1", Channel.EDA)]  # cached after the first look-up
    tracker.forget("s1")
    tracker.check(eda("new", 5.25))
    assert len(calls) == 2


def test_report_counts() -> None:
    report = IngestReport(results=[
        BatchResult("a", "s1", "eda", "stored"),
        BatchResult("b", "s1", "eda", "duplicate"),
        BatchResult("c", "s1", "eda", "rejected", "start_ns", "overlaps"),
    ], windows=2, states=2)
    assert (report.stored, report.duplicates, report.rejected_index) == (1, 1, 2)
    assert report.rejected is not None and report.rejected.batch_id == "c"
    assert IngestReport().rejected is None and IngestReport().rejected_index is None
