"""Segment reordering (the protocol-shortcut check): lossless, regular, gapped, labels follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wearemo.datasets import LabelSegment, Recording, load_recording
from wearemo.datasets.e4 import segment_order_shuffle
from wearemo.samples import Channel, ChannelSamples

EXCERPT = (Path(__file__).resolve().parents[2] / "firmware_bridge" / "virtual_wearable" / "data"
           / "stress-predict-S02-excerpt")
S = 10**9
PROTOCOL = ["rest", "stroop", "rest", "interview", "rest", "hyperventilation", "rest"]


@pytest.fixture(scope="module")
def excerpt() -> Recording:
    return load_recording(EXCERPT, subject_id="S02")


def _span(rec: Recording, seg: LabelSegment, ch: Channel) -> tuple[np.ndarray, np.ndarray]:
    d = rec.channels[ch]
    i0, i1 = np.searchsorted(d.times_ns, [seg.start_ns, seg.end_ns])
    return d.times_ns[i0:i1], d.values[i0:i1]


def test_excerpt_segments_move_intact_with_gaps_and_labels(excerpt: Recording) -> None:
    # The excerpt's labels are on whole seconds from its start (rest 372 s, stroop 376 s,
    # rest 272 s), so each segment's cut is exactly its label and every sample is kept.
    order, gap = [0, 2, 1], 30
    new = excerpt.reordered(order, gap_s=gap)
    assert [s.task for s in new.labels] == ["rest", "rest", "stroop"]
    assert new.start_ns == excerpt.start_ns
    # Segments follow each other with exactly gap_s between label spans.
    for a, b in zip(new.labels, new.labels[1:], strict=False):
        assert b.start_ns - a.end_ns == gap * S
    for k, seg_new in zip(order, new.labels, strict=True):
        seg_old = excerpt.labels[k]
        assert seg_new.end_ns - seg_new.start_ns == seg_old.end_ns - seg_old.start_ns
        shift = seg_new.start_ns - seg_old.start_ns
        assert shift % S == 0
        for ch in excerpt.channels:
            t_old, v_old = _span(excerpt, seg_old, ch)
            t_new, v_new = _span(new, seg_new, ch)
            # Same samples, same values, same times up to the segment's whole-second shift.
            assert t_new.size == t_old.size
            np.testing.assert_array_equal(v_new, v_old)
            np.testing.assert_array_equal(t_new, t_old + shift)
    # Nothing lost or invented overall, and no sample in the gaps.
    for ch, d in excerpt.channels.items():
        assert new.channels[ch].n_samples == d.n_samples
        t = new.channels[ch].times_ns
        assert all(new.label_at(int(x)) is not None for x in t[:: max(1, t.size // 500)])
        assert np.all(np.diff(t) > 0)


def test_regular_channels_stay_on_their_grid_and_stream_as_rate_batches(
    excerpt: Recording,
) -> None:
    new = excerpt.reordered([0, 2, 1], gap_s=30)
    for ch, d in excerpt.channels.items():
        nd = new.channels[ch]
        assert nd.rate_hz == d.rate_hz
        if d.rate_hz is None:
            continue
        period = round(1e9 / d.rate_hz)
        assert 1e9 / d.rate_hz == period  # E4 rates have whole-ns periods
        # Every sample on the channel's own grid start + i / rate, exactly.
        assert np.all((nd.times_ns - d.times_ns[0]) % period == 0)
        steps = np.diff(nd.times_ns)
        splices = np.flatnonzero(steps != period)
        # Only the two splices differ from the period, and both are gaps >= gap_s.
        assert splices.size == 2
        assert np.all(steps[splices] >= 30 * S)
    # The streaming path sends every regular chunk as a rate-based batch (regular timing).
    for b in new.iter_batches(chunk_s=5.0):
        assert (b.rate_hz is None) == (b.channel is Channel.RR)


def test_identity_order_without_gap_reproduces_the_recording(excerpt: Recording) -> None:
    same = excerpt.reordered([0, 1, 2], gap_s=0)
    assert same.labels == excerpt.labels
    for ch, d in excerpt.channels.items():
        np.testing.assert_array_equal(same.channels[ch].times_ns, d.times_ns)
        np.testing.assert_array_equal(same.channels[ch].values, d.values)


def test_subset_keeps_only_the_chosen_segments(excerpt: Recording) -> None:
    stroop = excerpt.labels[1]
    new = excerpt.reordered([1])
    assert [s.task for s in new.labels] == ["stroop"]
    assert new.labels[0] == stroop  # a single segment starts where it was: shift 0
    for ch in excerpt.channels:
        t_old, v_old = _span(excerpt, stroop, ch)
        np.testing.assert_array_equal(new.channels[ch].times_ns, t_old)
        np.testing.assert_array_equal(new.channels[ch].values, v_old)


def _synthetic(labels: list[LabelSegment], *, end_s: float, rate_hz: float = 4.0) -> Recording:
    n = round(end_s * rate_hz)
    t = np.round(np.arange(n) * (1e9 / rate_hz)).astype(np.int64)
    beats = np.arange(0, int(end_s * S), 800_000_000, dtype=np.int64)[1:]  # 75 bpm
    return Recording("syn", Path("."), {
        Channel.EDA: ChannelSamples(t, np.arange(n, dtype=float), rate_hz),
        Channel.RR: ChannelSamples(beats, np.full(beats.size, 800.0), None),
    }, labels)


def test_fractional_boundaries_cut_on_whole_seconds() -> None:
    # Boundaries at 10.3 s and 20.6 s, end at 30.2 s: cuts floor starts and ceil the last end.
    labels = [LabelSegment(0, int(10.3 * S), "non_stress", "rest"),
              LabelSegment(int(10.3 * S), int(20.6 * S), "stress", "stroop"),
              LabelSegment(int(20.6 * S), int(30.2 * S), "non_stress", "rest")]
    rec = _synthetic(labels, end_s=31.0)
    new = rec.reordered([0, 2, 1], gap_s=5)
    eda = new.channels[Channel.EDA]
    # Cuts [0, 10), [10, 20), [20, 31): 40 + 40 + 44 samples, all kept, in the new order.
    want = np.concatenate([np.arange(0, 40), np.arange(80, 124), np.arange(40, 80)])
    np.testing.assert_array_equal(eda.values, want.astype(float))
    assert np.all((eda.times_ns % 250_000_000) == 0)
    # Segment 2 starts 5 s after segment 0's cut end, segment 1 5 s after segment 2's.
    assert eda.times_ns[40] == 15 * S and eda.times_ns[84] == (15 + 11 + 5) * S
    # Labels clipped to their cut, then shifted (-5 s, +21 s): rest [0, 10), rest [15.6, 25.2),
    # stroop [31.3, 41): the 0.3 s and 0.6 s that rounding moved across a cut are unlabelled.
    assert [(s.start_ns, s.end_ns, s.task) for s in new.labels] == [
        (0, 10 * S, "rest"), (int(15.6 * S), int(25.2 * S), "rest"),
        (int(31.3 * S), 41 * S, "stroop")]
    # Beat times keep their within-segment spacing (0.8 s) and never span a splice.
    rr = new.channels[Channel.RR].times_ns
    steps = np.diff(rr)
    assert set(steps[steps < 5 * S].tolist()) <= {800_000_000}
    assert int(np.sum(steps >= 5 * S)) == 2
    assert rr.size == rec.channels[Channel.RR].n_samples


def test_non_whole_second_rates_use_a_longer_quantum() -> None:
    # 25.6 Hz has 128 periods in 5 s: cuts, gap and shifts are multiples of 5 s.
    labels = [LabelSegment(0, 12 * S, "non_stress", "rest"),
              LabelSegment(12 * S, 23 * S, "stress", "stroop"),
              LabelSegment(23 * S, 40 * S, "non_stress", "rest")]
    rec = _synthetic(labels, end_s=40.0, rate_hz=25.6)
    new = rec.reordered([0, 2, 1], gap_s=3)
    eda = new.channels[Channel.EDA]
    grid = np.round(np.arange(4000) * (1e9 / 25.6)).astype(np.int64)
    assert np.isin(eda.times_ns, grid).all()
    assert eda.n_samples == rec.channels[Channel.EDA].n_samples
    # Cuts [0, 10), [10, 20), [20, 40) s; the gap rounds up to 5 s: segment 2 goes to
    # [15, 35) (shift -5 s), segment 1 to [40, 50) (shift +30 s).
    shifts = [n.start_ns - rec.labels[k].start_ns for k, n in zip([0, 2, 1], new.labels,
                                                                   strict=True)]
    assert shifts == [0, -5 * S, 30 * S]
    assert eda.times_ns[256] == 15 * S  # first sample of segment 2: 10 s + a 5 s gap


@pytest.mark.parametrize("order, match", [
    ([0, 0, 1], "more than once"),
    ([0, 3], r"not in 0\.\.2"),
    ([-1, 0], r"not in 0\.\.2"),
    ([], "empty"),
    ([0, 1.5], "integer"),
])
def test_bad_orders_are_rejected(excerpt: Recording, order: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        excerpt.reordered(order)


@pytest.mark.parametrize("gap", [-1.0, 0.5, float("nan"), float("inf")])
def test_bad_gaps_are_rejected(excerpt: Recording, gap: float) -> None:
    with pytest.raises(ValueError, match="gap_s"):
        excerpt.reordered([0, 1], gap_s=gap)


def test_recording_without_labels_is_rejected(excerpt: Recording) -> None:
    bare = Recording("x", Path("."), excerpt.channels, [])
    with pytest.raises(ValueError, match="no label segments"):
        bare.reordered([0])


def test_segment_empty_after_rounding_is_rejected() -> None:
    labels = [LabelSegment(0, int(10.2 * S), "non_stress", "rest"),
              LabelSegment(int(10.2 * S), int(10.7 * S), "stress", "blip"),
              LabelSegment(int(10.7 * S), 20 * S, "non_stress", "rest")]
    rec = _synthetic(labels, end_s=20.0)
    with pytest.raises(ValueError, match=r"segment 1 .*empty"):
        rec.reordered([0, 2, 1])
    assert rec.reordered([0, 2]).channels[Channel.EDA].n_samples == 80


def _protocol_labels() -> list[LabelSegment]:
    return [LabelSegment(i * S, (i + 1) * S, "non_stress" if t == "rest" else "stress", t)
            for i, t in enumerate(PROTOCOL)]


def test_shuffle_keeps_first_rest_and_blocks_and_differs() -> None:
    labels = _protocol_labels()
    seen = set()
    for seed in range(20):
        order = segment_order_shuffle(labels, seed=seed)
        assert order[0] == 0 and sorted(order) == list(range(7))
        assert order != list(range(7))
        # Every stress task is followed by its own recovery rest.
        for pos, k in enumerate(order):
            if labels[k].label == "stress":
                assert order[pos + 1] == k + 1
        assert segment_order_shuffle(labels, seed=seed) == order  # seeded: reproducible
        seen.add(tuple(order))
    assert len(seen) == 5  # every non-identity order of the three task blocks occurs


def test_shuffle_needs_two_blocks(excerpt: Recording) -> None:
    with pytest.raises(ValueError, match="two task blocks"):
        segment_order_shuffle(excerpt.labels, seed=0)  # rest, stroop, rest: one block
    with pytest.raises(ValueError, match="two task blocks"):
        segment_order_shuffle([], seed=0)


def test_shuffled_order_reorders_a_full_protocol_losslessly() -> None:
    labels = [LabelSegment(a * S, b * S, "non_stress" if t == "rest" else "stress", t)
              for a, b, t in zip([0, 10, 20, 30, 40, 50, 60], [10, 20, 30, 40, 50, 60, 70],
                                 PROTOCOL, strict=True)]
    rec = _synthetic(labels, end_s=70.0)
    order = segment_order_shuffle(rec.labels, seed=3)
    new = rec.reordered(order, gap_s=30)
    assert [s.task for s in new.labels] == [PROTOCOL[k] for k in order]
    want = np.concatenate([np.arange(40 * k, 40 * (k + 1)) for k in order]).astype(float)
    np.testing.assert_array_equal(new.channels[Channel.EDA].values, want)
