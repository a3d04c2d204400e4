"""The one cross-stage vocabulary: channels, units and :class:`SampleBatch`.

Every stage (the BLE bridge, the HTTP API, the streaming pipeline and the batch loaders) speaks
in ``SampleBatch``es: one channel of one subject's device, either regularly sampled
(``rate_hz``) or with explicit per-sample timestamps (``timestamps_ns``), always in the
channel's canonical unit.

Example
-------
>>> b = SampleBatch(batch_id="dev1:ppg:0", subject_id="s01", device_id="dev1",
...                 channel=Channel.PPG, start_ns=1_700_000_000_000_000_000,
...                 rate_hz=64.0, values=[0.1, 0.2, 0.3])
>>> b.n_samples, b.end_ns - b.start_ns
(3, 31250000)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Self

import msgpack
import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictFloat,
    StrictInt,
    StringConstraints,
    Tag,
    model_validator,
)

__all__ = [
    "CHANNEL_AXES",
    "CHANNEL_UNITS",
    "ID_PATTERN",
    "MAX_BATCH_SAMPLES",
    "Channel",
    "ChannelSamples",
    "SampleBatch",
    "batches_to_msgpack",
]


class Channel(StrEnum):
    """A physiological stream. Each carries its own sampling rate (or explicit timestamps)."""

    HR = "hr"  # heart rate, beats per minute (device-computed, e.g. BLE 0x2A37)
    RR = "rr"  # beat-to-beat (RR / inter-beat) intervals, ms, stamped at the closing beat
    PPG = "ppg"  # photoplethysmogram (blood volume pulse), arbitrary units
    EDA = "eda"  # electrodermal activity (skin conductance), microsiemens
    TEMP = "temp"  # skin temperature, degrees Celsius
    ACC = "acc"  # 3-axis acceleration, g


#: Canonical unit of each channel; a batch in any other unit is refused (convert at the edge).
CHANNEL_UNITS: dict[Channel, str] = {
    Channel.HR: "bpm",
    Channel.RR: "ms",
    Channel.PPG: "au",
    Channel.EDA: "uS",
    Channel.TEMP: "degC",
    Channel.ACC: "g",
}

#: Number of values per sample.
CHANNEL_AXES: dict[Channel, int] = {c: (3 if c is Channel.ACC else 1) for c in Channel}

#: Upper bound on samples in one batch (about 26 min of 64 Hz PPG); larger uploads must be split.
MAX_BATCH_SAMPLES = 100_000

#: Times are int64 unix ns (the stores' type): they end on 2262-04-11.
_NS_LIMIT = 2**63


def _numpy_int(v: Any) -> Any:
    # Python callers often hold times as NumPy integers: accepted, while JSON's true/"10"
    # stay refused by the strict int.
    return int(v) if isinstance(v, np.integer) else v

#: Identifiers are pseudonymous tokens, never names: letters, digits and ``._:-``.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"

Identifier = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _values_shape(v: Any) -> str:
    # Pick the union branch from the first element, so only that branch is validated: trying
    # ``list[float]`` on acc triples first builds one error per sample (~2 us each).
    if isinstance(v, list | tuple) and v and isinstance(v[0], list | tuple):
        return "list[list[float]]"
    return "list[float]"


#: One number per sample, or ``[x, y, z]`` per sample (acc). The tags are the branch names
#: pydantic gives an untagged union, so error locations read the same.
_LENGTH = Field(min_length=1, max_length=MAX_BATCH_SAMPLES)
Values = Annotated[
    Annotated[list[StrictFloat], _LENGTH, Tag("list[float]")]
    | Annotated[list[list[StrictFloat]], _LENGTH, Tag("list[list[float]]")],
    Discriminator(_values_shape),
]


class SampleBatch(BaseModel):
    """A run of samples of one channel from one device worn by one subject.

    Parameters
    ----------
    batch_id
        Idempotency key: a batch re-sent with the same id is stored once.
    subject_id, device_id
        Pseudonymous identifiers (letters, digits, ``._:-``; at most 128 characters).
    channel
        Which stream; ``values`` must be in ``CHANNEL_UNITS[channel]``.
    start_ns
        Time of the first sample, unix epoch nanoseconds (UTC).
    rate_hz
        Sampling rate for regularly sampled data: sample ``i`` is at ``start_ns + i / rate_hz``.
    timestamps_ns
        Explicit strictly increasing unix-ns times, one per value (mutually exclusive with
        ``rate_hz``); ``timestamps_ns[0]`` must equal ``start_ns``.
    values
        Finite numbers; for ``acc`` one ``[x, y, z]`` triple per sample.
    unit
        Must equal the channel's canonical unit (defaults to it).
    seq
        Optional device sequence number of the first frame in this batch (for gap reports).

    Example
    -------
    >>> SampleBatch(batch_id="b1", subject_id="s1", device_id="d1", channel="rr",
    ...             start_ns=10**18, timestamps_ns=[10**18, 10**18 + 8 * 10**8],
    ...             values=[812.0, 800.0]).rate_hz is None
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: Identifier
    subject_id: Identifier
    device_id: Identifier
    channel: Channel
    # Strict numbers: lax mode would take ``true`` as 1 and ``"1.5"`` as 1.5, silently storing
    # a client's encoding bug as data (ints still pass as floats).
    start_ns: Annotated[StrictInt, BeforeValidator(_numpy_int)] = Field(ge=0, lt=_NS_LIMIT)
    rate_hz: StrictFloat | None = Field(default=None, gt=0.0, le=10_000.0)
    timestamps_ns: list[Annotated[StrictInt, Field(ge=0, lt=_NS_LIMIT)]] | None = None
    values: Values
    unit: str | None = None
    seq: int | None = Field(default=None, ge=0)
    # values_array() made once per batch; never part of equality (see _Memo).
    _array: _Memo | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.rate_hz is None) == (self.timestamps_ns is None):
            raise ValueError("exactly one of rate_hz and timestamps_ns must be given")
        canonical = CHANNEL_UNITS[self.channel]
        name = self.channel.value
        if self.unit is not None and self.unit != canonical:
            raise ValueError(f"unit: channel {name!r} takes {canonical!r}, got {self.unit!r}")
        axes = CHANNEL_AXES[self.channel]
        nested = isinstance(self.values[0], list)
        if nested != (axes > 1):
            shape = "[x, y, z] triples" if axes > 1 else "one number"
            raise ValueError(f"values: channel {name!r} takes {shape} per sample")
        if axes > 1:
            for i, v in enumerate(self.values):
                if not isinstance(v, list) or len(v) != axes:
                    raise ValueError(f"values[{i}]: channel {name!r} takes {axes} numbers")
        arr = self.values_array().reshape(len(self.values), -1)
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if bad.size:
            raise ValueError(f"values[{bad[0]}]: not a finite number (NaN or infinity)")
        if self.rate_hz is not None:
            step_ns = 1e9 / self.rate_hz  # inf for a subnormal rate: times_ns() would be NaN
            if not self.start_ns + (len(self.values) - 1) * step_ns < _NS_LIMIT \
                    or step_ns == float("inf"):
                raise ValueError(f"rate_hz: {len(self.values)} samples at {self.rate_hz} Hz end "
                                 "past 2262-04-11 (int64 unix ns)")
        if self.timestamps_ns is not None:
            ts = np.asarray(self.timestamps_ns, dtype=np.int64)
            if len(ts) != len(self.values):
                raise ValueError(f"timestamps_ns: {len(ts)} timestamps, {len(self.values)} values")
            if ts[0] != self.start_ns:
                raise ValueError("timestamps_ns[0] must equal start_ns")
            steps = np.diff(ts)
            bad = np.flatnonzero(steps <= 0)
            if bad.size:
                i = int(bad[0]) + 1
                kind = "duplicate" if steps[i - 1] == 0 else "out-of-order"
                raise ValueError(f"timestamps_ns[{i}]: {kind} timestamp (must strictly increase)")
        if self.unit is None:
            object.__setattr__(self, "unit", canonical)
        return self

    @property
    def n_samples(self) -> int:
        """Number of samples (ACC triples count once)."""
        return len(self.values)

    def times_ns(self) -> np.ndarray:
        """Per-sample unix-ns timestamps as ``int64``.

        >>> SampleBatch(batch_id="b", subject_id="s", device_id="d", channel="eda",
        ...             start_ns=0, rate_hz=4.0, values=[1.0, 1.1]).times_ns().tolist()
        [0, 250000000]
        """
        if self.timestamps_ns is not None:
            return np.asarray(self.timestamps_ns, dtype=np.int64)
        assert self.rate_hz is not None
        offsets = np.round(np.arange(self.n_samples) * (1e9 / self.rate_hz)).astype(np.int64)
        return self.start_ns + offsets

    @property
    def end_ns(self) -> int:
        """Timestamp of the last sample (unix ns)."""
        return int(self.times_ns()[-1])

    def values_array(self) -> np.ndarray:
        """Values as read-only ``float64``: shape ``(n,)``, or ``(n, 3)`` for ``acc``.

        Converted once per batch (validation, storage and features all need it).
        """
        memo = self._array
        if memo is not None and memo.source is self.values:  # a model_copy may swap values
            return memo.array
        arr = np.asarray(self.values, dtype=np.float64)
        arr = arr.reshape(-1, 3) if CHANNEL_AXES[self.channel] == 3 else arr.reshape(-1)
        arr.flags.writeable = False
        self._array = _Memo(self.values, arr)
        return arr


class _Memo:
    """A derived value cached on a model, invisible to its equality.

    Pydantic compares private attributes in ``==``; a cache must not make two equal batches
    unequal (one converted, one not), nor compare arrays element-wise.
    """

    __slots__ = ("array", "source")

    def __init__(self, source: object, array: np.ndarray) -> None:
        self.source, self.array = source, array

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, _Memo)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class ChannelSamples:
    """A run of one channel's samples as arrays: what a recording, a window or a store holds.

    Attributes
    ----------
    times_ns
        Strictly increasing unix-ns sample times, ``int64``, shape ``(n,)``.
    values
        ``float64`` values in the channel's canonical unit: shape ``(n,)``, ``(n, 3)`` for acc.
    rate_hz
        Nominal sampling rate of a regular channel; None for event channels (rr) or unknown.

    Example
    -------
    >>> ChannelSamples(np.array([0, 250_000_000]), np.array([1.0, 1.1]), 4.0).n_samples
    2
    """

    times_ns: np.ndarray
    values: np.ndarray
    rate_hz: float | None = None

    @property
    def n_samples(self) -> int:
        """Number of samples."""
        return int(self.times_ns.shape[0])


def batches_to_msgpack(batches: Sequence[SampleBatch]) -> bytes:
    """The compact ``application/msgpack`` ingest body ``{"batches": [...]}`` of ``docs/ingest.md``.

    Values travel as a bin of little-endian ``float64`` (bit-exact: a batch re-sent keeps the
    same content, so the server recognises it as a duplicate) and timestamps as a bin of
    little-endian ``int64``; the other fields as in JSON.

    Example
    -------
    >>> b = SampleBatch(batch_id="d:eda:0", subject_id="s1", device_id="d", channel="eda",
    ...                 start_ns=10**18, rate_hz=4.0, values=[3.25, 3.5])
    >>> body = msgpack.unpackb(batches_to_msgpack([b]))
    >>> np.frombuffer(body["batches"][0]["values"], "<f8").tolist()
    [3.25, 3.5]
    """
    out = []
    for b in batches:
        d = b.model_dump(mode="json", exclude={"values", "timestamps_ns"}, exclude_none=True)
        d["values"] = np.ascontiguousarray(b.values_array(), dtype="<f8").tobytes()
        d["values_dtype"] = "float64"
        if b.timestamps_ns is not None:
            d["timestamps_ns"] = np.asarray(b.timestamps_ns, dtype="<i8").tobytes()
        out.append(d)
    return bytes(msgpack.packb({"batches": out}))
