"""Owner-only files and directories for everything wearemo writes about a person.

The databases (with their ``-wal`` and ``-shm`` files), the admin key, the Influx outbox and
exports hold health data or secrets, so they are created ``0600`` and the directories wearemo
creates ``0700``, whatever the process umask. A file that already exists with group or other
bits (e.g. written by an older wearemo under umask 022) is tightened when wearemo opens it;
directories that already exist are left as their owner set them.

Example
-------
>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     f = private_file(private_dir(pathlib.Path(tmp) / "a" / "b") / "x.db")
...     oct(f.stat().st_mode & 0o777), oct(f.parent.parent.stat().st_mode & 0o777)
('0o600', '0o700')
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file", "tighten"]

#: Mode of the files and of the directories wearemo creates.
FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | Path) -> Path:
    """Create a directory and any missing parents with mode 0700; return it.

    ``Path.mkdir(parents=True, mode=...)`` applies the mode to the last directory only (and
    through the umask), so each missing level is created and set here.

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     oct(private_dir(pathlib.Path(tmp) / "data").stat().st_mode & 0o777)
    '0o700'
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:  # created meanwhile by another process or thread
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode went through the umask
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    return path


def private_file(path: str | Path) -> Path:
    """Create an empty file with mode 0600 if missing (and its directory with 0700), or
    tighten an existing one to 0600; return it.

    Example
    -------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     oct(private_file(pathlib.Path(tmp) / "x").stat().st_mode & 0o777)
    '0o600'
    """
    path = Path(path)
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        tighten(path)
        return path
    os.chmod(path, FILE_MODE)  # O_CREAT's mode went through the umask
    return path


def tighten(path: str | Path) -> bool:
    """Drop group and other permissions of an existing file; ``False`` if it does not exist.

    A file of another owner (e.g. shared with a backup group on purpose) is left as it is.

    Example
    -------
    >>> tighten("/nonexistent/wearemo.sqlite3-wal")
    False
    """
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return False
    if mode & 0o077:
        with contextlib.suppress(PermissionError):  # not ours: its owner decides
            os.chmod(path, mode & 0o700)
    return True
