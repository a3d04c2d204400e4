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
    StoreBackpressureError,
    StoreUnavailableError,
    SubjectSummary,
    batch_digest,
)
from wearemo.store.influx import InfluxStore
from wearemo.store.sqlite import SQLiteStore

__all__ = [
    "BatchConflictError",
    "InfluxStore",
    "SQLiteStore",
    "StateStore",
    "StoreBackpressureError",
    "StoreUnavailableError",
    "SubjectSummary",
    "batch_digest",
    "open_store",
]


def open_store(settings: Settings) -> StateStore:
    """Open the store backend named by ``settings.store``.

    Parameters
    ----------
    settings
        Service settings; ``store="sqlite"`` opens ``settings.resolved_sqlite_path()``,
        ``store="influx"`` an :class:`InfluxStore` on ``settings.influx_url`` (docs/influx.md).

    Example
    -------
    >>> open_store(Settings(sqlite_path=":memory:")).ping()
    True
    """
    if settings.store == "sqlite":
        return SQLiteStore(settings.resolved_sqlite_path())
    if settings.store == "influx":
        assert settings.influx_url is not None  # Settings refuses store="influx" without it
        secret = settings.influx_token or None
        password = settings.influx_password or None
        return InfluxStore(
            settings.influx_url,
            write_mode=settings.influx_write_mode,
            database=settings.influx_database,
            bucket=settings.influx_bucket,
            org=settings.influx_org,
            token=None if secret is None else secret.get_secret_value(),
            username=settings.influx_username,
            password=None if password is None else password.get_secret_value(),
            buffer_dir=settings.resolved_influx_buffer_dir(),
            buffer_max_bytes=settings.influx_buffer_max_bytes,
        )
    raise ValueError(f"unknown store {settings.store!r}; options: 'sqlite', 'influx'")
