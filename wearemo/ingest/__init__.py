"""Ingest stage: validation beyond the wire model, ordering and per-batch outcomes.

The pydantic :class:`~wearemo.samples.SampleBatch` already refuses NaN/infinite values, wrong
units and non-increasing timestamps inside a batch; this stage adds the checks that need
history: a batch id already stored is a *duplicate* (not an error), and a batch overlapping
earlier data of its channel is *rejected*.

Example
-------
>>> from wearemo.ingest import IngestReport, OrderTracker
>>> IngestReport().stored
0
"""

from wearemo.ingest.order import OrderTracker, OrderViolation
from wearemo.ingest.report import BatchResult, BatchStatus, IngestReport

__all__ = ["BatchResult", "BatchStatus", "IngestReport", "OrderTracker", "OrderViolation"]
