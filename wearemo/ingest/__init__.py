"""Ingest stage: validation beyond the wire model, ordering and per-batch outcomes.

The pydantic :class:`~wearemo.samples.SampleBatch` already refuses NaN/infinite values, wrong
units and non-increasing timestamps inside a batch; this stage adds the checks that need
history: a batch id already stored is a *duplicate* (not an error), and a batch overlapping
earlier data of its channel is *rejected*; and one that needs the clock: samples far ahead of
the server clock or older than the ingest horizon are refused (:class:`TimeBounds`).

Example
-------
>>> from wearemo.ingest import IngestReport, OrderTracker
>>> IngestReport().stored
0
"""

from wearemo.ingest.bounds import BoundViolation, TimeBounds
from wearemo.ingest.order import OrderTracker, OrderViolation
from wearemo.ingest.report import BatchResult, BatchStatus, IngestReport

__all__ = [
    "BatchResult",
    "BatchStatus",
    "BoundViolation",
    "IngestReport",
    "OrderTracker",
    "OrderViolation",
    "TimeBounds",
]
