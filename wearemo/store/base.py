"""The :class:`StateStore` protocol every storage backend implements.

A store keeps three kinds of record per subject: raw sample batches (with their batch ids, so
idempotency survives restarts), feature windows and state estimates; plus, per subject, the
latest personal-baseline calibration period (:class:`Calibration`). Times are unix
nanoseconds; windows and states are stamped at the window end and queried on it over the
half-open range ``[start_ns, end_ns)``.

Example
-------
>>> from wearemo.store import SQLiteStore
>>> store = SQLiteStore(":memory:")
>>> isinstance(store, StateStore), store.ping()
(True, True)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from wearemo.features.window import FeatureWindow
from wearemo.model.state import StateEstimate
from wearemo.samples import Channel, ChannelSamples, SampleBatch

__all__ = [
    "ERASE_KINDS",
    "BatchConflictError",
    "Calibration",
    "ProcessingCursor",
    "QueuedBatch",
    "StateStore",
    "StoreBackpressureError",
    "StoreUnavailableError",
    "SubjectSummary",
    "batch_digest",
    "digest_arrays",
    "window_from_json",
    "window_to_json",
]


class BatchConflictError(ValueError):
    """A batch id was re-sent with different content (a client bug, never silently merged)."""


class StoreUnavailableError(RuntimeError):
    """The backend cannot take or answer this call now; retrying after ``retry_after_s`` may work.

    The API answers it with HTTP 503 and a ``Retry-After`` header. Nothing of the call was
    stored (a write either lands in full or not at all).

    Example
    -------
    >>> StoreUnavailableError("influx down", retry_after_s=5).retry_after_s
    5
    """

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreBackpressureError(StoreUnavailableError):
    """The store's bounded write buffer is full: the write was refused, not dropped."""


#: Kinds of record counted by :meth:`StateStore.erase_subject` and :meth:`StateStore.delete_before`.
ERASE_KINDS = ("samples", "batches", "windows", "states", "calibrations")


class Calibration(BaseModel):
    """A labelled calibration period that sets a subject's personal baseline.

    The baseline is the median (and robust spread) of the stored feature windows whose end
    lies in ``[start_ns, end_ns)`` and that pass the model's gate. Only windows stored when the
    calibration was made count (their last end is ``windows_through_ns``), so windows stored
    later inside the period never change it, and a restart rebuilds exactly the same baseline.

    Attributes
    ----------
    subject_id
        The subject.
    start_ns, end_ns
        The period (unix ns), on window end times, half-open.
    windows_through_ns
        End of the last window of the period stored at calibration time.
    windows_used
        Windows that passed the gate and formed the baseline.
    created_ns
        When the calibration was made (unix ns).

    Example
    -------
    >>> c = Calibration(subject_id="s1", start_ns=0, end_ns=600 * 10**9,
    ...                 windows_through_ns=595 * 10**9, windows_used=100, created_ns=1)
    >>> c.windows_used
    100
    """

    model_config = ConfigDict(frozen=True)

    subject_id: str
    start_ns: int = Field(ge=0)
    end_ns: int = Field(ge=0)
    windows_through_ns: int = Field(ge=0)
    windows_used: int = Field(ge=0)
    created_ns: int = Field(ge=0)


class SubjectSummary(BaseModel):
    """What a store holds for one subject.

    Attributes
    ----------
    subject_id
        The subject.
    samples
        Channel value -> samples stored (ACC triples count once).
    batches
        Distinct batches stored (all channels).
    windows
        Feature windows stored.
    states
        State label -> estimates stored; always has ``stress``, ``non_stress`` and ``withheld``.
    first_sample_ns, last_sample_ns
        Earliest / latest raw sample over all channels (``None`` when no samples).
    last_state
        The latest state estimate, if any.
    """

    model_config = ConfigDict(frozen=True)

    subject_id: str
    samples: dict[str, int] = Field(default_factory=dict)
    batches: int = 0
    windows: int = 0
    states: dict[str, int] = Field(
        default_factory=lambda: {"stress": 0, "non_stress": 0, "withheld": 0}
    )
    first_sample_ns: int | None = None
    last_sample_ns: int | None = None
    last_state: StateEstimate | None = None


def batch_digest(batch: SampleBatch) -> str:
    """Content digest of a batch (device, channel, times and values), for re-send checks.

    Example
    -------
    >>> b = SampleBatch(batch_id="b", subject_id="s", device_id="d", channel="eda",
    ...                 start_ns=0, rate_hz=4.0, values=[1.0])
    >>> batch_digest(b) == batch_digest(b.model_copy(update={"seq": 7}))
    True
    """
    return digest_arrays(batch.device_id, batch.channel, batch.times_ns(), batch.values_array())


def digest_arrays(device_id: str, channel: Channel, times_ns: np.ndarray,
                  values: np.ndarray) -> str:
    """:func:`batch_digest` from a batch's arrays, for callers that already hold them.

    Example
    -------
    >>> b = SampleBatch(batch_id="b", subject_id="s", device_id="d", channel="eda",
    ...                 start_ns=0, rate_hz=4.0, values=[1.0])
    >>> digest_arrays("d", b.channel, b.times_ns(), b.values_array()) == batch_digest(b)
    True
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{device_id}|{Channel(channel).value}|".encode())
    h.update(np.ascontiguousarray(times_ns, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return h.hexdigest()


class ProcessingCursor(BaseModel):
    """How far the pipeline has processed a subject's stored batches (the durable queue).

    Attributes
    ----------
    subject_id
        The subject.
    seq
        Arrival number (store-assigned, increasing) of the last processed batch; 0 for none.
    end_ns
        Latest sample time among the processed batches (``None`` when none).

    Example
    -------
    >>> ProcessingCursor(subject_id="s1", seq=0).end_ns is None
    True
    """

    model_config = ConfigDict(frozen=True)

    subject_id: str
    seq: int = Field(default=0, ge=0)
    end_ns: int | None = None


@dataclass(frozen=True, slots=True)
class QueuedBatch:
    """A stored batch with its arrival number (its place in the processing queue).

    Example
    -------
    >>> b = SampleBatch(batch_id="b", subject_id="s", device_id="d", channel="eda",
    ...                 start_ns=0, rate_hz=4.0, values=[1.0])
    >>> QueuedBatch(7, b).seq
    7
    """

    seq: int
    batch: SampleBatch


@runtime_checkable
class StateStore(Protocol):
    """Storage of raw batches, feature windows and state estimates.

    Implementations must be safe to call from several threads. Windows and states are keyed by
    ``(subject_id, end time)``: storing one again replaces it (re-runs are idempotent).
    """

    def add_batch(self, batch: SampleBatch) -> bool:
        """Store a batch's raw samples; ``False`` if its ``(subject_id, batch_id)`` is stored.

        Raises :class:`BatchConflictError` if the id is stored with different content.
        """
        ...

    def add_batches(self, batches: Sequence[SampleBatch]) -> list[bool]:
        """Store batches atomically (one transaction); per batch as :meth:`add_batch`.

        Raises :class:`BatchConflictError` (and stores none) if an id is stored with other
        content.
        """
        ...

    def has_batch(self, subject_id: str, batch_id: str) -> bool:
        """Whether the batch id of this subject is already stored."""
        ...

    def pending_batches(
        self, subject_id: str, *, after_seq: int, limit: int = 1000
    ) -> list[QueuedBatch]:
        """Stored batches of a subject with arrival number ``> after_seq``, in arrival order."""
        ...

    def processing_cursor(self, subject_id: str) -> ProcessingCursor:
        """The subject's processing cursor (``seq=0`` when nothing was processed)."""
        ...

    def set_processing_cursor(self, cursor: ProcessingCursor) -> None:
        """Record that the subject's batches up to ``cursor.seq`` are processed."""
        ...

    def pending_counts(self) -> dict[str, tuple[int, int]]:
        """Subject -> ``(batches, samples)`` stored after its processing cursor."""
        ...

    def add_windows(self, windows: Sequence[FeatureWindow]) -> None:
        """Store feature windows (replacing any with the same subject and end time)."""
        ...

    def add_states(self, states: Sequence[StateEstimate]) -> None:
        """Store state estimates (replacing any with the same subject and window end)."""
        ...

    def latest_state(self, subject_id: str) -> StateEstimate | None:
        """The state with the latest window end, or ``None``."""
        ...

    def states(
        self,
        subject_id: str,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 1000,
    ) -> list[StateEstimate]:
        """States with ``start_ns <= window_end_ns < end_ns``, oldest first, at most ``limit``."""
        ...

    def windows(
        self,
        subject_id: str,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 1000,
    ) -> list[FeatureWindow]:
        """Windows with ``start_ns <= end_ns_of_window < end_ns``, oldest first."""
        ...

    def batches(
        self,
        subject_id: str,
        *,
        channel: Channel | None = None,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int = 10_000,
        through_seq: int | None = None,
    ) -> list[SampleBatch]:
        """Stored batches with samples in ``[start_ns, end_ns)``, as sent, by ``start_ns``;
        only those with arrival number ``<= through_seq`` when it is given."""
        ...

    def samples(
        self,
        subject_id: str,
        channel: Channel,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> ChannelSamples:
        """Raw samples of one channel with ``start_ns <= t < end_ns``, time-ordered."""
        ...

    def subject_ids(self) -> list[str]:
        """All subjects with any stored batch, sorted."""
        ...

    def has_subject(self, subject_id: str) -> bool:
        """Whether any batch of the subject is stored."""
        ...

    def subject_summary(self, subject_id: str) -> SubjectSummary | None:
        """Counts for one subject, ``None`` when the subject is unknown."""
        ...

    def last_sample_ns(self, subject_id: str, channel: Channel) -> int | None:
        """Time of the latest stored sample of a subject's channel, or ``None``."""
        ...

    def set_calibration(self, calibration: Calibration) -> None:
        """Store a subject's calibration period, replacing any earlier one of that subject."""
        ...

    def calibration(self, subject_id: str) -> Calibration | None:
        """The subject's latest calibration period, or ``None``."""
        ...

    def erase_subject(self, subject_id: str) -> dict[str, int]:
        """Delete everything stored of one subject; counts removed per kind (``ERASE_KINDS``).

        Samples, batches (so their ids may be sent again), windows, states and calibrations.
        """
        ...

    def delete_before(self, cutoff_ns: int) -> dict[str, int]:
        """Retention: remove data older than ``cutoff_ns``; counts removed per kind.

        Batches whose last sample is before the cutoff (with their samples; a batch reaching
        past the cutoff is kept whole), windows and states whose window ends before it, and
        calibrations whose period ends before it.
        """
        ...

    def truncate_wal(self) -> bool:
        """Leave no copy of deleted data in the store's local write-ahead log (after an
        erasure or a retention run); ``False`` when a reader blocked it (retried next time)."""
        ...

    def ping(self) -> bool:
        """``True`` when the backend answers."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


def window_to_json(window: FeatureWindow) -> str:
    """The variable parts of a window as JSON (NaN features kept as ``NaN``), for any backend.

    Example
    -------
    >>> w = FeatureWindow(subject_id="s", start_ns=0, end_ns=60, features={"x": float("nan")},
    ...                   sample_counts={}, coverage={}, quality={}, motion=False,
    ...                   beat_source="none", n_beats=0, methods={})
    >>> window_from_json("s", 0, 60, window_to_json(w)).features
    {'x': nan}
    """
    w = window
    return json.dumps(
        {
            "features": w.features,
            "sample_counts": w.sample_counts,
            "coverage": w.coverage,
            "quality": w.quality,
            "motion": w.motion,
            "beat_source": w.beat_source,
            "n_beats": w.n_beats,
            "methods": w.methods,
            "reasons": w.reasons,
        }
    )


def window_from_json(subject_id: str, start_ns: int, end_ns: int, body: str) -> FeatureWindow:
    """Rebuild a :class:`FeatureWindow` from :func:`window_to_json` and its key."""
    d = json.loads(body)
    return FeatureWindow(
        subject_id=subject_id,
        start_ns=int(start_ns),
        end_ns=int(end_ns),
        features={k: float(v) for k, v in d["features"].items()},
        sample_counts={k: int(v) for k, v in d["sample_counts"].items()},
        coverage={k: float(v) for k, v in d["coverage"].items()},
        quality={k: float(v) for k, v in d["quality"].items()},
        motion=bool(d["motion"]),
        beat_source=str(d["beat_source"]),
        n_beats=int(d["n_beats"]),
        methods={k: str(v) for k, v in d["methods"].items()},
        reasons={k: str(v) for k, v in d.get("reasons", {}).items()},
    )
