"""The incremental window scheduler: one per subject, used by live streaming and batch alike.

Example
-------
>>> from wearemo.samples import SampleBatch
>>> s = SubjectStream("s1", config=WindowConfig(length_s=10, step_s=5))
>>> b = SampleBatch(batch_id="b", subject_id="s1", device_id="d", channel="temp",
...                 start_ns=0, rate_hz=4.0, values=[33.0] * 80)
>>> [w.end_ns // 10**9 for w in s.push(b)], [w.end_ns // 10**9 for w in s.flush()]
([10, 15], [])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wearemo.features.compute import HRVMemo, window_features
from wearemo.features.config import WindowConfig, first_window_end
from wearemo.features.window import FeatureWindow
from wearemo.samples import Channel, ChannelSamples, SampleBatch
from wearemo.signals.tracks import EDATrack, PPGTrack

__all__ = ["SubjectStream"]


@dataclass(slots=True)
class _Buffer:
    times_ns: np.ndarray
    values: np.ndarray
    rate_hz: float | None
    last_ns: int = field(default=-(2**63))


class SubjectStream:
    """Cut one subject's channels into aligned windows and compute their features.

    Windows are ``[T - length, T)`` with ``T`` on multiples of ``step`` on the unix epoch,
    stamped at ``T``; the first is the first such ``T`` with ``T - length`` at or after the
    subject's first sample. A window is computed exactly once, in order, as soon as every
    expected channel (or, when ``expected_channels`` is None, every channel seen so far) has a
    sample at or after ``T`` (so nothing more can fall inside it), or once any channel's
    newest sample is more than ``lateness_s`` past ``T`` (lagging channels then count with
    what they have, i.e. low coverage). Windows below ``min_coverage`` are still emitted.

    A window with no sample of any channel is not computed: once it is certain that none can
    still arrive (every channel has moved past it, or a batch of any channel started after it;
    see Determinism), the scheduler jumps to the first window that holds a sample, so a gap of
    days, or a clock that jumps by years, costs the windows around its data and no more (their
    number is counted in :attr:`skipped_windows`). Work is bounded by the data, not by the time
    it spans: each sample falls in at most ``ceil(length / step)`` windows.

    Only what the open windows need is kept per channel (a ring buffer of about one window).

    Determinism: the windows and values do not depend on how the data is chunked, provided
    batches of different channels arrive in order of their first sample, each spans less than
    ``lateness_s``, and (with ``expected_channels`` None) every channel starts before the first
    window that could contain its data is due. Pass ``expected_channels`` for exact re-runs.

    Parameters
    ----------
    subject_id
        The subject; batches for another subject are refused.
    config
        Window parameters.
    expected_channels
        Channels to wait for (None: the channels seen so far).

    Example
    -------
    >>> SubjectStream("s1").flush()
    []
    """

    def __init__(
        self,
        subject_id: str,
        *,
        config: WindowConfig | None = None,
        expected_channels: frozenset[Channel] | None = None,
    ) -> None:
        self.subject_id = subject_id
        self.config = config or WindowConfig()
        self.expected_channels = expected_channels
        self._buffers: dict[Channel, _Buffer] = {}
        self._first_ns: int | None = None
        self._next_end_ns: int | None = None  # set once the first window is emitted or skipped
        # Newest first-sample time of any batch pushed: later batches start at or after it.
        self._frontier_ns: int | None = None
        self._skipped = 0
        # Beats and EDA components are detected once per stream, then read by every window.
        self._ppg = PPGTrack()
        self._eda = EDATrack()
        self._memo = HRVMemo()

    # -- public -------------------------------------------------------------------------------

    def push(self, batch: SampleBatch) -> list[FeatureWindow]:
        """Add a batch and return the windows it completes (possibly none).

        The same as :meth:`add` then :meth:`emit`.

        Raises
        ------
        ValueError
            The batch is for another subject, or it starts at or before the last sample
            already received on its channel (out-of-order or duplicate data; the ingest stage
            filters those before).
        """
        self.add(batch)
        return self._emit(final=False)

    def add(self, batch: SampleBatch) -> None:
        """Add a batch without computing windows yet (see :meth:`emit`).

        Lets a caller compute the windows a batch completes a few at a time, e.g. to share a
        thread between subjects or to stop between windows; the windows are the same as
        :meth:`push` returns, whenever they are taken.

        Raises
        ------
        ValueError
            As :meth:`push`.

        Example
        -------
        >>> from wearemo.samples import SampleBatch
        >>> s = SubjectStream("s1", config=WindowConfig(length_s=10, step_s=5))
        >>> s.add(SampleBatch(batch_id="b", subject_id="s1", device_id="d", channel="temp",
        ...                   start_ns=0, rate_hz=4.0, values=[33.0] * 80))
        >>> [w.end_ns // 10**9 for w in s.emit(limit=1)], len(s.emit())
        ([10], 1)
        """
        if batch.subject_id != self.subject_id:
            raise ValueError(
                f"batch {batch.batch_id!r} is for subject {batch.subject_id!r}, "
                f"this stream is {self.subject_id!r}"
            )
        ch = batch.channel
        times = batch.times_ns()
        values = batch.values_array()
        buf = self._buffers.get(ch)
        if buf is not None and int(times[0]) <= buf.last_ns:
            raise ValueError(
                f"channel {ch.value!r}: batch {batch.batch_id!r} starts at {int(times[0])} ns, "
                f"at or before the channel's last sample at {buf.last_ns} ns "
                "(out-of-order or duplicate data)"
            )
        if buf is None:
            buf = _Buffer(times[:0], values[:0], batch.rate_hz)
            self._buffers[ch] = buf
        if batch.rate_hz is not None:
            buf.rate_hz = batch.rate_hz
        buf.last_ns = int(times[-1])
        t_first = int(times[0])
        self._frontier_ns = t_first if self._frontier_ns is None else max(self._frontier_ns,
                                                                           t_first)
        if ch is Channel.PPG:
            self._ppg.push(times, values, rate_hz=batch.rate_hz)
        elif ch is Channel.EDA:
            self._eda.push(times, values, rate_hz=batch.rate_hz)
        if self._next_end_ns is None:
            # Until the first window is out, the subject's start may still move earlier (another
            # channel's first batch); keep everything until then.
            t0 = int(times[0])
            self._first_ns = t0 if self._first_ns is None else min(self._first_ns, t0)
        keep_from = self._next_end_ns and self._next_end_ns - self.config.length_ns
        if keep_from and times[0] < keep_from:
            i = int(np.searchsorted(times, keep_from, side="left"))
            times, values = times[i:], values[i:]
        if times.size:
            buf.times_ns = np.concatenate([buf.times_ns, times])
            buf.values = np.concatenate([buf.values, values])

    def emit(self, *, limit: int | None = None) -> list[FeatureWindow]:
        """The windows the data added so far completes, in order; at most ``limit`` of them
        (the rest come with the next call).

        Example
        -------
        >>> SubjectStream("s1").emit(limit=10)
        []
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        return self._emit(final=False, limit=limit)

    def flush(self) -> list[FeatureWindow]:
        """Emit every remaining window that ends at or before the newest sample received."""
        self._ppg.flush()
        self._eda.flush()
        return self._emit(final=True)

    @property
    def history_s(self) -> float:
        """Seconds of raw data before the newest sample that rebuild this stream's state.

        A restarted service re-pushes this much stored data: the open windows, the lateness,
        and the tracks' block latency and context.
        """
        cfg = self.config
        tracks = max(
            self._ppg.latency_s + (self._ppg.left_ns + self._ppg.context_ns) / 1e9,
            self._eda.latency_s + self._eda.left_ns / 1e9,
        )
        return cfg.length_s + cfg.lateness_s + cfg.step_s + tracks

    @property
    def skipped_windows(self) -> int:
        """Windows not computed because no sample of any channel falls in them (gaps)."""
        return self._skipped

    @property
    def next_window_end_ns(self) -> int | None:
        """End of the next window to be emitted (None before any data)."""
        if self._next_end_ns is not None:
            return self._next_end_ns
        if self._first_ns is None:
            return None
        return first_window_end(self._first_ns, self.config)

    # -- internals ----------------------------------------------------------------------------

    def _available_ns(self, ch: Channel) -> int:
        """How far the channel's data is usable: its tracker's commit point, else its newest
        sample (a window ``[., T)`` can be computed once this is at or after ``T``)."""
        buf = self._buffers[ch]
        track = self._ppg if ch is Channel.PPG else self._eda if ch is Channel.EDA else None
        if track is not None and track.through_ns is not None:
            return min(buf.last_ns, track.through_ns)
        return buf.last_ns

    def _ready(self, end_ns: int, newest_ns: int, final: bool) -> bool:
        required = self.expected_channels
        if required is None:
            required = frozenset(self._buffers)
        if all(c in self._buffers and self._available_ns(c) >= end_ns for c in required):
            return True
        if newest_ns - end_ns > self.config.lateness_ns:
            return True
        return final and end_ns <= max(b.last_ns for b in self._buffers.values())

    def _emit(self, *, final: bool, limit: int | None = None) -> list[FeatureWindow]:
        out: list[FeatureWindow] = []
        if not self._buffers:
            return out
        newest = max(self._available_ns(c) for c in self._buffers)
        length = self.config.length_ns
        while limit is None or len(out) < limit:
            end = self.next_window_end_ns
            if end is None:
                break
            start = end - length
            following = self._first_sample_from(start)
            if following is None or following >= end:
                # Nothing in this window so far: skip it, and every later window before the
                # next sample, once nothing can still arrive in them; else wait for data.
                empty_until = self._empty_until(following, final=final)
                if empty_until is None or empty_until < end:
                    break
                self._skip_through(empty_until)
                continue
            if not self._ready(end, newest, final):
                break
            slices: dict[Channel, ChannelSamples] = {}
            for ch, buf in self._buffers.items():
                i0, i1 = np.searchsorted(buf.times_ns, [start, end], side="left")
                slices[ch] = ChannelSamples(buf.times_ns[i0:i1], buf.values[i0:i1], buf.rate_hz)
            for ch in self.expected_channels or ():
                if ch not in slices:
                    slices[ch] = ChannelSamples(np.zeros(0, np.int64), np.zeros(0), None)
            out.append(window_features(
                self.subject_id, start, end, slices, config=self.config,
                beats=(self._ppg.window(start, end, sqi_min=self.config.ppg_sqi_min)
                       if Channel.PPG in slices else None),
                eda=self._eda.window(start, end) if Channel.EDA in slices else None,
                memo=self._memo,
            ))
            self._next_end_ns = end + self.config.step_ns
            self._trim()
        return out

    def _first_sample_from(self, t_ns: int) -> int | None:
        """The earliest buffered sample of any channel at or after ``t_ns``."""
        first: int | None = None
        for buf in self._buffers.values():
            i = int(np.searchsorted(buf.times_ns, t_ns, side="left"))
            if i < buf.times_ns.size:
                t = int(buf.times_ns[i])
                first = t if first is None else min(first, t)
        return first

    def _empty_until(self, following: int | None, *, final: bool) -> int | None:
        """A time before which no sample can arrive any more beyond the buffered ones.

        Given the next buffered sample ``following`` (None: none), every window ending at or
        before the returned time, and holding no buffered sample, stays empty for good: later
        batches of a channel start after its last sample, and (the Determinism precondition)
        after the newest batch start seen. On :meth:`flush` nothing more counts for the windows
        it closes, so the next buffered sample is the bound; None when there is none.
        """
        if final:
            return following
        assert self._frontier_ns is not None  # there are buffers, so a batch was pushed
        channels = set(self._buffers) | set(self.expected_channels or ())
        bound = min(
            max(self._frontier_ns, self._buffers[c].last_ns + 1) if c in self._buffers
            else self._frontier_ns
            for c in channels
        )
        return bound if following is None else min(following, bound)

    def _skip_through(self, empty_until: int) -> None:
        """Move the next window to the first aligned end after ``empty_until``."""
        end = self.next_window_end_ns
        assert end is not None
        step = self.config.step_ns
        nxt = (empty_until // step + 1) * step
        self._skipped += (nxt - end) // step
        self._next_end_ns = nxt
        self._trim()

    def _trim(self) -> None:
        assert self._next_end_ns is not None
        keep_from = self._next_end_ns - self.config.length_ns
        for buf in self._buffers.values():
            i = int(np.searchsorted(buf.times_ns, keep_from, side="left"))
            if i:
                buf.times_ns = buf.times_ns[i:]
                buf.values = buf.values[i:]
        self._ppg.trim(keep_from)
        self._eda.trim(keep_from)
