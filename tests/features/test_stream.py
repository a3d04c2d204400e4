"""Window scheduler: alignment, edges, ordering, streaming == batch, flat input."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import neurokit2 as nk
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wearemo.datasets import Recording, load_recording
from wearemo.features import (
    FEATURE_NAMES,
    FeatureWindow,
    SubjectStream,
    WindowConfig,
    featurize_recording,
    windows_to_frame,
)
from wearemo.samples import Channel, ChannelSamples, SampleBatch

EXCERPT = (Path(__file__).resolve().parents[2] / "firmware_bridge" / "virtual_wearable" / "data"
           / "stress-predict-S02-excerpt")
S = 10**9


def _batch(ch: Channel, start_ns: int, rate: float, values: list, i: int = 0) -> SampleBatch:
    return SampleBatch(batch_id=f"b{ch.value}{i}", subject_id="s1", device_id="d",
                       channel=ch, start_ns=start_ns, rate_hz=rate, values=values)


def _regular(ch: Channel, start_ns: int, rate: float, values: np.ndarray) -> ChannelSamples:
    n = values.shape[0]
    return ChannelSamples(start_ns + np.round(np.arange(n) * 1e9 / rate).astype(np.int64),
                       values, rate)


def test_alignment_first_window_and_edges() -> None:
    cfg = WindowConfig(length_s=60, step_s=5)
    start = 1_700_000_002 * S + 300_000_000  # not on a step
    s = SubjectStream("s1", config=cfg)
    out = s.push(_batch(Channel.TEMP, start, 4.0, [33.0] * (4 * 90)))
    ends = [w.end_ns for w in out]
    assert all(e % (5 * S) == 0 for e in ends)
    assert ends[0] - 60 * S >= start and ends[0] - 65 * S < start
    assert np.all(np.diff(ends) == 5 * S)
    last = start + (4 * 90 - 1) * 250_000_000
    assert ends[-1] <= last  # only windows with data at or after their end
    w = out[0]
    assert w.start_ns == w.end_ns - 60 * S
    assert w.sample_counts["temp"] == 240 and w.coverage["temp"] == 1.0
    assert s.flush() == []


def test_waits_for_expected_channel_then_lateness() -> None:
    cfg = WindowConfig(length_s=10, step_s=5, lateness_s=20)
    s = SubjectStream("s1", config=cfg, expected_channels=frozenset({Channel.TEMP, Channel.EDA}))
    t0 = 1_000 * S
    assert s.push(_batch(Channel.TEMP, t0, 4.0, [33.0] * 4 * 25)) == []  # 25 s, EDA missing
    out = s.push(_batch(Channel.TEMP, t0 + 25 * S, 4.0, [33.0] * 4 * 10, 1))  # newest 34.75 s
    # The window ending at 10 s is late (34.75 - 10 > 20 s): emitted without EDA, which shows
    # coverage 0; the one ending at 15 s (19.75 s behind) still waits.
    assert [w.end_ns - t0 for w in out] == [10 * S]
    assert out[0].coverage["eda"] == 0.0 and "eda_scl_mean_uS" not in out[0].features
    assert "temp_mean_degC" in out[0].features
    out = s.push(_batch(Channel.EDA, t0 + 14 * S, 4.0, [1.0] * 4 * 21))  # EDA 14..34.75 s
    # EDA is decomposed in 10-s epoch blocks once 5 s past a block are in: committed through
    # 20 s (the block 20-30 s waits for 35 s), so the windows ending at 25 and 30 s wait too.
    assert [w.end_ns - t0 for w in out] == [15 * S, 20 * S]
    assert out[0].coverage["eda"] == pytest.approx(0.1)
    out += s.flush()
    assert [w.end_ns - t0 for w in out] == [15 * S, 20 * S, 25 * S, 30 * S]
    assert out[-1].coverage["eda"] == 1.0


def test_out_of_order_and_duplicate_raise() -> None:
    s = SubjectStream("s1")
    s.push(_batch(Channel.EDA, 100 * S, 4.0, [1.0] * 8))
    with pytest.raises(ValueError, match=r"'eda'.*at or before"):
        s.push(_batch(Channel.EDA, 101 * S, 4.0, [1.0] * 8, 1))  # overlaps (last at 101.75 s)
    with pytest.raises(ValueError, match="eda"):
        s.push(_batch(Channel.EDA, 100 * S, 4.0, [1.0] * 8, 2))  # duplicate
    s.push(_batch(Channel.TEMP, 100 * S, 4.0, [33.0] * 8))  # another channel is fine
    with pytest.raises(ValueError, match="subject"):
        s.push(SampleBatch(batch_id="x", subject_id="s2", device_id="d", channel="eda",
                           start_ns=200 * S, rate_hz=4.0, values=[1.0]))


def _simulated_recording(minutes: float, bpm: float, *, seed: int = 0) -> Recording:
    dur = int(minutes * 60)
    t0 = 1_700_000_000 * S
    ppg = nk.ppg_simulate(duration=dur, sampling_rate=64, heart_rate=bpm, random_state=seed)
    eda = nk.eda_simulate(duration=dur, sampling_rate=4, scr_number=dur // 20,
                          random_state=seed)
    rng = np.random.default_rng(seed)
    acc = np.tile([0.0, 0.0, 1.0], (32 * dur, 1)) + rng.normal(0, 0.005, (32 * dur, 3))
    ch = {
        Channel.PPG: _regular(Channel.PPG, t0, 64.0, ppg),
        Channel.EDA: _regular(Channel.EDA, t0, 4.0, eda),
        Channel.TEMP: _regular(Channel.TEMP, t0, 4.0, np.full(4 * dur, 33.0)),
        Channel.ACC: _regular(Channel.ACC, t0, 32.0, acc),
    }
    return Recording("sim", Path("."), ch)


@pytest.mark.parametrize("bpm", [70, 110])
def test_simulated_heart_rate_recovered(bpm: int) -> None:
    ws = featurize_recording(_simulated_recording(2, bpm), config=WindowConfig(step_s=15))
    assert len(ws) >= 3
    for w in ws:
        assert w.beat_source == "ppg"
        assert abs(w.features["hr_mean_bpm"] - bpm) < 2.0  # tolerance: 2 bpm
        assert w.quality["ppg"] > 0.9
        assert not w.motion
        assert w.features["temp_mean_degC"] == pytest.approx(33.0)
        assert w.methods["neurokit2"] == nk.__version__


def test_device_rr_preferred_when_covering() -> None:
    rec = _simulated_recording(2, 70)
    t0 = rec.start_ns
    rr = np.full(180, 600.0)
    rec.channels[Channel.RR] = ChannelSamples(t0 + (np.cumsum(rr) * 1e6).astype(np.int64), rr, None)
    ws = featurize_recording(rec, config=WindowConfig(step_s=30))
    assert ws and all(w.beat_source == "rr" for w in ws)
    assert ws[0].features["hr_mean_bpm"] == pytest.approx(100.0)
    assert ws[0].features["hrv_rmssd_ms"] == 0.0


def test_flat_zero_input_is_nan_free() -> None:
    t0 = 1_700_000_000 * S
    dur = 90
    rec = Recording("flat", Path("."), {
        Channel.PPG: _regular(Channel.PPG, t0, 64.0, np.zeros(64 * dur)),
        Channel.EDA: _regular(Channel.EDA, t0, 4.0, np.zeros(4 * dur)),
        Channel.TEMP: _regular(Channel.TEMP, t0, 4.0, np.zeros(4 * dur)),
        Channel.ACC: _regular(Channel.ACC, t0, 32.0, np.zeros((32 * dur, 3))),
    })
    ws = featurize_recording(rec)
    assert ws
    for w in ws:
        assert w.beat_source == "none" and "hr_mean_bpm" not in w.features
        for d in (w.features, w.coverage, w.quality):
            assert all(math.isfinite(v) for v in d.values())
    frame = windows_to_frame(ws)
    assert list(frame.columns[3:3 + len(FEATURE_NAMES)]) == list(FEATURE_NAMES)


_EXCERPT = load_recording(EXCERPT)
_SHORT = _EXCERPT.between(_EXCERPT.start_ns + 200 * S, _EXCERPT.start_ns + 380 * S)
_CFG = WindowConfig(length_s=60, step_s=5)
_BATCH = featurize_recording(_SHORT, config=_CFG)


def _chunked(rec: Recording, sizes: list[float]) -> list[SampleBatch]:
    out = []
    k = 0
    for ch, data in rec.channels.items():
        i = 0
        while i < data.n_samples:
            # chunk durations between 0.5 s and 20 s (< lateness_s), as a device might send
            dur = sizes[k % len(sizes)]
            k += 1
            j = int(np.searchsorted(data.times_ns, data.times_ns[i] + dur * 1e9, side="left"))
            j = max(j, i + 1)
            timing = ({"rate_hz": data.rate_hz} if data.rate_hz
                      else {"timestamps_ns": data.times_ns[i:j].tolist()})
            out.append(SampleBatch(batch_id=f"{ch.value}{i}", subject_id=rec.subject_id,
                                   device_id="d", channel=ch, start_ns=int(data.times_ns[i]),
                                   values=data.values[i:j].tolist(), **timing))
            i = j
    order = {c: n for n, c in enumerate(Channel)}
    out.sort(key=lambda b: (b.start_ns, order[b.channel]))
    return out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=0.5, max_value=20.0), min_size=1, max_size=12))
def test_streaming_equals_batch(sizes: list[float]) -> None:
    s = SubjectStream(_SHORT.subject_id, config=_CFG,
                      expected_channels=frozenset(_SHORT.channels))
    got = []
    for b in _chunked(_SHORT, sizes):
        got.extend(s.push(b))
    got.extend(s.flush())
    assert [w.end_ns for w in got] == [w.end_ns for w in _BATCH]
    assert got == _BATCH  # identical features, counts, coverage, quality, flags


def test_batch_independent_of_chunk_size() -> None:
    assert featurize_recording(_SHORT, config=_CFG, chunk_s=1.0) == _BATCH
    assert len(_BATCH) == (380 - 200 - 60) // 5 or len(_BATCH) >= 20


# -- gaps: windows with no sample are not computed; work follows the data, not the time span ----

_DAY = 86_400 * S


def _shifted(rec: Recording, offset_ns: int) -> dict[Channel, ChannelSamples]:
    return {ch: ChannelSamples(d.times_ns + offset_ns, d.values, d.rate_hz)
            for ch, d in rec.channels.items()}


def _joined(a: Recording, b: Recording, gap_ns: int) -> Recording:
    """``a`` then ``b`` moved to start ``gap_ns`` after ``a``'s last sample."""
    moved = _shifted(b, a.end_ns + gap_ns - b.start_ns)
    channels = {}
    for ch in {**a.channels, **moved}:  # a channel may be in one part only (rr here)
        parts = [p[ch] for p in (a.channels, moved) if ch in p]
        channels[ch] = ChannelSamples(np.concatenate([p.times_ns for p in parts]),
                                      np.concatenate([p.values for p in parts]), parts[0].rate_hz)
    return Recording(a.subject_id, Path("."), channels)


def _ends_with_data(rec: Recording, cfg: WindowConfig) -> list[int]:
    """Ground truth of the schedule: every aligned end from the first window to the last sample
    whose window holds at least one sample of some channel."""
    times = np.unique(np.concatenate([d.times_ns for d in rec.channels.values()]))
    step, length = cfg.step_ns, cfg.length_ns
    first = -(-(int(times[0]) + length) // step) * step
    # The windows a sample t falls in end in (t, t + length]: collect their aligned ends.
    lo = times // step + 1
    hi = (times + length) // step
    ends: set[int] = set()
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        ends.update(range(a * step, b * step + 1, step))
    return sorted(e for e in ends if first <= e <= int(times[-1]))


_PART_A = _EXCERPT.between(_EXCERPT.start_ns + 200 * S, _EXCERPT.start_ns + 320 * S)
_PART_B = _EXCERPT.between(_EXCERPT.start_ns + 320 * S, _EXCERPT.start_ns + 440 * S)
_GAPPED = _joined(_PART_A, _PART_B, 7 * _DAY)
_B_START = _PART_A.end_ns + 7 * _DAY


@functools.cache
def _gapped_batch() -> list[FeatureWindow]:
    return featurize_recording(_GAPPED, config=_CFG)


@pytest.mark.timeout(300)
def test_gap_of_a_week_costs_only_the_windows_holding_data() -> None:
    ws = _gapped_batch()
    # One window per 5-s step over 7 days would be 120,960; only those holding a sample exist.
    assert [w.end_ns for w in ws] == _ends_with_data(_GAPPED, _CFG)
    assert len(ws) < 2 * (120 + 60) // 5
    assert all(sum(w.sample_counts.values()) > 0 for w in ws)
    # The windows on each side equal those of that part alone: nothing leaks over the gap.
    alone_b = featurize_recording(
        Recording(_GAPPED.subject_id, Path("."), _shifted(_PART_B, _B_START - _PART_B.start_ns)),
        config=_CFG)
    after = [w for w in ws if w.start_ns >= _B_START]
    assert len(after) >= 10 and after == alone_b
    # Part A alone (with the rr channel it lacks, as the joined recording has it). Its last
    # windows are left out: there they close at the end of the recording, in the joined one by
    # lateness (other channels resumed first), before the EDA/beat trackers' last blocks
    # (block 10 s + right context 5 s) are in, like any window closed by lateness.
    stream_a = SubjectStream(_PART_A.subject_id, config=_CFG,
                             expected_channels=frozenset(_GAPPED.channels))
    alone_a = [w for b in _PART_A.iter_batches(chunk_s=5.0) for w in stream_a.push(b)]
    alone_a += stream_a.flush()
    settled = _PART_A.end_ns - 20 * S
    before = [w for w in ws if w.end_ns <= settled]
    assert len(before) >= 8 and before == [w for w in alone_a if w.end_ns <= settled]


@pytest.mark.timeout(600)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(min_value=0.5, max_value=20.0), min_size=1, max_size=12))
def test_streaming_equals_batch_across_a_gap(sizes: list[float]) -> None:
    s = SubjectStream(_GAPPED.subject_id, config=_CFG,
                      expected_channels=frozenset(_GAPPED.channels))
    got = []
    for b in _chunked(_GAPPED, sizes):
        got.extend(s.push(b))
    got.extend(s.flush())
    assert got == _gapped_batch()
    assert s.skipped_windows > 7 * _DAY // (5 * S) - 100


def _temp(i: int, start_ns: int, n: int, rate: float = 4.0) -> SampleBatch:
    return SampleBatch(batch_id=f"t{i}", subject_id="s1", device_id="d", channel="temp",
                       start_ns=start_ns, rate_hz=rate, values=[33.0] * n)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("jump_to", [1_700_000_000 * S + 7 * _DAY, 9 * 10**18])
def test_one_small_batch_after_a_jump_is_bounded(jump_to: int) -> None:
    cfg = WindowConfig(length_s=60, step_s=5)
    t0 = 1_700_000_000 * S
    s = SubjectStream("s1", config=cfg)
    first = s.push(_temp(0, t0, 4 * 120))  # 2 min
    late = s.push(_temp(1, jump_to, 4))  # 4 samples, a week (or 250 years) later
    late += s.flush()
    # The windows still open before the jump (with data), then the ones holding the 4 samples.
    assert len(first) + len(late) <= (120 - 60) // 5 + 1 + 60 // 5 + 1
    assert all(w.sample_counts.get("temp", 0) > 0 for w in late)
    assert late[-1].end_ns <= jump_to + 5 * S
    assert s.skipped_windows >= (jump_to - t0) // (5 * S) - 40


@pytest.mark.timeout(120)
def test_batches_spanning_a_gap_are_bounded() -> None:
    """A gap inside one batch: rr beats with a week between two of them, and a 1e-5 Hz
    temperature channel (a sample every 28 h)."""
    t0 = 1_700_000_000 * S
    s = SubjectStream("s1", config=WindowConfig(length_s=60, step_s=5))
    times = [t0 + k * S for k in range(90)] + [t0 + 7 * _DAY + k * S for k in range(90)]
    out = s.push(SampleBatch(batch_id="rr", subject_id="s1", device_id="d", channel="rr",
                             start_ns=times[0], timestamps_ns=times, values=[1000.0] * 180))
    out += s.push(_temp(0, t0 + 8 * _DAY, 6, rate=1e-5))
    out += s.flush()
    assert [w.end_ns for w in out] == sorted(
        {e for t in times + [t0 + 8 * _DAY + round(k * 1e14) for k in range(6)]
         for e in range(((t // (5 * S)) + 1) * 5 * S, t + 60 * S + 1, 5 * S)
         if t0 + 60 * S <= e <= t0 + 8 * _DAY + round(5 * 1e14)})
    assert len(out) < 3 * 180 + 6 * 12
