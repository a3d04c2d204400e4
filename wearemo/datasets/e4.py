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
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
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
    """A labelled span ``[start_ns, end_ns)`` of a recording (e.g. ``stress`` / ``stroop``)."""

    start_ns: int
    end_ns: int
    label: str
    task: str


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
    segs = []
    for i, row in enumerate(df[need].itertuples(index=False), start=2):
        start = _number(path, i, str(row[0]), "start_unix")
        end = _number(path, i, str(row[1]), "end_unix")
        if end <= start:
            raise ValueError(f"{path.name} row {i}: end_unix {end} must be after start_unix")
        label, task = row[2], row[3]
        if not isinstance(label, str) or not label:
            raise ValueError(f"{path.name} row {i}: empty label")
        segs.append(LabelSegment(_start_ns(start), _start_ns(end), label,
                                 task if isinstance(task, str) else ""))
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
