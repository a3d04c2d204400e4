"""Decoded frames and heart-rate notifications of one device → :class:`SampleBatch`es.

One :class:`BatchAssembler` per connected device (subject and device ids from configuration).

* Regularly sampled channels (``ppg``, ``eda``, ``temp``, ``acc``) arrive as sensor frames with a
  per-channel sequence number, the device time of their first sample and a rate. Frames whose
  ``seq`` follows the previous one (same rate, device time where the previous run ends) are
  merged into one batch until it holds ``max_batch_s`` worth of samples; a batch's ``start_ns``
  is the first frame's device time mapped to UTC by the caller's clock. A ``seq`` gap closes the
  batch and is counted (``gaps``, ``missing_frames``); a frame already assembled (same ``seq``,
  device time and, within 1 s, UTC start) is a duplicate and dropped (counted); a ``seq``
  that goes back otherwise (device reboot) starts a new run (``restarts``).
* Heart Rate Measurement (0x2A37) notifications become ``hr`` samples (explicit timestamps, the
  notification's time) and ``rr`` samples: each RR interval is stamped at its closing beat, the
  newest beat at the notification's time, older beats earlier by the later intervals. Beat times
  are kept strictly increasing: when a notification's beats would overlap beats already stamped
  (arrival jitter), the new beats are chained on from the last stamped beat instead, so nothing
  is duplicated and no interval is lost. Gaps of the services that cannot re-send (HRS, PMD)
  are noted by the caller (:meth:`BatchAssembler.note_gap`), never filled in.
* Explicitly timed samples from elsewhere (RR intervals from Polar PMD PPI records) go in with
  :meth:`BatchAssembler.add_events`.

Batch ids are deterministic: ``{device}:{channel}:{first seq}:{start_ns}`` for frames and
``{device}:{channel}:t{first_timestamp_ns}`` for ``hr``/``rr``, so a re-sent batch has the same
id and the API stores it once.

Example
-------
>>> import numpy as np
>>> from firmware_bridge.gatt.wearemo_sensor import SensorFrame
>>> from wearemo.samples import Channel
>>> asm = BatchAssembler(subject_id="s01", device_id="vw-01", max_batch_s=1.0)
>>> f0 = SensorFrame(Channel.EDA, 0, 0, False, 4.0, np.array([1.0, 1.1]))
>>> f1 = SensorFrame(Channel.EDA, 1, 500_000, False, 4.0, np.array([1.2, 1.3]))
>>> asm.add_frame(f0, start_ns=10**18)
[]
>>> [b.values for b in asm.add_frame(f1, start_ns=10**18 + 500_000_000)]
[[1.0, 1.1, 1.2, 1.3]]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from firmware_bridge.gatt.heart_rate import HeartRateMeasurement
from firmware_bridge.gatt.wearemo_sensor import SensorFrame
from wearemo.samples import MAX_BATCH_SAMPLES, Channel, SampleBatch

__all__ = ["AssemblerStats", "BatchAssembler", "ChannelStats"]

#: Recent (seq -> device time) remembered per channel to recognise re-sent frames.
_SEEN_FRAMES = 4096
#: A frame with a remembered (seq, device time) whose UTC start is within this of the first
#: copy is a re-send; further away it is a rebooted device reusing seq and ticks.
_SAME_FRAME_NS = 1_000_000_000


@dataclass
class ChannelStats:
    """Counters for one channel of one device.

    Attributes
    ----------
    frames
        Frames (or notifications) accepted.
    samples
        Samples put into batches (``acc`` triples count once).
    batches
        Batches emitted.
    gaps
        Sequence gaps seen (each gap may span several frames).
    missing_frames
        Frames never received, summed over all gaps.
    duplicate_frames
        Frames dropped because their ``seq`` was already assembled.
    restarts
        Runs restarted because device time jumped (device reboot or clock change).
    retimed
        ``hr``/``rr`` samples whose time was moved to keep timestamps strictly increasing.
    gap_s
        Seconds without data in the gaps of channels that cannot resume (``hr``, PMD).
    """

    frames: int = 0
    samples: int = 0
    batches: int = 0
    gaps: int = 0
    missing_frames: int = 0
    duplicate_frames: int = 0
    restarts: int = 0
    retimed: int = 0
    gap_s: float = 0.0


@dataclass
class AssemblerStats:
    """Per-channel :class:`ChannelStats` of one device."""

    channels: dict[Channel, ChannelStats] = field(default_factory=dict)

    def of(self, channel: Channel) -> ChannelStats:
        """Stats of ``channel`` (created on first use)."""
        return self.channels.setdefault(Channel(channel), ChannelStats())

    @property
    def gaps(self) -> int:
        """Total sequence gaps over all channels."""
        return sum(s.gaps for s in self.channels.values())


@dataclass
class _Run:
    """Frames of one channel being merged into one batch."""

    seq: int
    device_time_us: int
    start_ns: int
    rate_hz: float
    values: list[np.ndarray]
    n: int
    host_time_ns: int

    def end_device_time_us(self) -> float:
        return self.device_time_us + self.n * 1e6 / self.rate_hz


@dataclass
class _Events:
    """Pending explicitly timed samples (``hr`` or ``rr``)."""

    times_ns: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    host_time_ns: int = 0


class BatchAssembler:
    """Turn one device's decoded frames and heart-rate notifications into sample batches.

    Parameters
    ----------
    subject_id, device_id
        Identifiers stamped on every batch (pseudonymous; ``wearemo.samples.ID_PATTERN``).
    max_batch_s
        Close a batch once it spans this many seconds of samples (> 0).
    max_lead_s
        ``hr``/``rr`` only: chained beat times may run at most this far ahead of the
        notification time before the chain is re-anchored at the notification (>= 0).

    Example
    -------
    >>> from firmware_bridge.gatt.heart_rate import HeartRateMeasurement
    >>> asm = BatchAssembler(subject_id="s01", device_id="d1", max_batch_s=5.0)
    >>> m = HeartRateMeasurement(60, "detected", None, (1024, 1024))
    >>> asm.add_heart_rate(m, time_ns=10 * 10**9)
    []
    >>> [(b.channel.value, b.timestamps_ns) for b in asm.flush()]
    [('hr', [10000000000]), ('rr', [9000000000, 10000000000])]
    """

    def __init__(
        self,
        *,
        subject_id: str,
        device_id: str,
        max_batch_s: float = 1.0,
        max_lead_s: float = 2.0,
    ) -> None:
        if not max_batch_s > 0:
            raise ValueError(f"max_batch_s must be > 0, got {max_batch_s}")
        if not max_lead_s >= 0:
            raise ValueError(f"max_lead_s must be >= 0, got {max_lead_s}")
        self.subject_id = subject_id
        self.device_id = device_id
        self.max_batch_s = float(max_batch_s)
        self.max_lead_ns = int(max_lead_s * 1e9)
        self.stats = AssemblerStats()
        self._runs: dict[Channel, _Run] = {}
        self._last_seq: dict[Channel, int] = {}
        self._seen: dict[Channel, dict[int, tuple[int, int]]] = {}
        self._events: dict[Channel, _Events] = {Channel.HR: _Events(), Channel.RR: _Events()}
        self._last_event_ns: dict[Channel, int] = {}
        # What closed batches hold: per frame channel the seq of their newest frame, per event
        # channel (hr/rr) the time of their newest sample. Persisted with the batches (the
        # spool's cursors), they say where a restarted bridge resumes.
        self._closed: dict[Channel, int] = {}
        self._floor_ns: dict[Channel, int] = {}

    def last_seq(self, channel: Channel) -> int | None:
        """Sequence number of the newest frame assembled for ``channel`` (None before any).

        Example
        -------
        >>> BatchAssembler(subject_id="s", device_id="d").last_seq(Channel.PPG) is None
        True
        """
        return self._last_seq.get(Channel(channel))

    def cursors(self) -> dict[Channel, int]:
        """Where the batches closed so far end: per frame channel the seq of the newest frame
        they hold, per ``hr``/``rr`` the time (unix ns) of their newest sample.

        Example
        -------
        >>> import numpy as np
        >>> asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=0.5)
        >>> f = SensorFrame(Channel.TEMP, 3, 0, False, 4.0, np.array([33.0, 33.1]))
        >>> _ = asm.add_frame(f, start_ns=0)
        >>> asm.cursors()
        {<Channel.TEMP: 'temp'>: 3}
        """
        return dict(self._closed)

    def restore(self, cursors: dict[Channel, int]) -> None:
        """Continue after batches a previous run (e.g. a killed process) already closed.

        Frame channels continue from the given seq (a resume asks the device for the next
        one); ``hr``/``rr`` samples at or before the given time are dropped as already stored.

        Example
        -------
        >>> asm = BatchAssembler(subject_id="s", device_id="d")
        >>> asm.restore({Channel.PPG: 41, Channel.HR: 10**9})
        >>> asm.last_seq(Channel.PPG), asm.cursors()[Channel.HR]
        (41, 1000000000)
        """
        for channel, value in cursors.items():
            channel = Channel(channel)
            self._closed[channel] = int(value)
            if channel in self._events:
                self._floor_ns[channel] = int(value)
                self._last_event_ns[channel] = int(value)
            else:
                self._last_seq[channel] = int(value)

    # -- regularly sampled channels ----------------------------------------------------------

    def is_duplicate(self, frame: SensorFrame, *, start_ns: int) -> bool:
        """Whether :meth:`add_frame` would drop ``frame`` as a re-sent copy of one it holds.

        Example
        -------
        >>> import numpy as np
        >>> asm = BatchAssembler(subject_id="s", device_id="d")
        >>> f = SensorFrame(Channel.TEMP, 3, 0, False, 4.0, np.array([33.0]))
        >>> _ = asm.add_frame(f, start_ns=0)
        >>> asm.is_duplicate(f, start_ns=0)
        True
        """
        previous = self._seen.get(frame.channel, {}).get(frame.seq)
        return (previous is not None and previous[0] == frame.device_time_us
                and abs(previous[1] - start_ns) <= _SAME_FRAME_NS)

    def add_frame(
        self, frame: SensorFrame, *, start_ns: int, host_time_ns: int = 0
    ) -> list[SampleBatch]:
        """Add one decoded sensor frame; return the batches it completes.

        Parameters
        ----------
        frame
            A decoded frame (``ppg``, ``eda``, ``temp`` or ``acc``).
        start_ns
            UTC unix ns of the frame's first sample (the device clock's mapping of
            ``frame.device_time_us``).
        host_time_ns
            Host receive time (only used by :meth:`flush_stale`).

        Returns
        -------
        list of SampleBatch
            Zero or more finished batches, oldest first.

        Example
        -------
        >>> import numpy as np
        >>> asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=0.5)
        >>> f = SensorFrame(Channel.TEMP, 3, 0, False, 4.0, np.array([33.0, 33.1]))
        >>> asm.add_frame(f, start_ns=0)[0].batch_id
        'd:temp:3:0'
        """
        channel = frame.channel
        stats = self.stats.of(channel)
        out: list[SampleBatch] = []
        last_seq = self._last_seq.get(channel)
        seen = self._seen.setdefault(channel, {})
        if self.is_duplicate(frame, start_ns=start_ns):
            stats.duplicate_frames += 1  # a re-sent frame already assembled
            return out
        run = self._runs.get(channel)
        if last_seq is not None and frame.seq > last_seq + 1:
            stats.gaps += 1
            stats.missing_frames += frame.seq - last_seq - 1
        elif last_seq is not None and frame.seq <= last_seq:
            stats.restarts += 1  # sequence restarted (device reboot): a new run, not a gap
            seen.clear()
        if run is not None and not self._continues(run, frame):
            out.append(self._close(channel))
            run = None
        values = frame.values
        if run is None:
            run = _Run(frame.seq, frame.device_time_us, int(start_ns), frame.rate_hz, [], 0,
                       host_time_ns)
            self._runs[channel] = run
        run.values.append(values)
        run.n += values.shape[0]
        stats.frames += 1
        self._last_seq[channel] = frame.seq
        seen[frame.seq] = (frame.device_time_us, int(start_ns))
        if len(seen) > _SEEN_FRAMES:
            del seen[next(iter(seen))]
        if run.n >= max(1.0, self.max_batch_s * run.rate_hz) or run.n >= MAX_BATCH_SAMPLES // 2:
            out.append(self._close(channel))
        return out

    def _continues(self, run: _Run, frame: SensorFrame) -> bool:
        if frame.seq != self._last_seq.get(frame.channel, -2) + 1 or frame.rate_hz != run.rate_hz:
            return False
        # The frame must start where the run ends (within half a sample period).
        return abs(frame.device_time_us - run.end_device_time_us()) <= 0.5e6 / run.rate_hz

    def _close(self, channel: Channel) -> SampleBatch:
        run = self._runs.pop(channel)
        values = np.concatenate(run.values, axis=0)
        self._closed[channel] = run.seq + len(run.values) - 1  # a run's frames are consecutive
        stats = self.stats.of(channel)
        stats.samples += run.n
        stats.batches += 1
        return SampleBatch(
            batch_id=f"{self.device_id}:{channel.value}:{run.seq}:{run.start_ns}",
            subject_id=self.subject_id,
            device_id=self.device_id,
            channel=channel,
            start_ns=run.start_ns,
            rate_hz=run.rate_hz,
            values=values.tolist(),
            seq=run.seq,
        )

    # -- heart rate service --------------------------------------------------------------------

    def add_heart_rate(
        self, measurement: HeartRateMeasurement, *, time_ns: int, host_time_ns: int = 0
    ) -> list[SampleBatch]:
        """Add one Heart Rate Measurement; return the ``hr``/``rr`` batches it completes.

        Parameters
        ----------
        measurement
            A decoded 0x2A37 value.
        time_ns
            UTC unix ns of the notification (the newest beat).
        host_time_ns
            Host receive time (only used by :meth:`flush_stale`).

        Example
        -------
        >>> from firmware_bridge.gatt.heart_rate import HeartRateMeasurement
        >>> asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=1.0)
        >>> asm.add_heart_rate(HeartRateMeasurement(60, "detected", None, (1024,)), time_ns=0)
        []
        >>> out = asm.add_heart_rate(HeartRateMeasurement(61, "detected", None, (1000,)),
        ...                          time_ns=10**9)
        >>> [(b.channel.value, b.values) for b in out]
        [('hr', [60.0, 61.0]), ('rr', [1000.0, 976.5625])]
        """
        out: list[SampleBatch] = []
        time_ns = int(time_ns)
        self._append_event(Channel.HR, [time_ns], [float(measurement.hr_bpm)], host_time_ns)
        self.stats.of(Channel.HR).frames += 1
        rr_ms = [r for r in measurement.rr_ms if r > 0]  # a zero interval is no beat
        if rr_ms:
            self.stats.of(Channel.RR).frames += 1
            self._append_event(Channel.RR, self._beat_times(rr_ms, time_ns), rr_ms, host_time_ns)
        for channel in (Channel.HR, Channel.RR):
            ev = self._events[channel]
            if ev.times_ns and ev.times_ns[-1] - ev.times_ns[0] >= self.max_batch_s * 1e9:
                out.append(self._close_events(channel))
        return out

    def add_events(
        self, channel: Channel, times_ns: list[int], values: list[float], *,
        host_time_ns: int = 0,
    ) -> list[SampleBatch]:
        """Add explicitly timed ``hr`` or ``rr`` samples (e.g. RR from Polar PPI records);
        return the batches they complete. Times are kept strictly increasing as in
        :meth:`add_heart_rate`.

        Example
        -------
        >>> asm = BatchAssembler(subject_id="s", device_id="d", max_batch_s=1.0)
        >>> [b.values for b in asm.add_events(Channel.RR, [0, 10**9], [990.0, 1000.0])]
        [[990.0, 1000.0]]
        """
        channel = Channel(channel)
        if channel not in self._events:
            raise ValueError(f"channel must be one of {[c.value for c in self._events]}")
        if not times_ns:
            return []
        self.stats.of(channel).frames += 1
        self._append_event(channel, [int(t) for t in times_ns], [float(v) for v in values],
                           host_time_ns)
        ev = self._events[channel]
        if ev.times_ns and ev.times_ns[-1] - ev.times_ns[0] >= self.max_batch_s * 1e9:
            return [self._close_events(channel)]
        return []

    def note_gap(self, channel: Channel, seconds: float) -> None:
        """Count a gap of ``seconds`` in a channel that cannot resume (HRS, Polar PMD).

        Example
        -------
        >>> asm = BatchAssembler(subject_id="s", device_id="d")
        >>> asm.note_gap(Channel.HR, 4.0); asm.stats.of(Channel.HR).gaps
        1
        """
        stats = self.stats.of(channel)
        stats.gaps += 1
        stats.gap_s += float(seconds)

    def _beat_times(self, rr_ms: list[float], time_ns: int) -> list[int]:
        rr_ns = np.round(np.asarray(rr_ms) * 1e6).astype(np.int64)
        # Anchored: newest beat at the notification time, older ones earlier.
        anchored = time_ns - np.concatenate([np.cumsum(rr_ns[::-1])[::-1][1:], [0]])
        last = self._last_event_ns.get(Channel.RR)
        if last is None or anchored[0] > last:
            return [int(t) for t in anchored]
        chained = last + np.cumsum(rr_ns)
        if chained[-1] - time_ns > self.max_lead_ns:
            # The chain ran ahead of the device clock: keep the beats that fit after the last
            # stamped one at their anchored times, push the others just past it.
            self.stats.of(Channel.RR).retimed += len(rr_ns)
            times = np.maximum(anchored, last + 1 + np.arange(len(rr_ns)))
            return [int(t) for t in times]
        self.stats.of(Channel.RR).retimed += len(rr_ns)
        return [int(t) for t in chained]

    def _append_event(
        self, channel: Channel, times_ns: list[int], values: list[float], host_time_ns: int
    ) -> None:
        ev = self._events[channel]
        last = self._last_event_ns.get(channel)
        floor = self._floor_ns.get(channel)
        fixed: list[int] = []
        kept: list[float] = []
        for t, v in zip(times_ns, values, strict=True):
            if floor is not None and t <= floor:
                self.stats.of(channel).duplicate_frames += 1  # stored by an earlier run
                continue
            kept.append(v)
            if last is not None and t <= last:
                t = last + 1  # keep strictly increasing (clock re-sync moved time back)
                self.stats.of(channel).retimed += 1
            fixed.append(t)
            last = t
        if not fixed:
            return
        if not ev.times_ns:
            ev.host_time_ns = host_time_ns
        ev.times_ns.extend(fixed)
        ev.values.extend(kept)
        self._last_event_ns[channel] = fixed[-1]

    def _close_events(self, channel: Channel) -> SampleBatch:
        ev = self._events[channel]
        self._events[channel] = _Events()
        self._closed[channel] = ev.times_ns[-1]
        stats = self.stats.of(channel)
        stats.samples += len(ev.values)
        stats.batches += 1
        return SampleBatch(
            batch_id=f"{self.device_id}:{channel.value}:t{ev.times_ns[0]}",
            subject_id=self.subject_id,
            device_id=self.device_id,
            channel=channel,
            start_ns=ev.times_ns[0],
            timestamps_ns=ev.times_ns,
            values=ev.values,
        )

    # -- flushing ------------------------------------------------------------------------------

    def flush(self) -> list[SampleBatch]:
        """Close every pending batch (end of stream, disconnect).

        Example
        -------
        >>> BatchAssembler(subject_id="s", device_id="d").flush()
        []
        """
        out = [self._close(ch) for ch in list(self._runs)]
        out += [self._close_events(ch) for ch, ev in self._events.items() if ev.times_ns]
        return out

    def flush_stale(self, *, host_time_ns: int, max_age_s: float) -> list[SampleBatch]:
        """Close pending batches whose first part arrived more than ``max_age_s`` ago.

        Keeps latency bounded when a stream slows down or stops.

        Example
        -------
        >>> BatchAssembler(subject_id="s", device_id="d").flush_stale(host_time_ns=0,
        ...                                                          max_age_s=1.0)
        []
        """
        limit = host_time_ns - int(max_age_s * 1e9)
        out = [self._close(ch) for ch, run in list(self._runs.items()) if run.host_time_ns <= limit]
        out += [
            self._close_events(ch)
            for ch, ev in list(self._events.items())
            if ev.times_ns and ev.host_time_ns <= limit
        ]
        return out
