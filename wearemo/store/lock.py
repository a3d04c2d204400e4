"""Who uses a data dir: a running service holds a shared lock, offline surgery an exclusive one.

A service keeps state of its subjects in memory (streams, baselines, ordering marks, its
processing queue) that a change made behind its back would contradict: an offline erase while
it runs would be undone by the next window it computes. ``wearemo serve`` therefore holds a
shared lock on ``data_dir/server.lock`` for its lifetime (several services may share a data
dir), and ``wearemo subjects erase`` takes the lock exclusively, without waiting: it is
refused while any service runs there. The locks are ``flock(2)`` locks, released by the
kernel when their process ends, however it ends (``kill -9`` too), so a crashed service never
leaves the data dir locked. Where ``fcntl`` is missing (Windows) there is no detection.

Example
-------
>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> with DataDirLock(d).shared():
...     DataDirLock(d).try_exclusive() is None
True
>>> lock = DataDirLock(d).try_exclusive()
>>> lock is not None
True
>>> lock.release()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from wearemo.store.private import private_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataDirLock", "HeldLock"]


class HeldLock:
    """A lock taken on a data dir; :meth:`release` (or process exit) frees it."""

    def __init__(self, handle: IO[str] | None) -> None:
        self._handle = handle

    def release(self) -> None:
        """Free the lock (idempotent)."""
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases its flock
            self._handle = None


class DataDirLock:
    """The ``server.lock`` file of a data dir.

    Parameters
    ----------
    data_dir
        The service's data dir (created 0700 if missing).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "server.lock"  # 0600 in a 0700 dir, like the databases

    def acquire_shared(self) -> HeldLock:
        """Hold the lock shared (a running service); waits while an exclusive holder works.

        The holder's pid is written into the file, for the refusal message of
        :meth:`try_exclusive`.
        """
        handle = private_file(self.path).open("a+")
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        return HeldLock(handle)

    @contextmanager
    def shared(self) -> Iterator[HeldLock]:
        """:meth:`acquire_shared` as a context manager."""
        held = self.acquire_shared()
        try:
            yield held
        finally:
            held.release()

    def try_exclusive(self) -> HeldLock | None:
        """Hold the lock exclusively if nobody holds it now; ``None`` if a service does.

        Without ``fcntl`` it always succeeds (no detection).
        """
        handle = private_file(self.path).open("a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return None
        return HeldLock(handle)

    def holder_pid(self) -> int | None:
        """The pid the last shared holder wrote (it may have ended since)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None
