"""The retention policy: delete raw samples and derived data older than a configured age.

Runs in the service (hourly by default, ``WEAREMO_RETENTION_DAYS``) and on demand
(``POST /v1/admin/retention``), against whichever store is configured.

Deleted data leaves no copy on disk: the store overwrites deleted rows and its write-ahead
log is truncated after each run that removed something.

Example
-------
>>> from wearemo.store import SQLiteStore
>>> run = apply_retention(SQLiteStore(":memory:"), days=30, now_ns=40 * 86_400 * 10**9)
>>> run.cutoff_ns == 10 * 86_400 * 10**9, run.removed["batches"], run.wal_truncated
(True, 0, True)
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from wearemo.store.base import StateStore

__all__ = ["RetentionRun", "apply_retention"]

log = logging.getLogger(__name__)

_DAY_NS = 86_400 * 10**9


class RetentionRun(NamedTuple):
    """What one retention run did."""

    cutoff_ns: int
    """Data that ended before this (unix ns) was deleted."""
    removed: dict[str, int]
    """Records removed per kind (``ERASE_KINDS``)."""
    wal_truncated: bool
    """Whether the store's write-ahead log was emptied (``False``: a reader blocked it)."""


def apply_retention(
    store: StateStore, *, days: float, now_ns: int | None = None
) -> RetentionRun:
    """Delete everything that ended more than ``days`` before ``now_ns`` (default: now).

    Parameters
    ----------
    store
        The store to prune (``StateStore.delete_before``).
    days
        Age limit, days (> 0).
    now_ns
        Reference time, unix ns.

    Returns
    -------
    RetentionRun
        The cutoff (unix ns), the records removed per kind, and whether the write-ahead log
        was truncated afterwards (also ``True`` when nothing was removed).

    Example
    -------
    >>> apply_retention(store, days=365)  # doctest: +SKIP
    RetentionRun(cutoff_ns=1733000000000000000, removed={'samples': 0, ...}, wal_truncated=True)
    """
    if not days > 0:
        raise ValueError(f"days must be > 0, got {days}")
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = now - int(days * _DAY_NS)
    removed = store.delete_before(cutoff)
    truncated = True
    if any(removed.values()):
        truncated = store.truncate_wal()
        log.info("retention: removed %s (data ended before %d ns)", removed, cutoff)
    return RetentionRun(cutoff, removed, truncated)
