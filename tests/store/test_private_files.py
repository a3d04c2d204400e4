"""Every database wearemo writes is owner-only, and erasure can truncate the write-ahead log.

Files (with their ``-wal`` and ``-shm`` while open) must be 0600 and the directories wearemo
creates 0700 whatever the umask; the tests run under umask 022, the common default, under
which SQLite alone creates 0644 files. ``truncate_wal`` is checked against a real reader in a
second connection holding a read transaction, as another process would.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wearemo.alerts import AlertDB
from wearemo.api.audit import AuditLog
from wearemo.api.keystore import KeyStore
from wearemo.samples import SampleBatch
from wearemo.store import SQLiteStore
from wearemo.store.influx import InfluxStore
from wearemo.store.private import private_dir, private_file
from wearemo.store.sqlite import connect_wal, truncate_wal

T0 = 1_700_000_000_000_000_000


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """``{relative path: octal mode}`` of everything under ``root``."""
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in sorted(root.rglob("*"))}


def batch(i: int, subject: str = "s1") -> SampleBatch:
    return SampleBatch(batch_id=f"b{i}", subject_id=subject, device_id="d", channel="eda",
                       start_ns=T0 + i * 10**9, rate_hz=4.0, values=[3.0 + i, 3.5, 3.25, 3.0])


def test_every_database_and_its_wal_is_owner_only(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "root"
    store = SQLiteStore(root / "store" / "deep" / "wearemo.sqlite3")
    alerts = AlertDB(root / "alerts" / "alerts.sqlite3")
    keys = KeyStore(root / "auth" / "auth.sqlite3")
    audit = AuditLog(root / "auth" / "auth.sqlite3")
    # The outbox is created on construction; no server is needed for that.
    influx = InfluxStore("http://127.0.0.1:9", write_mode="v1", database="db",
                         buffer_dir=root / "influx-buffer")
    try:
        store.add_batch(batch(0))
        keys.create_key("reader", name="r")
        seen = modes(root)
        assert any(name.endswith("-wal") for name in seen), seen  # checked while open
        assert any(name.endswith("-shm") for name in seen), seen
        wrong = {name: mode for name, mode in seen.items()
                 if mode != ("0o700" if (root / name).is_dir() else "0o600")}
        assert wrong == {}
    finally:
        for closable in (store, alerts, keys, audit, influx):
            closable.close()


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path,
                                                          umask_022: None) -> None:
    path = tmp_path / "old.sqlite3"
    sqlite3.connect(path).close()  # as an older wearemo left it: 0644
    os.chmod(path, 0o644)
    connect_wal(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_private_helpers(tmp_path: Path, umask_022: None) -> None:
    d = private_dir(tmp_path / "a" / "b" / "c")
    assert [stat.S_IMODE(p.stat().st_mode) for p in (d, d.parent, d.parent.parent)] == [0o700] * 3
    f = private_file(d / "x.csv")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and f.read_bytes() == b""
    with pytest.raises(NotADirectoryError):
        private_dir(f)


def _wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_truncate_wal_waits_for_a_reader_and_reports_one_that_stays(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    store = SQLiteStore(path)
    try:
        for i in range(20):
            store.add_batch(batch(i))
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM batches").fetchone() == (20,)
        store.erase_subject("s1")
        assert _wal_size(path) > 0
        # A reader that stays: reported (False) after the wait, the log is still there.
        assert store.truncate_wal(wait_s=0.3) is False
        assert _wal_size(path) > 0

        # A reader that leaves while the truncation retries: it completes.
        conn = store._conn  # the store's own connection: count its checkpoint attempts
        attempts = threading.Semaphore(0)

        def trace(sql: str) -> None:
            if "wal_checkpoint" in sql:
                attempts.release()

        conn.set_trace_callback(trace)
        result: list[bool] = []
        worker = threading.Thread(target=lambda: result.append(store.truncate_wal(wait_s=60)))
        worker.start()
        for _ in range(2):  # two attempts blocked by the reader
            assert attempts.acquire(timeout=30)
        reader.execute("COMMIT")
        reader.close()
        worker.join(timeout=60)
        conn.set_trace_callback(None)
        assert result == [True]
        assert _wal_size(path) == 0
        assert store.batches("s1") == []
    finally:
        store.close()


def test_truncate_wal_on_a_database_without_wal() -> None:
    assert truncate_wal(sqlite3.connect(":memory:")) is True
