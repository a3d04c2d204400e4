"""The retention policy: delete raw samples and derived data older than a configured age.

Runs in the service (hourly by default, ``WEAREMO_RETENTION_DAYS``) and on demand
(``POST /v1/admin/retention``), against whichever store is configured.

Example
-------
>>> from wearemo.store import SQLiteStore
>>> cutoff, removed = apply_retention(SQLiteStore(":memory:"), days=30, now_ns=40 * 86_400 * 10**9)
>>> cutoff == 10 * 86_400 * 10**9, removed["batches"]
(True, 0)
"""

from __future__ import annotations

import logging
import time

from wearemo.store.base import StateStore

__all__ = ["apply_retention"]

log = logging.getLogger(__name__)

_DAY_NS = 86_400 * 10**9


def apply_retention(
    store: StateStore, *, days: float, now_ns: int | None = None
) -> tuple[int, dict[str, int]]:
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
    tuple[int, dict[str, int]]
        The cutoff (unix ns) and the records removed per kind.

    Example
    -------
    >>> apply_retention(store, days=365)  # doctest: +SKIP
    (1733000000000000000, {'samples': 0, 'batches': 0, ...})
    """
    if not days > 0:
        raise ValueError(f"days must be > 0, got {days}")
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = now - int(days * _DAY_NS)
    removed = store.delete_before(cutoff)
    if any(removed.values()):
        log.info("retention: removed %s (data ended before %d ns)", removed, cutoff)
    return cutoff, removed
