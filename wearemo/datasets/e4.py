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

import hashlib
import io
import math
import operator
import re
import zlib
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
    "FINGERPRINT_CHANNELS",
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

#: Channels whose content :meth:`Recording.fingerprint` digests (what state models read).
FINGERPRINT_CHANNELS = (Channel.EDA, Channel.PPG, Channel.RR)

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
    warnings
        What the loader noticed but could read past, one line each naming the file and row
        (e.g. a file cut mid-line whose last, partial row was dropped).
    """

    subject_id: str
    path: Path
    channels: dict[Channel, ChannelSamples]
    labels: list[LabelSegment] = field(default_factory=list)
    device_id: str = "e4"
    warnings: list[str] = field(default_factory=list)

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

    def fingerprint(self, *, block_s: int = 60) -> dict[str, list[str]]:
        """Digests of the recording's content: per channel, one per block of the unix clock.

        Each channel of :data:`FINGERPRINT_CHANNELS` is cut at multiples of ``block_s`` seconds
        of unix time, and every block that holds at least two different values is digested
        with its sample times (BLAKE2b, 48 bits, hex). Two recordings share a digest only when
        they hold the same samples at the same times over a whole block: a copy, a renamed
        folder, a gzipped copy or an excerpt of a recording shares digests with it, another
        recording never does, whatever the folders are called. (Constant blocks, such as a
        detached EDA sensor reading 0, are left out: two wearers could share one.) Data whose
        times were moved (re-based to 0, say) no longer matches.

        Example
        -------
        >>> rec = Recording("s1", Path("."), {Channel.EDA: ChannelSamples(
        ...     np.arange(480) * 250_000_000, np.arange(480.0), 4.0)})
        >>> {ch: len(d) for ch, d in rec.fingerprint().items()}
        {'eda': 2}
        """
        if not (isinstance(block_s, int) and block_s > 0):
            raise ValueError(f"block_s must be a positive whole number of seconds, got {block_s}")
        out: dict[str, list[str]] = {}
        for ch in FINGERPRINT_CHANNELS:
            data = self.channels.get(ch)
            if data is None or data.n_samples == 0:
                continue
            t = data.times_ns
            cuts = np.flatnonzero(np.diff(t // (block_s * 10**9))) + 1
            digests = []
            for i0, i1 in zip([0, *cuts.tolist()], [*cuts.tolist(), t.size], strict=True):
                values = data.values[i0:i1]
                if np.ptp(values, axis=0).max() == 0:
                    continue
                h = hashlib.blake2b(digest_size=6)
                h.update(t[i0:i1].astype("<i8").tobytes())
                h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
                digests.append(h.hexdigest())
            if digests:
                out[ch.value] = digests
        return out

    def iter_batches(
        self, *, chunk_s: float = 5.0, id_prefix: str | None = None
    ) -> Iterator[SampleBatch]:
        """Yield the recording as time-ordered ``SampleBatch``es interleaved across channels.

        Each channel is cut at multiples of ``chunk_s`` on the unix epoch; chunks are yielded in
        order of their first sample (ties in ``Channel`` order), as a live device would send them.
        Batch ids are ``<id_prefix>:<channel>:<first sample index>`` (prefix: the subject id),
        the same on every call.

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
            yield self._batch(ch, i0, i1, id_prefix or self.subject_id)

    def _batch(self, ch: Channel, i0: int, i1: int, prefix: str) -> SampleBatch:
        data = self.channels[ch]
        times = data.times_ns[i0:i1]
        values = data.values[i0:i1].tolist()
        common = {
            "batch_id": f"{prefix}:{ch.value}:{i0}",
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


def _read_text(path: Path, notes: list[str]) -> str:
    """The whole file as text; errors name the file.

    A gzip stream that ends early (a copy that stopped) yields the text it holds, with a note:
    its last line is then cut, which the table readers detect.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.name.endswith(".gz"):
        raw = _gunzip(path, raw, notes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file (byte {exc.start} is not UTF-8); expected "
                         "comma-separated numbers") from None


def _gunzip(path: Path, raw: bytes, notes: list[str]) -> bytes:
    out: list[bytes] = []
    while raw.strip(b"\x00"):  # concatenated gzip members are one valid file; zero padding ends it
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(raw))
        except zlib.error as exc:
            raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
        if not d.eof:
            if not any(out):
                raise ValueError(f"{path}: not a readable gzip file (no data before it ends)")
            notes.append(f"{path}: compressed data ends early (file cut short?); reading the "
                         f"{sum(map(len, out))} bytes it holds")
            break
        raw = d.unused_data
    return b"".join(out)


@dataclass(slots=True)
class _Lines:
    """A CSV file split into header rows, whole data lines and a last line without a line end."""

    head: list[list[str]]  # fields of the header rows
    body: str  # the data lines after the header, each ending in a line end
    body_row: int  # 1-based file row of the body's first line
    tail: str | None  # a last line with no line end (a file cut mid-line?), if any
    tail_row: int


def _lines(path: Path, text: str, skiprows: int) -> _Lines:
    # Blank lines at the very end are not rows (editors add them); anywhere else they are.
    stripped = text.rstrip(" \t\r\n")
    ended = "\n" in text[len(stripped):]
    head: list[list[str]] = []
    pos = 0
    while len(head) < skiprows and pos < len(stripped):
        nl = stripped.find("\n", pos)
        nl = len(stripped) if nl < 0 else nl
        head.append([x.strip() for x in stripped[pos:nl].strip().split(",")])
        pos = nl + 1
    rest = stripped[pos:] if pos < len(stripped) else ""
    if not rest:
        return _Lines(head, "", skiprows + 1, None, 0)
    if ended:
        return _Lines(head, rest + "\n", skiprows + 1, None, 0)
    cut = rest.rfind("\n") + 1
    body, tail = rest[:cut], rest[cut:]
    return _Lines(head, body, skiprows + 1, tail, skiprows + 1 + body.count("\n"))


class _RowError(ValueError):
    """One row that is not ``ncols`` finite numbers (``column`` 1-based, None: the whole row)."""

    def __init__(self, reason: str, column: int | None = None, line: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.column, self.line = reason, column, line

    def at(self, path: Path, row: int, ncols: int) -> str:
        col = f", column {self.column}" if self.column is not None and ncols > 1 else ""
        quoted = f": {self.line!r}" if self.line is not None else ""
        return f"{path} row {row}{col}: {self.reason}{quoted}"


def _parse_row(line: str, ncols: int) -> list[float]:
    fields = [f.strip().strip('"') for f in line.rstrip("\r").split(",")]
    if fields == [""]:
        raise _RowError("empty line")
    if len(fields) != ncols:
        raise _RowError(f"{len(fields)} fields, expected {ncols}", line=line.strip())
    out = []
    for c, token in enumerate(fields, start=1):
        if not token:
            raise _RowError("empty field", c)
        try:
            value = float(token)
        except ValueError:
            raise _RowError(f"{token!r} is not a number", c) from None
        if not math.isfinite(value):
            raise _RowError(f"{token!r} is not a finite number", c)
        out.append(value)
    return out


def _parse_rows(path: Path, body: str, first_row: int, ncols: int) -> np.ndarray:
    """``ncols`` finite numbers per line; the first bad line raises, quoting its token."""
    if not body:
        return np.empty((0, ncols))
    try:  # fast path: pandas' C parser; anything unusual is read again line by line below
        # round_trip: every number exactly as Python's float() reads it (the default parser
        # is 1 ulp off on some 17-digit numbers), so uploads and copies compare equal.
        df = pd.read_csv(io.StringIO(body), header=None, dtype=np.float64, engine="c",
                         skipinitialspace=True, skip_blank_lines=False, na_filter=False,
                         float_precision="round_trip")
        arr = df.to_numpy(dtype=np.float64)
        if arr.shape[1] == ncols and np.isfinite(arr).all():
            return arr
    except ValueError:  # pandas' ParserError and conversion errors are ValueErrors
        pass
    rows = []
    for k, line in enumerate(body.split("\n")[:-1]):
        try:
            rows.append(_parse_row(line, ncols))
        except _RowError as exc:
            raise ValueError(exc.at(path, first_row + k, ncols)) from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, ncols)


def _read_table(path: Path, lines: _Lines, ncols: int, notes: list[str]) -> np.ndarray:
    """The data rows as an ``(n, ncols)`` array; errors name the file, row and token.

    A last line without a line end is what a file cut mid-line looks like (recorders end every
    line): it is dropped with a note, even when it parses, since ``0.3`` may be the start of
    ``0.3125``; the whole rows before it are kept.
    """
    arr = _parse_rows(path, lines.body, lines.body_row, ncols)
    if lines.tail is None:
        return arr
    try:
        _parse_row(lines.tail, ncols)
        why = "it may hold a number cut short"
    except _RowError as exc:
        why = exc.reason if exc.column is None else f"column {exc.column}: {exc.reason}"
    notes.append(f"{path} row {lines.tail_row}: the last line has no line end (file cut "
                 f"mid-line?); dropped {lines.tail!r} ({why}), kept the {len(arr)} whole rows "
                 "before it")
    return arr


def _number(path: Path, row: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path} row {row}: {what} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path} row {row}: {what} is not finite: {text!r}")
    return value


def _start_ns(seconds: float) -> int:
    # Microsecond precision avoids float noise in 1e9 * unix-seconds.
    return round(seconds * 1e6) * 1000


def _read_regular(path: Path, ch: Channel, notes: list[str]) -> ChannelSamples:
    ncols = CHANNEL_AXES[ch]
    lines = _lines(path, _read_text(path, notes), 2)
    head = lines.head
    if len(head) < 2:
        raise ValueError(f"{path}: needs a start-time row and a sampling-rate row")
    start = _number(path, 1, head[0][0], "start time (unix s)")
    rate = _number(path, 2, head[1][0], "sampling rate (Hz)")
    if start < 0:
        raise ValueError(f"{path} row 1: start time must be >= 0, got {start}")
    if not 0 < rate <= 10_000:
        raise ValueError(f"{path} row 2: sampling rate must be in (0, 10000] Hz, got {rate}")
    arr = _read_table(path, lines, ncols, notes) * _SCALE.get(ch, 1.0)
    values = arr if ncols == 3 else arr[:, 0]
    offsets = np.round(np.arange(values.shape[0]) * (1e9 / rate)).astype(np.int64)
    return ChannelSamples(_start_ns(start) + offsets, np.ascontiguousarray(values), rate)


def _read_ibi(path: Path, notes: list[str]) -> ChannelSamples:
    lines = _lines(path, _read_text(path, notes), 1)
    if not lines.head:
        raise ValueError(f"{path}: empty file (needs a 'start, IBI' row)")
    start = _number(path, 1, lines.head[0][0], "start time (unix s)")
    arr = _read_table(path, lines, 2, notes)
    t_rel, ibi_s = arr[:, 0], arr[:, 1]
    bad = np.flatnonzero(ibi_s <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{path} row {i + 2}: interval must be > 0 s, got {ibi_s[i]}")
    times = _start_ns(start) + np.round(t_rel * 1e9).astype(np.int64)
    nonincr = np.flatnonzero(np.diff(times) <= 0)
    if nonincr.size:
        i = int(nonincr[0]) + 1
        raise ValueError(
            f"{path} row {i + 2}: beat time {t_rel[i]} s does not increase "
            f"(previous {t_rel[i - 1]} s)"
        )
    return ChannelSamples(times, ibi_s * _SCALE[Channel.RR], None)


def _read_labels(path: Path, notes: list[str]) -> list[LabelSegment]:
    text = _read_text(path, notes)
    stripped = text.rstrip(" \t\r\n")
    if not stripped:
        return []
    cut_last = "\n" not in text[len(stripped):] and "\n" in stripped
    try:
        # Every cell as written (no "NA" -> NaN), so messages quote the file's own tokens.
        df = pd.read_csv(io.StringIO(stripped + "\n"), engine="c", skipinitialspace=True,
                         dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return []
    except pd.errors.ParserError as exc:
        raise ValueError(f"{path}: malformed CSV ({' '.join(str(exc).split())})") from None
    need = ["start_unix", "end_unix", "label", "task"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {need}")
    # Optional: a valence rating per segment (empty where a segment was not rated).
    cols = need + (["valence"] if "valence" in df.columns else [])
    segs = []
    last = len(df) + 1
    for i, row in enumerate(df[cols].itertuples(index=False), start=2):
        try:
            segs.append(_label_row(path, i, row))
        except ValueError as exc:
            if not (cut_last and i == last):
                raise
            notes.append(f"{path} row {i}: the last line has no line end and is not a whole "
                         f"row ({str(exc).removeprefix(f'{path} row {i}: ')}); dropped it "
                         "(file cut mid-line?)")
    if cut_last and len(segs) == len(df):
        notes.append(f"{path} row {last}: the last line has no line end (file cut mid-line?); "
                     "it parses and is kept")
    return sorted(segs, key=lambda s: s.start_ns)


def _label_row(path: Path, i: int, row: tuple[object, ...]) -> LabelSegment:
    if any(not isinstance(x, str) for x in row[:3]):  # pandas fills a short row with NaN
        raise ValueError(f"{path} row {i}: fewer fields than the header")
    start = _number(path, i, str(row[0]), "start_unix")
    end = _number(path, i, str(row[1]), "end_unix")
    if end <= start:
        raise ValueError(f"{path} row {i}: end_unix {end} must be after start_unix")
    label, task = str(row[2]), row[3] if isinstance(row[3], str) else ""
    if not label:
        raise ValueError(f"{path} row {i}: empty label")
    valence = None
    if len(row) > 4 and isinstance(row[4], str) and row[4].strip():
        valence = _number(path, i, row[4], "valence")
    return LabelSegment(_start_ns(start), _start_ns(end), label, task, valence)


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
        No channel file, an invalid subject id, or a malformed file: one line naming the file,
        the row (and column) and quoting the offending token as written. What the loader can
        read past (a last line cut mid-line, a gzip stream that ends early) is kept in
        :attr:`Recording.warnings` instead, with the valid rows.

    Example
    -------
    >>> rec = load_recording("firmware_bridge/virtual_wearable/data/"
    ...                      "stress-predict-S02-excerpt", channels=["eda"])   # doctest: +SKIP
    >>> rec.channels[Channel.EDA].rate_hz                                      # doctest: +SKIP
    4.0
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    sid = folder.name if subject_id is None else subject_id
    if not re.match(ID_PATTERN, sid):
        raise ValueError(f"{folder}: subject_id {sid!r} is not a valid id (letters, digits, "
                         "'._:-'; pass another id or rename the folder)")
    wanted = set(Channel) if channels is None else {Channel(c) for c in channels}
    notes: list[str] = []
    data: dict[Channel, ChannelSamples] = {}
    for ch, stem in E4_FILES.items():
        if ch not in wanted:
            continue
        file = _find(folder, stem)
        if file is None:
            continue
        cd = _read_ibi(file, notes) if ch is Channel.RR else _read_regular(file, ch, notes)
        if cd.n_samples:
            data[ch] = cd
    if not data:
        raise ValueError(f"{folder}: no channel data (looked for {sorted(E4_FILES.values())})")
    labels_file = folder / "labels.csv"
    labels = _read_labels(labels_file, notes) if labels_file.is_file() else []
    return Recording(sid, folder, data, labels, warnings=notes)


def _has_channel_file(folder: Path) -> bool:
    return any(_find(folder, stem) is not None for stem in E4_FILES.values())


def find_recordings(root: str | Path) -> list[Path]:
    """Recording folders under ``root``: ``root`` itself if it holds channel files, else its
    immediate subfolders that do (sorted).

    Raises
    ------
    ValueError
        ``root`` is not a folder, or neither it nor any immediate subfolder holds a channel
        file (the message lists the file names looked for, and the subfolders one level down
        that hold recordings, if any).

    Example
    -------
    >>> find_recordings("../shared/data/stress-predict")[:1]                   # doctest: +SKIP
    [PosixPath('../shared/data/stress-predict/S02')]
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"{base}: {'not a folder' if base.exists() else 'no such folder'}")
    if _has_channel_file(base):
        return [base]
    subfolders = sorted(p for p in base.iterdir() if p.is_dir())
    found = [p for p in subfolders if _has_channel_file(p)]
    if found:
        return found
    files = ", ".join(f"{s}.csv" for s in sorted(E4_FILES.values()))
    # A dataset split by protocol (aerobic/S01, stress/S01, ...) is one level deeper: say so.
    deeper = [p.name for p in subfolders
              if any(q.is_dir() and _has_channel_file(q) for q in p.iterdir())]
    hint = (f"; its subfolders {deeper[:5]} hold recording folders: pass one of them"
            if deeper else "")
    raise ValueError(f"{base}: no recording folders (none of {files} or .csv.gz, in it or in "
                     f"its subfolders){hint}")
