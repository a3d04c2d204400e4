"""The SQLite spool: FIFO, idempotent, durable across reopen and process kill, bounded."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from firmware_bridge.spool import Spool, SpoolFullError
from wearemo.samples import SampleBatch


def _batch(i: int, *, subject: str = "s01", n: int = 4) -> SampleBatch:
    return SampleBatch(
        batch_id=f"vw-01:eda:{i}:{i * 10**9}", subject_id=subject, device_id="vw-01",
        channel="eda", start_ns=10**18 + i * 10**9, rate_hz=4.0,
        values=[0.25 * k + i for k in range(n)], seq=i,
    )


def test_fifo_peek_ack_roundtrip_exact(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as sp:
        batches = [_batch(i) for i in range(5)]
        assert sp.put(batches) == 5
        assert sp.depth == 5
        got = sp.peek(3)
        assert got == batches[:3]  # pydantic equality: every field byte-identical
        assert sp.ack([b.batch_id for b in got]) == 3
        assert [b.batch_id for b in sp.peek(10)] == [b.batch_id for b in batches[3:]]
        assert sp.depth == 2
        assert sp.queued_samples() == {"s01": {"eda": 8}}


def test_put_is_idempotent(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as sp:
        assert sp.put([_batch(1), _batch(2)]) == 2
        assert sp.put([_batch(2), _batch(3)]) == 1
        assert sp.depth == 3


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.db"
    sp = Spool(path)
    sp.put([_batch(i) for i in range(3)])
    sp.ack([_batch(0).batch_id])
    sp.close()
    with Spool(path) as again:
        assert again.depth == 2
        assert again.peek(5) == [_batch(1), _batch(2)]
        assert again.bytes_queued == sum(len(_batch(i).model_dump_json()) for i in (1, 2))
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_survives_process_kill(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    code = textwrap.dedent(f"""
        import os
        from firmware_bridge.spool import Spool
        from wearemo.samples import SampleBatch
        sp = Spool({str(path)!r})
        sp.put([SampleBatch(batch_id="k1", subject_id="s", device_id="d", channel="temp",
                            start_ns=0, rate_hz=4.0, values=[33.5])])
        os._exit(9)  # no close, no atexit: like a crash right after put() returned
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2], check=False)
    assert proc.returncode == 9
    with Spool(path) as sp:
        assert [b.batch_id for b in sp.peek(5)] == ["k1"]
        assert sp.peek(1)[0].values == [33.5]


def test_full_refuses_whole_put_and_counts(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_batches=3) as sp:
        sp.put([_batch(0), _batch(1)])
        with pytest.raises(SpoolFullError, match="refused 2"):
            sp.put([_batch(2), _batch(3)])
        assert sp.depth == 2 and sp.refused_batches == 2
        assert [b.batch_id for b in sp.peek(5)] == [_batch(0).batch_id, _batch(1).batch_id]
        sp.put([_batch(2)])  # room for exactly one more
        assert sp.depth == 3
    with Spool(tmp_path / "s.db", max_batches=3) as sp:
        assert sp.refused_batches == 2  # the count persists


def test_byte_bound(tmp_path: Path) -> None:
    sizes = {i: len(_batch(i).model_dump_json()) for i in (1, 2, 3)}
    assert sizes[1] == sizes[3]
    with Spool(tmp_path / "s.db", max_bytes=sizes[1] + sizes[2]) as sp:
        sp.put([_batch(1), _batch(2)])
        with pytest.raises(SpoolFullError):
            sp.put([_batch(3)])
        sp.ack([_batch(1).batch_id])
        assert sp.put([_batch(3)]) == 1
        assert sp.bytes_queued == sizes[2] + sizes[3]


def test_dead_letter_keeps_batch_and_reason(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as sp:
        sp.put([_batch(0), _batch(1)])
        assert sp.dead_letter(_batch(0).batch_id, reason="values[0]: not finite", status=422)
        assert not sp.dead_letter("unknown", reason="x")
        assert sp.depth == 1 and sp.dead_depth == 1
        (dl,) = sp.dead_letters()
        assert dl.batch == _batch(0) and dl.status == 422 and "finite" in dl.reason


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        Spool(tmp_path / "s.db", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        Spool(tmp_path / "s.db", max_batches=0)


def test_unreadable_row_is_set_aside_not_blocking(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as sp:
        sp.put([_batch(0), _batch(1), _batch(2)])
        # Corrupt the middle row on disk, as a crash-damaged or foreign write might.
        sqlite3.connect(tmp_path / "s.db", isolation_level=None).execute(
            "UPDATE batches SET body = '{\"broken\": true' WHERE batch_id = ?",
            (_batch(1).batch_id,),
        )
        assert sp.peek(3) == [_batch(0), _batch(2)]
        assert sp.depth == 2
        (dl,) = sp.dead_letters()
        assert dl.batch is None and dl.batch_id == _batch(1).batch_id
        assert "unreadable" in dl.reason and dl.body.startswith('{"broken"')


def test_cursors_commit_with_their_batches(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool(path, max_batches=2) as sp:
        assert sp.cursors("d") == {}
        sp.put([_batch(0)], cursors={("d", "eda"): 4, ("d", "hr"): 10**9})
        sp.put([], cursors={("d", "eda"): 5, ("other", "eda"): 1})
        assert sp.cursors("d") == {"eda": 5, "hr": 10**9}
        with pytest.raises(SpoolFullError):  # refused as a whole: the cursor does not move
            sp.put([_batch(1), _batch(2)], cursors={("d", "eda"): 9})
        assert sp.cursors("d")["eda"] == 5
    with Spool(path) as sp:  # durable with the batches
        assert sp.cursors("d") == {"eda": 5, "hr": 10**9} and sp.cursors("other") == {"eda": 1}


def test_spool_files_are_owner_only(tmp_path: Path) -> None:
    """The spool holds a wearer's samples: 0700 directories, 0600 database, WAL and SHM,
    under the common umask 022 (with which SQLite alone creates 0644 files)."""
    old = os.umask(0o022)
    try:
        with Spool(tmp_path / "bridge" / "spool" / "s.db") as sp:
            sp.put([_batch(i) for i in range(3)])
            files = sorted(p for p in (tmp_path / "bridge").rglob("*"))
            assert {p.name for p in files} >= {"spool", "s.db", "s.db-wal", "s.db-shm"}
            assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
                p.name: "0o700" if p.is_dir() else "0o600" for p in files}
    finally:
        os.umask(old)
