"""Storage stage: the :class:`StateStore` protocol and its backends.

Example
-------
>>> from wearemo.store import SQLiteStore, StateStore
>>> isinstance(SQLiteStore(":memory:"), StateStore)
True
"""

from wearemo.settings import Settings
from wearemo.store.base import (
    BatchConflictError,
    StateStore,
    SubjectSummary,
    batch_digest,
)
from wearemo.store.sqlite import SQLiteStore

__all__ = [
    "BatchConflictError",
    "SQLiteStore",
    "StateStore",
    "SubjectSummary",
    "batch_digest",
    "open_store",
]


def open_store(settings: Settings) -> StateStore:
    """Open the store backend named by ``settings.store``.

    Parameters
    ----------
    settings
        Service settings; ``store="sqlite"`` opens ``settings.resolved_sqlite_path()``.

    Example
    -------
    >>> open_store(Settings(sqlite_path=":memory:")).ping()
    True
    """
    if settings.store == "sqlite":
        return SQLiteStore(settings.resolved_sqlite_path())
    raise ValueError(f"unknown store {settings.store!r}; options: 'sqlite'")
