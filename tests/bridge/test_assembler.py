"""Frames and heart-rate notifications → SampleBatches: values, times, gaps, ids."""

from __future__ import annotations

import numpy as np
import pytest

from firmware_bridge.assembler import BatchAssembler
from firmware_bridge.gatt.heart_rate import HeartRateMeasurement
from firmware_bridge.gatt.wearemo_sensor import SensorFrame
from wearemo.samples import Channel

T0 = 1_700_000_000_000_000_000  # UTC of device time 0 in these tests


def _frames(channel: Channel, rate_hz: float, n_frames: int, per_frame: int, *, seq0: int = 0):
    axes = 3 if channel is Channel.ACC else 1
    out = []
    for k in range(n_frames):
        i0 = k * per_frame
        vals = np.arange(i0, i0 + per_frame, dtype=float) / 100.0
        if axes == 3:
            vals = np.stack([vals, -vals, vals * 2], axis=1)
        t_us = round(i0 * 1e6 / rate_hz)
        out.append(SensorFrame(channel, seq0 + k, t_us, False, rate_hz, vals))
    return out


def _start(frame: SensorFrame) -> int:
    return T0 + frame.device_time_us * 1000


def _feed(asm: BatchAssembler, frames) -> list:
    out = []
    for f in frames:
        out += asm.add_frame(f, start_ns=_start(f))
    return out + asm.flush()


def test_contiguous_frames_merge_to_one_second_batches() -> None:
    asm = BatchAssembler(subject_id="s01", device_id="vw-01", max_batch_s=1.0)
    frames = _frames(Channel.PPG, 64.0, 10, 16)  # 160 samples = 2.5 s
    batches = _feed(asm, frames)
    assert [b.n_samples for b in batches] == [64, 64, 32]
    assert all(b.rate_hz == 64.0 for b in batches)
    # Every sample's time equals its device time mapped to UTC (exact: 64 Hz in whole ns).
    times = np.concatenate([b.times_ns() for b in batches])
    np.testing.assert_array_equal(times, T0 + np.round(np.arange(160) * 1e9 / 64).astype(int))
    values = np.concatenate([b.values_array() for b in batches])
    np.testing.assert_allclose(values, np.arange(160) / 100.0, rtol=0, atol=1e-12)
    assert [b.seq for b in batches] == [0, 4, 8]
    assert batches[0].batch_id == f"vw-01:ppg:0:{T0}"
    s = asm.stats.of(Channel.PPG)
    assert (s.frames, s.samples, s.batches, s.gaps) == (10, 160, 3, 0)


def test_seq_gap_closes_batch_and_counts_missing_frames() -> None:
    asm = BatchAssembler(subject_id="s01", device_id="vw-01", max_batch_s=10.0)
    frames = _frames(Channel.EDA, 4.0, 10, 2)
    kept = frames[:3] + frames[6:]  # frames 3, 4, 5 lost
    batches = _feed(asm, kept)
    assert [(b.seq, b.n_samples) for b in batches] == [(0, 6), (6, 8)]
    assert batches[1].start_ns == T0 + 3 * 10**9  # sample 12 at 4 Hz
    s = asm.stats.of(Channel.EDA)
    assert (s.gaps, s.missing_frames, s.samples) == (1, 3, 14)


def test_duplicate_frames_dropped_and_restart_is_new_run() -> None:
    asm = BatchAssembler(subject_id="s01", device_id="vw-01", max_batch_s=10.0)
    frames = _frames(Channel.TEMP, 4.0, 4, 4)
    out = []
    for f in [*frames, frames[2], frames[3]]:  # re-sent after a RESUME_FROM
        out += asm.add_frame(f, start_ns=_start(f))
    rebooted = _frames(Channel.TEMP, 4.0, 2, 4)  # seq and ticks start again at 0
    for f in rebooted:
        out += asm.add_frame(f, start_ns=T0 + 3600 * 10**9 + f.device_time_us * 1000)
    out += asm.flush()
    assert [b.n_samples for b in out] == [16, 8]
    assert out[0].batch_id != out[1].batch_id  # same seq/ticks, different UTC start
    s = asm.stats.of(Channel.TEMP)
    assert (s.duplicate_frames, s.restarts, s.gaps, s.samples) == (2, 1, 0, 24)


def test_time_discontinuity_or_rate_change_starts_new_batch() -> None:
    asm = BatchAssembler(subject_id="s01", device_id="vw-01", max_batch_s=10.0)
    a = SensorFrame(Channel.EDA, 0, 0, False, 4.0, np.ones(4))
    b = SensorFrame(Channel.EDA, 1, 5_000_000, False, 4.0, np.ones(4))  # should be 1 s
    c = SensorFrame(Channel.EDA, 2, 6_000_000, False, 8.0, np.ones(8))
    out = _feed(asm, [a, b, c])
    assert [(x.start_ns - T0, x.rate_hz, x.n_samples) for x in out] == [
        (0, 4.0, 4), (5 * 10**9, 4.0, 4), (6 * 10**9, 8.0, 8)
    ]


def test_acc_triples() -> None:
    asm = BatchAssembler(subject_id="s01", device_id="vw-01")
    out = _feed(asm, _frames(Channel.ACC, 32.0, 3, 8))
    arr = np.concatenate([b.values_array() for b in out])
    assert arr.shape == (24, 3)
    np.testing.assert_allclose(arr[:, 1], -np.arange(24) / 100.0)


def test_batch_ids_deterministic() -> None:
    frames = _frames(Channel.PPG, 64.0, 8, 16)
    ids1 = [b.batch_id for b in _feed(BatchAssembler(subject_id="a", device_id="d"), frames)]
    ids2 = [b.batch_id for b in _feed(BatchAssembler(subject_id="a", device_id="d"), frames)]
    assert ids1 == ids2 and len(set(ids1)) == len(ids1)


def _hr(bpm: int, *rr_1024: int) -> HeartRateMeasurement:
    return HeartRateMeasurement(bpm, "detected", None, tuple(rr_1024))


def test_rr_beats_end_at_notification_time() -> None:
    asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=100.0)
    asm.add_heart_rate(_hr(60, 1024, 512), time_ns=T0 + 10 * 10**9)
    hr, rr = asm.flush()
    assert hr.channel is Channel.HR and hr.timestamps_ns == [T0 + 10 * 10**9]
    assert rr.values == [1000.0, 500.0]
    assert rr.timestamps_ns == [T0 + 9_500_000_000, T0 + 10 * 10**9]


def test_rr_overlap_is_chained_without_duplicates_or_loss() -> None:
    asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=100.0)
    asm.add_heart_rate(_hr(60, 1024), time_ns=T0 + 10 * 10**9)
    # Arrives early (jitter): anchored, its beats would be at 9.7 s and 10.5 s, before the
    # beat already stamped at 10 s; they must be chained on: 10 s + 0.8 s, + 0.8 s.
    asm.add_heart_rate(_hr(60, 819, 819), time_ns=T0 + 10_500_000_000)
    _hr_batch, rr = asm.flush()
    rr_ns = [round(v * 1e6) for v in rr.values]
    assert len(rr.values) == 3
    assert rr.timestamps_ns[1] == T0 + 10 * 10**9 + rr_ns[1]
    assert rr.timestamps_ns[2] == rr.timestamps_ns[1] + rr_ns[2]
    assert all(b > a for a, b in zip(rr.timestamps_ns, rr.timestamps_ns[1:], strict=False))
    assert asm.stats.of(Channel.RR).retimed == 2


def test_rr_gap_keeps_anchor_and_hr_time_kept_increasing() -> None:
    asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=100.0)
    asm.add_heart_rate(_hr(60, 1024), time_ns=T0 + 10 * 10**9)
    asm.add_heart_rate(_hr(61, 1024), time_ns=T0 + 20 * 10**9)  # lost notifications between
    asm.add_heart_rate(_hr(62), time_ns=T0 + 20 * 10**9)  # same instant, no RR
    hr, rr = asm.flush()
    assert rr.timestamps_ns == [T0 + 10 * 10**9, T0 + 20 * 10**9]
    assert hr.values == [60.0, 61.0, 62.0]
    assert hr.timestamps_ns[2] == hr.timestamps_ns[1] + 1


def test_hr_rr_batches_close_after_max_batch_s() -> None:
    asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=2.0)
    out = []
    for k in range(7):
        out += asm.add_heart_rate(_hr(60, 1024), time_ns=T0 + k * 10**9)
    out += asm.flush()
    hr = [b for b in out if b.channel is Channel.HR]
    assert [b.n_samples for b in hr] == [3, 3, 1]
    rr = [b for b in out if b.channel is Channel.RR]
    assert sum(b.n_samples for b in rr) == 7
    assert hr[0].batch_id == f"d:hr:t{T0}"


def test_flush_stale_and_bad_options() -> None:
    asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=10.0)
    f = SensorFrame(Channel.EDA, 0, 0, False, 4.0, np.ones(4))
    assert asm.add_frame(f, start_ns=T0, host_time_ns=100) == []
    assert asm.flush_stale(host_time_ns=100 + 10**8, max_age_s=1.0) == []
    assert len(asm.flush_stale(host_time_ns=100 + 2 * 10**9, max_age_s=1.0)) == 1
    with pytest.raises(ValueError, match="max_batch_s"):
        BatchAssembler(subject_id="s", device_id="d", max_batch_s=0)


def test_restore_continues_a_previous_runs_spooled_data() -> None:
    S = 10**9  # noqa: N806
    first = BatchAssembler(subject_id="s", device_id="d", max_batch_s=1.0)
    for seq in range(3):  # 4 Hz temp, 2 samples a frame: a batch closes every 2 frames
        first.add_frame(SensorFrame(Channel.TEMP, seq, seq * 500_000, True, 4.0,
                                    np.array([33.0, 33.1])), start_ns=seq * 500_000_000)
    first.add_heart_rate(HeartRateMeasurement(60, "detected", None, ()), time_ns=1 * S)
    first.add_heart_rate(HeartRateMeasurement(61, "detected", None, ()), time_ns=2 * S)
    cursors = first.cursors()
    assert cursors == {Channel.TEMP: 1, Channel.HR: 2 * S}  # frame 2 is still open
    second = BatchAssembler(subject_id="s", device_id="d", max_batch_s=1.0)
    second.restore(cursors)
    assert second.last_seq(Channel.TEMP) == 1  # a resume asks for frame 2
    out = second.add_frame(SensorFrame(Channel.TEMP, 2, 1_000_000, True, 4.0,
                                       np.array([33.2, 33.3])), start_ns=S)
    out += second.add_frame(SensorFrame(Channel.TEMP, 3, 1_500_000, True, 4.0,
                                        np.array([33.4, 33.5])), start_ns=S + S // 2)
    assert [b.values for b in out] == [[33.2, 33.3, 33.4, 33.5]]
    temp = second.stats.of(Channel.TEMP)
    assert temp.gaps == 0 and temp.restarts == 0
    # heart rate already stored by the first run is not stored again
    second.add_heart_rate(HeartRateMeasurement(61, "detected", None, ()), time_ns=2 * S)
    second.add_heart_rate(HeartRateMeasurement(62, "detected", None, ()), time_ns=3 * S)
    (hr,) = [b for b in second.flush() if b.channel is Channel.HR]
    assert hr.timestamps_ns == [3 * S] and hr.values == [62.0]
    assert second.stats.of(Channel.HR).duplicate_frames == 1
