"""Tabular exports of a store's states, feature windows and raw samples (CSV or Parquet).

Records are read from any :class:`~wearemo.store.base.StateStore` one page at a time and turned
into :class:`pyarrow.RecordBatch`es with a fixed schema per kind, so an export of months of data
streams in bounded memory: one page of records, one row group of output. The API's export
endpoint and ``wearemo export`` (cohort files for trial teams) share this module.

Columns (times are unix ns, ``int64``; each ``*_ns`` column also has a UTC timestamp twin
without the suffix, e.g. ``window_end``):

``states``
    ``subject_id, window_start_ns, window_end_ns, window_start, window_end, state, p_stress``
    (probability 0..1, null when withheld) ``, reason, model_version, variant, channels_used``
    (comma-separated) ``, arousal`` (0..1) ``, affect, valence`` (probability of high valence)
    ``, explanation`` (JSON list of the top inputs).
``features``
    ``subject_id, window_start_ns, window_end_ns, window_start, window_end, motion,
    beat_source, n_beats``, then one ``float64`` column per feature of
    :data:`~wearemo.features.FEATURE_UNITS` in the unit its name carries (null when not
    computed), then ``coverage_<channel>`` (0..1) and ``samples_<channel>`` (count) for every
    channel.
``samples``
    ``subject_id, channel, time_ns, time, value`` (in the channel's unit of
    :data:`~wearemo.samples.CHANNEL_UNITS`; null for ``acc``) ``, x, y, z`` (``acc`` in g; null
    for the other channels). Rows are ordered by channel (in :class:`~wearemo.samples.Channel`
    order), then time.

Example
-------
>>> from wearemo.store import SQLiteStore
>>> store = SQLiteStore(":memory:")
>>> store.add_batch(SampleBatch(batch_id="b", subject_id="s1", device_id="d", channel="eda",
...                             start_ns=0, rate_hz=4.0, values=[1.0, 1.5]))
True
>>> [b.num_rows for b in export_record_batches(store, "s1", "samples")]
[2]
>>> b"".join(export_stream(store, ["s1"], "samples", "csv")).decode().splitlines()[1]
'"s1","eda",0,1970-01-01 00:00:00.000000000Z,1,,,'
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from wearemo.features import FEATURE_UNITS, FeatureWindow
from wearemo.model.state import StateEstimate
from wearemo.samples import CHANNEL_AXES, Channel, SampleBatch
from wearemo.store.base import StateStore

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_KINDS",
    "ExportFormat",
    "ExportKind",
    "export_record_batches",
    "export_schema",
    "export_stream",
    "iter_batches",
    "iter_states",
    "iter_windows",
]

ExportKind = Literal["states", "features", "samples"]
ExportFormat = Literal["csv", "parquet"]
EXPORT_KINDS: tuple[str, ...] = get_args(ExportKind)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)

#: Media type of each format (what the API answers with).
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}

_TS = pa.timestamp("ns", tz="UTC")
_PAGE = 2000  # states / windows per page: a few MB of Python objects at most
_BATCH_PAGE = 200  # sample batches per page (each at most MAX_BATCH_SAMPLES samples)


def _window_fields() -> list[pa.Field]:
    return [
        pa.field("subject_id", pa.string()),
        pa.field("window_start_ns", pa.int64()),
        pa.field("window_end_ns", pa.int64()),
        pa.field("window_start", _TS),
        pa.field("window_end", _TS),
    ]


_SCHEMAS: dict[str, pa.Schema] = {
    "states": pa.schema(
        [
            *_window_fields(),
            pa.field("state", pa.string()),
            pa.field("p_stress", pa.float64()),
            pa.field("reason", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("variant", pa.string()),
            pa.field("channels_used", pa.string()),
            pa.field("arousal", pa.float64()),
            pa.field("affect", pa.string()),
            pa.field("valence", pa.float64()),
            pa.field("explanation", pa.string()),
        ]
    ),
    "features": pa.schema(
        [
            *_window_fields(),
            pa.field("motion", pa.bool_()),
            pa.field("beat_source", pa.string()),
            pa.field("n_beats", pa.int64()),
            *(pa.field(name, pa.float64()) for name in FEATURE_UNITS),
            *(pa.field(f"coverage_{c.value}", pa.float64()) for c in Channel),
            *(pa.field(f"samples_{c.value}", pa.int64()) for c in Channel),
        ]
    ),
    "samples": pa.schema(
        [
            pa.field("subject_id", pa.string()),
            pa.field("channel", pa.string()),
            pa.field("time_ns", pa.int64()),
            pa.field("time", _TS),
            pa.field("value", pa.float64()),
            pa.field("x", pa.float64()),
            pa.field("y", pa.float64()),
            pa.field("z", pa.float64()),
        ]
    ),
}


def export_schema(kind: ExportKind) -> pa.Schema:
    """The Arrow schema of an export kind (the columns of the module docstring).

    Example
    -------
    >>> export_schema("samples").names[:4]
    ['subject_id', 'channel', 'time_ns', 'time']
    """
    if kind not in _SCHEMAS:
        raise ValueError(f"unknown export kind {kind!r}; options: {', '.join(EXPORT_KINDS)}")
    return _SCHEMAS[kind]


def iter_states(
    store: StateStore,
    subject_id: str,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    page: int = _PAGE,
) -> Iterator[list[StateEstimate]]:
    """Pages of a subject's states with window end in ``[start_ns, end_ns)``, oldest first.

    Example
    -------
    >>> from wearemo.store import SQLiteStore
    >>> list(iter_states(SQLiteStore(":memory:"), "s1"))
    []
    """
    while True:
        rows = store.states(subject_id, start_ns=start_ns, end_ns=end_ns, limit=page)
        if rows:
            yield rows
        if len(rows) < page:
            return
        start_ns = rows[-1].window_end_ns + 1


def iter_windows(
    store: StateStore,
    subject_id: str,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    page: int = _PAGE,
) -> Iterator[list[FeatureWindow]]:
    """Pages of a subject's feature windows with end in ``[start_ns, end_ns)``, oldest first.

    Example
    -------
    >>> from wearemo.store import SQLiteStore
    >>> list(iter_windows(SQLiteStore(":memory:"), "s1"))
    []
    """
    while True:
        rows = store.windows(subject_id, start_ns=start_ns, end_ns=end_ns, limit=page)
        if rows:
            yield rows
        if len(rows) < page:
            return
        start_ns = rows[-1].end_ns + 1


def iter_batches(
    store: StateStore,
    subject_id: str,
    channel: Channel,
    start_ns: int | None,
    end_ns: int | None,
    page: int = _BATCH_PAGE,
) -> Iterator[SampleBatch]:
    """A subject's stored batches of one channel with samples in ``[start_ns, end_ns)``, in order.

    Example
    -------
    >>> from wearemo.store import SQLiteStore
    >>> list(iter_batches(SQLiteStore(":memory:"), "s1", Channel.EDA, None, None))
    []
    """
    # Batches of one channel never overlap (ingest refuses that), so the page after one ending
    # at t starts with the first batch whose last sample is after t.
    while True:
        rows = store.batches(
            subject_id, channel=channel, start_ns=start_ns, end_ns=end_ns, limit=page
        )
        yield from rows
        if len(rows) < page:
            return
        start_ns = int(rows[-1].times_ns()[-1]) + 1


def _null_nan(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _window_columns(subject_id: str, starts: list[int], ends: list[int]) -> list[pa.Array]:
    s = pa.array(starts, pa.int64())
    e = pa.array(ends, pa.int64())
    return [pa.array([subject_id] * len(starts), pa.string()), s, e, s.cast(_TS), e.cast(_TS)]


def _states_batch(subject_id: str, states: Sequence[StateEstimate]) -> pa.RecordBatch:
    cols = _window_columns(
        subject_id, [s.window_start_ns for s in states], [s.window_end_ns for s in states]
    )
    cols += [
        pa.array([s.state for s in states], pa.string()),
        pa.array([s.p_stress for s in states], pa.float64()),
        pa.array([s.reason for s in states], pa.string()),
        pa.array([s.model_version for s in states], pa.string()),
        pa.array([s.variant for s in states], pa.string()),
        pa.array([",".join(s.channels_used) for s in states], pa.string()),
        pa.array([s.arousal for s in states], pa.float64()),
        pa.array([s.affect for s in states], pa.string()),
        pa.array([s.valence for s in states], pa.float64()),
        pa.array(
            [json.dumps([c.model_dump() for c in s.explanation]) for s in states], pa.string()
        ),
    ]
    return pa.RecordBatch.from_arrays(cols, schema=_SCHEMAS["states"])


def _features_batch(subject_id: str, windows: Sequence[FeatureWindow]) -> pa.RecordBatch:
    cols = _window_columns(subject_id, [w.start_ns for w in windows], [w.end_ns for w in windows])
    cols += [
        pa.array([w.motion for w in windows], pa.bool_()),
        pa.array([w.beat_source for w in windows], pa.string()),
        pa.array([w.n_beats for w in windows], pa.int64()),
    ]
    cols += [
        pa.array([_null_nan(w.features.get(name)) for w in windows], pa.float64())
        for name in FEATURE_UNITS
    ]
    cols += [
        pa.array([w.coverage.get(c.value) for w in windows], pa.float64()) for c in Channel
    ]
    cols += [
        pa.array([w.sample_counts.get(c.value) for w in windows], pa.int64()) for c in Channel
    ]
    return pa.RecordBatch.from_arrays(cols, schema=_SCHEMAS["features"])


def _samples_batch(
    subject_id: str, batch: SampleBatch, start_ns: int | None, end_ns: int | None
) -> pa.RecordBatch:
    times = batch.times_ns()
    values = batch.values_array()
    keep = slice(None)
    if start_ns is not None or end_ns is not None:
        lo = 0 if start_ns is None else int(times.searchsorted(start_ns, "left"))
        hi = len(times) if end_ns is None else int(times.searchsorted(end_ns, "left"))
        keep = slice(lo, hi)
    times, values = times[keep], values[keep]
    n = len(times)
    t = pa.array(times, pa.int64())
    none = pa.nulls(n, pa.float64())
    if CHANNEL_AXES[batch.channel] == 3:
        x, y, z = (pa.array(values[:, k], pa.float64()) for k in range(3))
        value = none
    else:
        value, x, y, z = pa.array(values, pa.float64()), none, none, none
    cols = [
        pa.array([subject_id] * n, pa.string()),
        pa.array([batch.channel.value] * n, pa.string()),
        t,
        t.cast(_TS),
        value,
        x,
        y,
        z,
    ]
    return pa.RecordBatch.from_arrays(cols, schema=_SCHEMAS["samples"])


def export_record_batches(
    store: StateStore,
    subject_id: str,
    kind: ExportKind,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    channel: Channel | None = None,
) -> Iterator[pa.RecordBatch]:
    """One subject's records of ``kind`` over ``[start_ns, end_ns)`` as Arrow record batches.

    States and windows are selected on their window end; samples on their own time.
    ``channel`` restricts a ``samples`` export to one channel (all channels when ``None``).
    Empty pages are never yielded.

    Parameters
    ----------
    store
        Any :class:`~wearemo.store.base.StateStore`.
    subject_id
        The subject.
    kind
        ``"states"``, ``"features"`` or ``"samples"``.
    start_ns, end_ns
        Half-open time range, unix ns; open-ended when ``None``.
    channel
        Only this channel (``samples`` only).

    Example
    -------
    >>> from wearemo.store import SQLiteStore
    >>> list(export_record_batches(SQLiteStore(":memory:"), "s1", "states"))
    []
    """
    export_schema(kind)  # unknown kinds fail here, before any read
    if kind == "states":
        for states in iter_states(store, subject_id, start_ns=start_ns, end_ns=end_ns):
            yield _states_batch(subject_id, states)
    elif kind == "features":
        for windows in iter_windows(store, subject_id, start_ns=start_ns, end_ns=end_ns):
            yield _features_batch(subject_id, windows)
    else:
        for ch in [Channel(channel)] if channel is not None else list(Channel):
            for batch in iter_batches(store, subject_id, ch, start_ns, end_ns, _BATCH_PAGE):
                rb = _samples_batch(subject_id, batch, start_ns, end_ns)
                if rb.num_rows:
                    yield rb


class _Drain(io.RawIOBase):
    """A write-only file that hands out what was written since the last :meth:`take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._parts.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def export_stream(
    store: StateStore,
    subject_ids: Iterable[str],
    kind: ExportKind,
    fmt: ExportFormat,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    channel: Channel | None = None,
) -> Iterator[bytes]:
    """A CSV or Parquet file of ``kind`` over subjects, as chunks of bytes, built page by page.

    CSV has a header row, UTC timestamps in ISO-8601 and empty fields for nulls; Parquet has
    one row group per page (at most a few thousand rows or one stored batch of samples). Both
    are complete and valid files even when no record matches (header only / no row groups).

    Example
    -------
    >>> from wearemo.store import SQLiteStore
    >>> b"".join(export_stream(SQLiteStore(":memory:"), [], "states", "csv"))[:30]
    b'"subject_id","window_start_ns"'
    """
    schema = export_schema(kind)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; options: {', '.join(EXPORT_FORMATS)}")
    sink = _Drain()
    writer: pa_csv.CSVWriter | pq.ParquetWriter
    if fmt == "csv":
        writer = pa_csv.CSVWriter(sink, schema)
    else:
        writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        for subject_id in subject_ids:
            for batch in export_record_batches(
                store, subject_id, kind, start_ns=start_ns, end_ns=end_ns, channel=channel
            ):
                writer.write_batch(batch)
                chunk = sink.take()
                if chunk:
                    yield chunk
    finally:
        writer.close()
    yield sink.take()
