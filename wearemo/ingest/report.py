"""Per-batch outcomes of an ingest call.

Example
-------
>>> r = IngestReport(results=[BatchResult("b1", "s1", "ppg", "stored"),
...                           BatchResult("b2", "s1", "ppg", "duplicate")])
>>> r.stored, r.duplicates, r.rejected is None
(1, 1, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BatchResult", "BatchStatus", "IngestReport"]

BatchStatus = Literal["stored", "duplicate", "rejected"]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What happened to one batch.

    Attributes
    ----------
    batch_id, subject_id, channel
        Which batch.
    status
        ``stored`` (new, now persisted), ``duplicate`` (that batch id was already stored; not
        stored again) or ``rejected`` (nothing stored; see ``field`` and ``reason``).
    field
        For a rejection, the ``SampleBatch`` field at fault (``"start_ns"``, ``"batch_id"``).
    reason
        For a rejection, a message naming the field, the values and what was expected.
    """

    batch_id: str
    subject_id: str
    channel: str
    status: BatchStatus
    field: str | None = None
    reason: str | None = None


@dataclass(slots=True)
class IngestReport:
    """Outcome of one ingest call: per-batch results in request order plus derived counts.

    Processing stops at the first rejected batch, so ``results`` may be shorter than the
    request; everything before the rejection is persisted.
    """

    results: list[BatchResult] = field(default_factory=list)
    windows: int = 0
    states: int = 0

    @property
    def stored(self) -> int:
        """Batches newly stored."""
        return sum(r.status == "stored" for r in self.results)

    @property
    def duplicates(self) -> int:
        """Batches already stored before (idempotent re-sends)."""
        return sum(r.status == "duplicate" for r in self.results)

    @property
    def rejected(self) -> BatchResult | None:
        """The rejected batch, if any (it is always the last result)."""
        last = self.results[-1] if self.results else None
        return last if last is not None and last.status == "rejected" else None

    @property
    def rejected_index(self) -> int | None:
        """Index of the rejected batch in the request, if any."""
        return len(self.results) - 1 if self.rejected is not None else None
