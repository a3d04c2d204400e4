"""Loader for the project's recording format: a folder of Empatica-E4-style CSV files.

A recording folder holds any subset of ``BVP.csv`` (PPG), ``EDA.csv`` (µS), ``TEMP.csv`` (°C),
``ACC.csv`` (1/64 g), ``HR.csv`` (bpm) and ``IBI.csv`` (beat intervals), each optionally gzipped
(``.csv.gz``), at any sampling rates, plus an optional ``labels.csv``
(``start_unix,end_unix,label,task``).

E4 layout of the regularly sampled files: row 0 is the start time (unix seconds, UTC), row 1 the
sampling rate (Hz), then one sample per row; sample ``i`` is at ``start + i / rate``. ``ACC.csv``
has three columns in every row. ``IBI.csv`` starts with ``start, IBI`` and then holds
``t_rel_s, ibi_s`` rows: the interval closes at the beat at ``start + t_rel_s``.

Example
-------
>>> rec = load_recording("firmware_bridge/virtual_wearable/data/stress-predict-S02-excerpt",
...                      subject_id="S02")                                  # doctest: +SKIP
>>> sorted(c.value for c in rec.channels)                                  # doctest: +SKIP
['acc', 'eda', 'hr', 'ppg', 'rr', 'temp']
"""

from __future__ import annotations

import gzip
import math
import operator
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from wearemo.samples import (
    CHANNEL_AXES,
    ID_PATTERN,
    MAX_BATCH_SAMPLES,
    Channel,
    ChannelSamples,
    SampleBatch,
)

__all__ = [
    "E4_FILES",
    "LabelSegment",
    "Recording",
    "find_recordings",
    "load_recording",
    "segment_order_shuffle",
]

#: Channel -> file stem in a recording folder.
E4_FILES: dict[Channel, str] = {
    Channel.PPG: "BVP",
    Channel.EDA: "EDA",
    Channel.TEMP: "TEMP",
    Channel.ACC: "ACC",
    Channel.HR: "HR",
    Channel.RR: "IBI",
}

#: Multiplier from the file's unit to the channel's canonical unit.
_SCALE: dict[Channel, float] = {Channel.ACC: 1.0 / 64.0, Channel.RR: 1000.0}

# Channel order used to break ties when interleaving batches (deterministic order).
_ORDER = {c: i for i, c in enumerate(Channel)}



@dataclass(frozen=True, slots=True)
class LabelSegment:
    """A labelled span ``[start_ns, end_ns)`` of a recording (e.g. ``stress`` / ``stroop``).

    ``valence`` is the segment's valence rating (e.g. a 1-9 Self-Assessment Manikin) when
    ``labels.csv`` has a ``valence`` column, else ``None``.
    """

    start_ns: int
    end_ns: int
    label: str
    task: str
    valence: float | None = None


@dataclass(slots=True)
class Recording:
    """One subject's recording: whole channels plus label segments.

    Channels are kept as arrays (:class:`ChannelSamples`), not as one ``SampleBatch`` per channel,
    because a whole channel may exceed ``MAX_BATCH_SAMPLES``; :meth:`iter_batches` cuts them into
    time-ordered batches for the streaming path.

    Attributes
    ----------
    subject_id
        Pseudonymous id (the folder name unless given).
    path
        The recording folder.
    channels
        Channel -> :class:`ChannelSamples`, one entry per channel present.
    labels
        Label segments sorted by start (empty when there is no ``labels.csv``).
    device_id
        Device id put on generated batches.
    """

    subject_id: str
    path: Path
    channels: dict[Channel, ChannelSamples]
    labels: list[LabelSegment] = field(default_factory=list)
    device_id: str = "e4"

    @property
    def start_ns(self) -> int:
        """Earliest sample time over all channels (unix ns)."""
        return min(int(c.times_ns[0]) for c in self.channels.values())

    @property
    def end_ns(self) -> int:
        """Latest sample time over all channels (unix ns)."""
        return max(int(c.times_ns[-1]) for c in self.channels.values())

    def label_at(self, t_ns: int) -> LabelSegment | None:
        """The label segment containing ``t_ns`` (``start <= t < end``), or None.

        Example
        -------
        >>> rec = Recording("s1", Path("."), {}, [LabelSegment(0, 10, "stress", "stroop")])
        >>> rec.label_at(5).task, rec.label_at(10)
        ('stroop', None)
        """
        for seg in self.labels:
            if seg.start_ns <= t_ns < seg.end_ns:
                return seg
        return None

    def window_label(
        self, start_ns: int, end_ns: int, *, min_fraction: float = 0.5
    ) -> LabelSegment | None:
        """The segment covering most of ``[start_ns, end_ns)``, if it covers >= ``min_fraction``.

        Example
        -------
        >>> rec = Recording("s1", Path("."), {}, [LabelSegment(0, 10, "rest", "rest"),
        ...                                       LabelSegment(10, 20, "stress", "stroop")])
        >>> rec.window_label(4, 14).task, rec.window_label(0, 40)
        ('rest', None)
        """
        if end_ns <= start_ns:
            raise ValueError(f"window_label: end_ns {end_ns} must be after start_ns {start_ns}")
        best, best_overlap = None, 0
        for seg in self.labels:
            overlap = min(end_ns, seg.end_ns) - max(start_ns, seg.start_ns)
            if overlap > best_overlap:
                best, best_overlap = seg, overlap
        if best is None or best_overlap < min_fraction * (end_ns - start_ns):
            return None
        return best

    def between(self, start_ns: int, end_ns: int) -> Recording:
        """A copy holding only samples with ``start_ns <= t < end_ns`` (channels left empty drop).

        Example
        -------
        >>> rec = load_recording("firmware_bridge/virtual_wearable/data/"
        ...                      "stress-predict-S02-excerpt")                # doctest: +SKIP
        >>> short = rec.between(rec.start_ns, rec.start_ns + 120 * 10**9)   # doctest: +SKIP
        """
        channels: dict[Channel, ChannelSamples] = {}
        for ch, data in self.channels.items():
            i0, i1 = np.searchsorted(data.times_ns, [start_ns, end_ns], side="left")
            if i1 > i0:
                channels[ch] = ChannelSamples(
                    data.times_ns[i0:i1].copy(), data.values[i0:i1].copy(), data.rate_hz
                )
        return Recording(self.subject_id, self.path, channels, list(self.labels), self.device_id)

    def reordered(self, order: Sequence[int], *, gap_s: float = 30.0) -> Recording:
        """A copy with the label segments spliced in another order (the protocol-shortcut check).

        Each chosen segment's samples, in every channel, are moved as one block so that the
        segments follow each other in ``order`` with ``gap_s`` seconds without samples between
        them; the trackers split runs at such gaps, so no artificial EDA step or beat interval
        spans a splice. Samples keep their values and their spacing: regular channels keep
        ``rate_hz``, timestamped ones (rr) keep their timestamps, shifted. A model of physiology
        should score the same on the reordered copy; one that learned where it is in a fixed
        protocol does not.

        Cut points and shifts. A segment is cut at whole seconds from :attr:`start_ns`: its
        start label boundary is floored, its end boundary ceiled but never past the next
        segment's floored start (so consecutive segments share their cut and no sample is
        taken twice). The first segment in ``order`` starts at the earliest chosen segment's
        cut, each next one ``gap_s`` after the previous one ends, so every shift is a whole
        number of seconds: samples of a 64, 32, 4 or 1 Hz channel move by whole periods and
        stay on their channel's grid, exactly. (For rates with no whole number of periods in a
        second, e.g. 25.6 Hz, cuts, gap and shifts use the smallest whole number of seconds
        that is, 5 s there.) Samples outside the chosen segments' cuts are dropped.

        Labels move with their segments, clipped to the segment's cut, so up to one second at a
        label boundary that rounding gave to the neighbouring segment ends up unlabelled.

        Parameters
        ----------
        order
            Indices into :attr:`labels`, each at most once (all of them, or a subset).
        gap_s
            Seconds without samples between consecutive segments; a whole number >= 0
            (rounded up to the cut quantum when that is above 1 s).

        Returns
        -------
        Recording
            Same subject, path and device; channels with no sample left are dropped.

        Raises
        ------
        ValueError
            No label segments, an order that is not a permutation of (a subset of) the segment
            indices, a bad ``gap_s``, or a chosen segment that is empty after rounding.

        Example
        -------
        >>> rec = Recording("s1", Path("."), {Channel.EDA: ChannelSamples(
        ...     np.arange(12) * 500_000_000, np.arange(12.0), 2.0)},
        ...     [LabelSegment(0, 2 * 10**9, "non_stress", "rest"),
        ...      LabelSegment(2 * 10**9, 4 * 10**9, "stress", "stroop"),
        ...      LabelSegment(4 * 10**9, 6 * 10**9, "non_stress", "rest")])
        >>> new = rec.reordered([0, 2, 1], gap_s=1)
        >>> new.channels[Channel.EDA].values.tolist()
        [0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0, 4.0, 5.0, 6.0, 7.0]
        >>> [(s.start_ns // 10**9, s.task) for s in new.labels]
        [(0, 'rest'), (3, 'rest'), (6, 'stroop')]
        """
        n = len(self.labels)
        if n == 0:
            raise ValueError(f"{self.subject_id}: the recording has no label segments to reorder")
        try:
            idx = [operator.index(i) for i in order]
        except TypeError:
            raise ValueError(f"order must hold integer segment indices, got {list(order)!r}") \
                from None
        if not idx:
            raise ValueError("order is empty: name at least one segment index")
        outside = [i for i in idx if not 0 <= i < n]
        if outside:
            raise ValueError(f"order {idx}: indices {outside} are not in 0..{n - 1} "
                             f"({n} label segments)")
        if len(set(idx)) != len(idx):
            dup = sorted({i for i in idx if idx.count(i) > 1})
            raise ValueError(f"order {idx}: segment(s) {dup} appear more than once")
        if not (math.isfinite(gap_s) and gap_s >= 0 and float(gap_s).is_integer()):
            raise ValueError(f"gap_s must be a whole number of seconds >= 0, got {gap_s}")
        quantum_ns = _cut_quantum_s(self.channels) * 10**9
        gap_ns = -(-round(gap_s) * 10**9 // quantum_ns) * quantum_ns
        cuts = _segment_cuts(self.labels, self.start_ns, quantum_ns)
        for k in idx:
            if cuts[k][1] <= cuts[k][0]:
                seg = self.labels[k]
                raise ValueError(
                    f"segment {k} ({seg.task or seg.label}, {seg.start_ns}..{seg.end_ns} ns) is "
                    f"empty once cut at whole multiples of {quantum_ns // 10**9} s"
                )
        t = min(cuts[k][0] for k in idx)
        shifts: list[int] = []
        for k in idx:
            c0, c1 = cuts[k]
            shifts.append(t - c0)
            t += (c1 - c0) + gap_ns
        channels: dict[Channel, ChannelSamples] = {}
        for ch, data in self.channels.items():
            times, values = [], []
            for k, shift in zip(idx, shifts, strict=True):
                i0, i1 = np.searchsorted(data.times_ns, cuts[k], side="left")
                times.append(data.times_ns[i0:i1] + shift)
                values.append(data.values[i0:i1])
            if sum(x.size for x in times):
                channels[ch] = ChannelSamples(
                    np.concatenate(times), np.ascontiguousarray(np.concatenate(values)),
                    data.rate_hz,
                )
        labels = []
        for k, shift in zip(idx, shifts, strict=True):
            seg, (c0, c1) = self.labels[k], cuts[k]
            s, e = max(seg.start_ns, c0), min(seg.end_ns, c1)
            if e > s:
                labels.append(LabelSegment(s + shift, e + shift, seg.label, seg.task,
                                           seg.valence))
        labels.sort(key=lambda x: x.start_ns)
        return Recording(self.subject_id, self.path, channels, labels, self.device_id)

    def iter_batches(self, *, chunk_s: float = 5.0) -> Iterator[SampleBatch]:
        """Yield the recording as time-ordered ``SampleBatch``es interleaved across channels.

        Each channel is cut at multiples of ``chunk_s`` on the unix epoch; chunks are yielded in
        order of their first sample (ties in ``Channel`` order), as a live device would send them.

        Example
        -------
        >>> rec = load_recording("firmware_bridge/virtual_wearable/data/"
        ...                      "stress-predict-S02-excerpt")                # doctest: +SKIP
        >>> next(rec.iter_batches(chunk_s=5.0)).channel                      # doctest: +SKIP
        <Channel.PPG: 'ppg'>
        """
        if not (chunk_s > 0 and math.isfinite(chunk_s)):
            raise ValueError(f"chunk_s must be a positive number, got {chunk_s}")
        chunk_ns = round(chunk_s * 1e9)
        pieces: list[tuple[int, int, Channel, int, int]] = []
        for ch, data in self.channels.items():
            t = data.times_ns
            if t.size == 0:
                continue
            bins = t // chunk_ns
            cuts = np.flatnonzero(np.diff(bins)) + 1
            starts = np.concatenate([[0], cuts])
            ends = np.concatenate([cuts, [t.size]])
            for i0, i1 in zip(starts.tolist(), ends.tolist(), strict=True):
                for j0 in range(i0, i1, MAX_BATCH_SAMPLES):
                    pieces.append((int(t[j0]), _ORDER[ch], ch, j0, min(i1, j0 + MAX_BATCH_SAMPLES)))
        pieces.sort(key=lambda p: (p[0], p[1]))
        for _, _, ch, i0, i1 in pieces:
            yield self._batch(ch, i0, i1)

    def _batch(self, ch: Channel, i0: int, i1: int) -> SampleBatch:
        data = self.channels[ch]
        times = data.times_ns[i0:i1]
        values = data.values[i0:i1].tolist()
        common = {
            "batch_id": f"{self.subject_id}:{ch.value}:{i0}",
            "subject_id": self.subject_id,
            "device_id": self.device_id,
            "channel": ch,
            "start_ns": int(times[0]),
            "values": values,
        }
        if data.rate_hz is not None:
            # Rate-based batches recompute times from their own start; keep them only when that
            # reproduces the stored times exactly (it does for E4 rates), else send timestamps.
            offsets = np.round(np.arange(times.size) * (1e9 / data.rate_hz)).astype(np.int64)
            if np.array_equal(times[0] + offsets, times):
                return SampleBatch(rate_hz=data.rate_hz, **common)
        return SampleBatch(timestamps_ns=times.tolist(), **common)


def _cut_quantum_s(channels: dict[Channel, ChannelSamples]) -> int:
    """Smallest whole number of seconds holding a whole number of periods of every regular
    channel (1 for the E4's 64/32/4/1 Hz)."""
    q = 1
    for data in channels.values():
        if data.rate_hz is not None:
            den = Fraction(data.rate_hz).limit_denominator(1000).denominator
            q = q * den // math.gcd(q, den)
    return q


def _segment_cuts(
    labels: Sequence[LabelSegment], origin_ns: int, quantum_ns: int
) -> list[tuple[int, int]]:
    """Per label (in ``labels`` order): ``[c0, c1)`` cut on multiples of ``quantum_ns`` from
    ``origin_ns``; starts floored, ends ceiled but not past the next segment's cut start."""
    def floor(t: int) -> int:
        return origin_ns + (t - origin_ns) // quantum_ns * quantum_ns

    def ceil(t: int) -> int:
        return origin_ns - (origin_ns - t) // quantum_ns * quantum_ns

    by_start = sorted(range(len(labels)), key=lambda k: (labels[k].start_ns, k))
    cuts = [(0, 0)] * len(labels)
    for pos, k in enumerate(by_start):
        c0, c1 = floor(labels[k].start_ns), ceil(labels[k].end_ns)
        if pos + 1 < len(by_start):
            c1 = min(c1, floor(labels[by_start[pos + 1]].start_ns))
        cuts[k] = (c0, c1)
    return cuts


def segment_order_shuffle(
    labels: Sequence[LabelSegment],
    *,
    seed: int | np.random.Generator = 0,
    stress_label: str = "stress",
) -> list[int]:
    """A shuffled segment order for :meth:`Recording.reordered` that keeps the protocol's blocks.

    Segment 0 (the first rest, on which the personal baseline warms up) stays first, with any
    non-stress segments that follow it before the first stress segment. The rest is cut into
    task blocks, each a ``stress_label`` segment plus the segments that follow it up to the next
    one (its recovery rest), and the blocks are put in a random order that always differs from
    the original.

    Parameters
    ----------
    labels
        Label segments in time order (:attr:`Recording.labels`).
    seed
        Seed or generator of the permutation (the same seed gives the same order).
    stress_label
        Label that starts a task block.

    Returns
    -------
    list of int
        A permutation of ``range(len(labels))`` starting with 0, different from the identity.

    Raises
    ------
    ValueError
        Fewer than two task blocks after segment 0 (no other order exists).

    Example
    -------
    >>> tasks = ["rest", "stroop", "rest", "interview", "rest", "hyperventilation", "rest"]
    >>> labels = [LabelSegment(i, i + 1, "non_stress" if t == "rest" else "stress", t)
    ...           for i, t in enumerate(tasks)]
    >>> order = segment_order_shuffle(labels, seed=0)
    >>> order[0], sorted(order) == list(range(7)), order != list(range(7))
    (0, True, True)
    """
    blocks: list[list[int]] = [[0]] if labels else []
    for k in range(1, len(labels)):
        if labels[k].label == stress_label:
            blocks.append([k])
        else:
            blocks[-1].append(k)
    movable = blocks[1:]
    if len(movable) < 2:
        raise ValueError(
            f"need at least two task blocks after segment 0 to reorder, found {len(movable)} "
            f"(segments: {[s.task or s.label for s in labels]})"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    perm = list(range(len(movable)))
    while perm == sorted(perm):
        perm = [int(i) for i in rng.permutation(len(movable))]
    return [*blocks[0], *(k for i in perm for k in movable[i])]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def _read_table(path: Path, *, skiprows: int, ncols: int) -> np.ndarray:
    """Read ``ncols`` numeric columns after ``skiprows`` rows; errors name the file and row."""
    try:
        df = pd.read_csv(
            path, header=None, skiprows=skiprows, engine="c", skipinitialspace=True,
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError:
        return np.empty((0, ncols))
    except pd.errors.ParserError as exc:
        # pandas counts lines after the skipped header rows; say which file it is.
        raise ValueError(f"{path.name}: malformed CSV ({exc})") from None
    if df.shape[1] != ncols:
        raise ValueError(f"{path.name}: expected {ncols} column(s) per row, found {df.shape[1]}")
    numeric = df.apply(pd.to_numeric, errors="coerce")
    arr = numeric.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raw = ",".join("" if pd.isna(x) else str(x) for x in df.iloc[i].tolist())
        raise ValueError(
            f"{path.name} row {i + skiprows + 1}: not {ncols} finite number(s): {raw!r}"
        )
    return arr


def _header(path: Path, nrows: int) -> list[list[str]]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz"
          else path.open(encoding="utf-8")) as fh:
        rows = []
        for _ in range(nrows):
            line = fh.readline()
            if not line:
                break
            rows.append([x.strip() for x in line.strip().split(",")])
    return rows


def _number(path: Path, row: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path.name} row {row}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path.name} row {row}: {what} is not finite: {text!r}")
    return value


def _start_ns(seconds: float) -> int:
    # Microsecond precision avoids float noise in 1e9 * unix-seconds.
    return round(seconds * 1e6) * 1000


def _read_regular(path: Path, ch: Channel) -> ChannelSamples:
    ncols = CHANNEL_AXES[ch]
    head = _header(path, 2)
    if len(head) < 2:
        raise ValueError(f"{path.name}: needs a start-time row and a sampling-rate row")
    start = _number(path, 1, head[0][0], "start time (unix s)")
    rate = _number(path, 2, head[1][0], "sampling rate (Hz)")
    if start < 0:
        raise ValueError(f"{path.name} row 1: start time must be >= 0, got {start}")
    if not 0 < rate <= 10_000:
        raise ValueError(f"{path.name} row 2: sampling rate must be in (0, 10000] Hz, got {rate}")
    arr = _read_table(path, skiprows=2, ncols=ncols) * _SCALE.get(ch, 1.0)
    values = arr if ncols == 3 else arr[:, 0]
    offsets = np.round(np.arange(values.shape[0]) * (1e9 / rate)).astype(np.int64)
    return ChannelSamples(_start_ns(start) + offsets, np.ascontiguousarray(values), rate)


def _read_ibi(path: Path) -> ChannelSamples:
    head = _header(path, 1)
    if not head:
        raise ValueError(f"{path.name}: empty file (needs a 'start, IBI' row)")
    start = _number(path, 1, head[0][0], "start time (unix s)")
    arr = _read_table(path, skiprows=1, ncols=2)
    t_rel, ibi_s = arr[:, 0], arr[:, 1]
    bad = np.flatnonzero(ibi_s <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{path.name} row {i + 2}: interval must be > 0 s, got {ibi_s[i]}")
    times = _start_ns(start) + np.round(t_rel * 1e9).astype(np.int64)
    nonincr = np.flatnonzero(np.diff(times) <= 0)
    if nonincr.size:
        i = int(nonincr[0]) + 1
        raise ValueError(
            f"{path.name} row {i + 2}: beat time {t_rel[i]} s does not increase "
            f"(previous {t_rel[i - 1]} s)"
        )
    return ChannelSamples(times, ibi_s * _SCALE[Channel.RR], None)


def _read_labels(path: Path) -> list[LabelSegment]:
    try:
        df = pd.read_csv(path, engine="c", skipinitialspace=True, dtype=str)
    except pd.errors.EmptyDataError:
        return []
    except pd.errors.ParserError as exc:
        raise ValueError(f"{path.name}: malformed CSV ({exc})") from None
    need = ["start_unix", "end_unix", "label", "task"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path.name}: missing column(s) {missing}; expected {need}")
    # Optional: a valence rating per segment (empty where a segment was not rated).
    cols = need + (["valence"] if "valence" in df.columns else [])
    segs = []
    for i, row in enumerate(df[cols].itertuples(index=False), start=2):
        start = _number(path, i, str(row[0]), "start_unix")
        end = _number(path, i, str(row[1]), "end_unix")
        if end <= start:
            raise ValueError(f"{path.name} row {i}: end_unix {end} must be after start_unix")
        label, task = row[2], row[3]
        if not isinstance(label, str) or not label:
            raise ValueError(f"{path.name} row {i}: empty label")
        valence = None
        if len(row) > 4 and isinstance(row[4], str) and row[4].strip():
            valence = _number(path, i, row[4], "valence")
        segs.append(LabelSegment(_start_ns(start), _start_ns(end), label,
                                 task if isinstance(task, str) else "", valence))
    return sorted(segs, key=lambda s: s.start_ns)


def load_recording(
    path: str | Path,
    *,
    subject_id: str | None = None,
    channels: Collection[Channel | str] | None = None,
) -> Recording:
    """Load one recording folder.

    Parameters
    ----------
    path
        Folder with any subset of the channel files (``.csv`` or ``.csv.gz``).
    subject_id
        Pseudonymous id; defaults to the folder name.
    channels
        Load only these channels (default: every channel file present).

    Returns
    -------
    Recording
        Whole channels in canonical units (acc in g, rr in ms) and the label segments.

    Raises
    ------
    ValueError
        No channel file, an invalid subject id, or a malformed file (the message names the file
        and the row).

    Example
    -------
    >>> rec = load_recording("firmware_bridge/virtual_wearable/data/"
    ...                      "stress-predict-S02-excerpt", channels=["eda"])   # doctest: +SKIP
    >>> rec.channels[Channel.EDA].rate_hz                                      # doctest: +SKIP
    4.0
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    sid = folder.name if subject_id is None else subject_id
    if not re.match(ID_PATTERN, sid):
        raise ValueError(f"subject_id {sid!r} is not a valid id (letters, digits, '._:-')")
    wanted = set(Channel) if channels is None else {Channel(c) for c in channels}
    data: dict[Channel, ChannelSamples] = {}
    for ch, stem in E4_FILES.items():
        if ch not in wanted:
            continue
        file = _find(folder, stem)
        if file is None:
            continue
        cd = _read_ibi(file) if ch is Channel.RR else _read_regular(file, ch)
        if cd.n_samples:
            data[ch] = cd
    if not data:
        raise ValueError(f"{folder}: no channel data (looked for {sorted(E4_FILES.values())})")
    labels_file = folder / "labels.csv"
    labels = _read_labels(labels_file) if labels_file.is_file() else []
    return Recording(sid, folder, data, labels)


def _has_channel_file(folder: Path) -> bool:
    return any(_find(folder, stem) is not None for stem in E4_FILES.values())


def find_recordings(root: str | Path) -> list[Path]:
    """Recording folders under ``root``: ``root`` itself if it holds channel files, else its
    immediate subfolders that do (sorted).

    Example
    -------
    >>> find_recordings("../shared/data/stress-predict")[:1]                   # doctest: +SKIP
    [PosixPath('../shared/data/stress-predict/S02')]
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"{base}: not a folder")
    if _has_channel_file(base):
        return [base]
    return sorted(p for p in base.iterdir() if p.is_dir() and _has_channel_file(p))
