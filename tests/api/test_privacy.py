"""Privacy over real HTTP: erasure of a subject everywhere, and the retention policy.

Erasure is verified by querying afterwards: through every read endpoint, in the service's
SQLite files themselves (any table with a ``subject_id`` column), and byte by byte in every
database file and its write-ahead log and shared-memory index (``*-wal``, ``*-shm``) while the
server still runs, while another subject's data stays exactly as it was.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import numpy as np
from api_support import (
    admin_client,
    bearer,
    body,
    create_key,
    serve,
    settings_for,
    sim_batches,
)
from simdata import T0
from typer.testing import CliRunner

from wearemo.cli import app as cli
from wearemo.samples import SampleBatch


def _ingest(c, batches: list[SampleBatch]) -> None:
    for i in range(0, len(batches), 12):
        r = c.post("/v1/ingest", json=body(batches[i:i + 12]))
        assert r.status_code == 200, r.text


def _rows_of(db: Path, subject: str) -> dict[str, int]:
    """Rows naming ``subject`` in every table of a SQLite file that has a subject column."""
    out = {}
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
            if "subject_id" in cols:
                n = con.execute(f'SELECT COUNT(*) FROM "{t}" WHERE subject_id = ?',
                                (subject,)).fetchone()[0]
                if n:
                    out[t] = n
    return out


def _value_needles(erased: list[SampleBatch], kept: list[SampleBatch]) -> np.ndarray:
    """The erased samples as stored (little-endian float64 bit patterns), minus any value the
    kept data shares (e.g. a constant), so a hit can only be a leftover of the erased data."""
    def bits(batches: list[SampleBatch]) -> np.ndarray:
        values = np.concatenate([np.asarray(b.values, dtype="<f8").ravel() for b in batches])
        return values.view("<u8")
    return np.setdiff1d(bits(erased), bits(kept))


def _db_files(data: Path) -> list[Path]:
    files = [p for p in sorted(data.rglob("*"))
             if p.is_file() and p.name.endswith((".sqlite3", ".sqlite3-wal", ".sqlite3-shm"))]
    assert any(p.name.endswith("-wal") for p in files), "the server runs: WAL files exist"
    return files


def _leftovers(files: Iterable[Path], values: np.ndarray, text: bytes | None) -> dict[str, str]:
    """Per file: how many of ``values`` (at any byte offset) and of ``text`` it still holds."""
    found = {}
    for path in files:
        raw = path.read_bytes()
        hits = 0
        for offset in range(min(8, len(raw))):  # a blob starts anywhere in a page
            words = np.frombuffer(raw, dtype="<u8", count=(len(raw) - offset) // 8,
                                  offset=offset)
            hits += int(np.isin(words, values).sum())
        copies = raw.count(text) if text is not None else 0
        if hits or copies:
            found[path.name] = f"{hits} values" + (f", {copies} ids" if text else "")
    return found


def _snapshot(c, subject: str) -> tuple[object, object, object]:
    return (c.get(f"/v1/subjects/{subject}").json(),
            c.get(f"/v1/subjects/{subject}/states", params={"limit": 100_000}).json(),
            c.get(f"/v1/subjects/{subject}/features", params={"limit": 100_000}).json())


def test_erasure_removes_a_subject_everywhere_and_nothing_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gone, kept = sim_batches("gone1", 180), sim_batches("kept1", 180, seed=5)
    with serve(settings_for(data)) as url, admin_client(url) as c:
        _ingest(c, gone + kept)
        device = create_key(c, "device", subjects=["gone1", "kept1"])
        assert c.post("/v1/admin/cohorts", json={"name": "trial",
                      "subjects": ["gone1", "kept1"]}).status_code == 201
        rule = {"kind": "no_data", "url": "https://hooks.example.invalid/hook", "duration_s": 3600}
        assert c.post("/v1/subjects/gone1/alerts/rules", json=rule).status_code == 201
        before_kept = _snapshot(c, "kept1")
        assert c.get("/v1/subjects/gone1").json()["batches"] == len(gone)

        r = c.delete("/v1/admin/subjects/gone1")
        assert r.status_code == 200, r.text
        erased = r.json()
        assert erased["removed"]["batches"] == len(gone)
        assert erased["removed"]["samples"] == sum(len(b.values) for b in gone)
        assert erased["removed"]["states"] > 0 and erased["removed"]["windows"] > 0
        assert erased["alert_rows"] >= 1 and erased["grants"] == 2  # cohort + device grant

        # Every read path answers as for a subject that never existed ...
        for path in ("", "/state", "/states", "/features", "/samples?channel=ppg",
                     "/export?kind=states&format=csv", "/alerts/rules", "/suggestion",
                     "/fhir/Observation", "/omh/heart-rate"):
            r = c.get(f"/v1/subjects/gone1{path}")
            assert (r.status_code, r.json()) == (404, {"detail": "unknown subject 'gone1'"}), path
        assert "gone1" not in c.get("/v1/subjects").json()
        [cohort] = [x for x in c.get("/v1/admin/cohorts").json() if x["name"] == "trial"]
        assert cohort["subjects"] == ["kept1"]
        assert c.get("/v1/subjects", headers=bearer(device)).json() == ["kept1"]
        # ... and nothing of it is left in the files, except the audit trail of the erasure.
        for db in sorted(data.glob("*.sqlite3")):
            rows = _rows_of(db, "gone1")
            assert set(rows) <= {"audit"}, (db.name, rows)
        # Not even as bytes: deleted rows leave no copy in free pages or the write-ahead log
        # (secure_delete, then a checkpoint that truncates the WAL). The audit log (auth.*)
        # keeps the id of the erasure by design, so only the values are looked for there.
        files = _db_files(data)
        needles = _value_needles(gone, kept)
        assert len(needles) > 10_000
        assert _leftovers([f for f in files if not f.name.startswith("auth.")], needles,
                          b"gone1") == {}
        assert _leftovers([f for f in files if f.name.startswith("auth.")], needles, None) == {}
        assert erased["wal_truncated"] is True
        audit = c.get("/v1/admin/audit", params={"subject_id": "gone1", "limit": 1000}).json()
        assert any(e["action"] == "DELETE /v1/admin/subjects/{subject_id}" and e["outcome"] == 200
                   for e in audit)
        assert c.get("/v1/admin/audit/verify").json()["ok"]
        # The other subject is untouched.
        assert _snapshot(c, "kept1") == before_kept

        # Erased is erased: a second erasure finds nothing; the old batch ids are new again.
        assert c.delete("/v1/admin/subjects/gone1").status_code == 404
        r = c.post("/v1/ingest", json=body(gone[:2]))
        assert [x["status"] for x in r.json()["results"]] == ["stored", "stored"]
        # Only an admin may erase.
        r = c.delete("/v1/admin/subjects/kept1", headers=bearer(device))
        assert r.status_code == 403
        assert _snapshot(c, "kept1") == before_kept


def _shifted(batches: list[SampleBatch], start_ns: int) -> list[SampleBatch]:
    return [b.model_copy(update={"start_ns": b.start_ns - T0 + start_ns}) for b in batches]


def test_retention_deletes_old_data_and_keeps_recent_data(tmp_path: Path) -> None:
    now_s = time.time_ns() // 10**9
    recent = _shifted(sim_batches("new1", 120), (now_s - 600) // 5 * 5 * 10**9)
    # November 2023: far older than the 30-day policy; other values than ``recent``'s
    old = sim_batches("old1", 120, seed=7)
    with serve(settings_for(tmp_path / "nopolicy")) as url, admin_client(url) as c:
        r = c.post("/v1/admin/retention")
        assert r.status_code == 409 and "WEAREMO_RETENTION_DAYS" in r.json()["detail"]
    # A long interval: only the run at start and the one asked for below happen.
    settings = settings_for(tmp_path / "d", retention_days=30, retention_interval_s=86_400)
    with serve(settings) as url, admin_client(url) as c:
        _ingest(c, old + recent)
        before_recent = _snapshot(c, "new1")
        assert before_recent[0]["batches"] == len(recent) and before_recent[1]
        r = c.post("/v1/admin/retention")
        assert r.status_code == 200, r.text
        out = r.json()
        assert abs(out["cutoff_ns"] - (time.time_ns() - 30 * 86_400 * 10**9)) < 60 * 10**9
        assert out["removed"]["batches"] == len(old)
        assert out["removed"]["samples"] == sum(len(b.values) for b in old)
        assert c.get("/v1/subjects/old1").status_code == 404
        assert _snapshot(c, "new1") == before_recent
        # Nothing of the purged samples is left on disk either, WAL included.
        needles = _value_needles(old, recent)
        assert len(needles) > 5_000
        assert _leftovers(_db_files(tmp_path / "d"), needles, None) == {}
        assert out["wal_truncated"] is True
        again = c.post("/v1/admin/retention").json()["removed"]
        assert not any(again.values())
    # The policy also runs by itself at start: old data uploaded earlier is gone on restart.
    with serve(settings) as url, admin_client(url) as c:
        _ingest(c, sim_batches("old2", 60))
    with serve(settings) as url, admin_client(url) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/subjects/old2").status_code != 404:
            assert time.monotonic() < deadline, "retention did not run at start"
            time.sleep(0.2)
        assert _snapshot(c, "new1") == before_recent


def test_admin_key_is_needed_for_privacy_endpoints(tmp_path: Path) -> None:
    with serve(settings_for(tmp_path)) as url, admin_client(url) as c:
        reader = create_key(c, "reader", cohorts=["x"])
        for method, path in (("DELETE", "/v1/admin/subjects/s1"), ("POST", "/v1/admin/retention")):
            assert c.request(method, path, headers={"Authorization": ""}).status_code == 401
            assert c.request(method, path, headers=bearer(reader)).status_code == 403


def test_service_files_are_owner_only(tmp_path: Path) -> None:
    """Under umask 022 (SQLite alone then creates 0644 files), everything the running service
    created is owner-only: the data dir and its parents 0700, the databases with their -wal and
    -shm files and the generated admin key 0600."""
    old = os.umask(0o022)
    try:
        data = tmp_path / "srv" / "var" / "data"
        with serve(settings_for(data, admin_key=None)) as url:
            key = (data / "admin.key").read_text().strip()
            with httpx.Client(base_url=url, timeout=30, headers=bearer(key)) as c:
                _ingest(c, sim_batches("own1", 60))
                rule = {"kind": "no_data", "url": "https://example.org/hook", "duration_s": 60}
                assert c.post("/v1/subjects/own1/alerts/rules", json=rule).status_code == 201
                made = sorted((tmp_path / "srv").rglob("*"))
                names = {p.name for p in made}
                assert {"admin.key", "wearemo.sqlite3-wal", "alerts.sqlite3-shm",
                        "auth.sqlite3-wal"} <= names, names
                assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
                    str(p): "0o700" if p.is_dir() else "0o600" for p in made}
    finally:
        os.umask(old)


def _erase_cli(data: Path, subject: str) -> subprocess.CompletedProcess[str]:
    """``wearemo subjects erase`` as a separate process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "wearemo", "subjects", "erase", subject, "--data-dir", str(data)],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("WEAREMO_")})


def _erase_here(data: Path, subject: str) -> tuple[int, str]:
    """The same command in this process (no 30-s import): exit code and stderr."""
    result = CliRunner().invoke(cli, ["subjects", "erase", subject, "--data-dir", str(data)])
    return result.exit_code, result.stderr


def test_cli_erase_works_offline_and_refuses_while_a_service_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gone, kept = sim_batches("gone2", 120), sim_batches("kept2", 120, seed=5)
    with serve(settings_for(data)) as url, admin_client(url) as c:
        _ingest(c, gone + kept)
        device = create_key(c, "device", subjects=["gone2", "kept2"])
        assert c.post("/v1/admin/cohorts", json={"name": "trial",
                      "subjects": ["gone2", "kept2"]}).status_code == 201
        rule = {"kind": "no_data", "url": "https://example.org/hook", "duration_s": 3600}
        assert c.post("/v1/subjects/gone2/alerts/rules", json=rule).status_code == 201
        before_kept = _snapshot(c, "kept2")
        # A running service keeps the subject's stream and baseline in memory: refused.
        code, err = _erase_here(data, "gone2")
        assert code == 2, err
        assert "service is running" in err and f"(pid {os.getpid()})" in err
        assert "DELETE /v1/admin/subjects/gone2" in err
        assert c.get("/v1/subjects/gone2").json()["batches"] == len(gone)
    for db in sorted(data.glob("*.sqlite3")):
        assert _rows_of(db, "gone2"), db.name  # it is there before, in every file

    done = _erase_cli(data, "gone2")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["removed"]["batches"] == len(gone) and out["removed"]["windows"] > 0
    assert out["removed"]["samples"] == sum(len(b.values) for b in gone)
    assert out["alert_rows"] >= 1 and out["grants"] == 2  # cohort + device grant
    assert out["wal_truncated"] is True
    for db in sorted(data.glob("*.sqlite3")):
        rows = _rows_of(db, "gone2")
        assert set(rows) <= {"audit"}, (db.name, rows)
    code, err = _erase_here(data, "gone2")
    assert code == 1 and "nothing of subject 'gone2'" in err

    with serve(settings_for(data)) as url, admin_client(url) as c:
        assert c.get("/v1/subjects/gone2").status_code == 404
        assert c.get("/v1/subjects", headers=bearer(device)).json() == ["kept2"]
        assert _snapshot(c, "kept2") == before_kept
        audit = c.get("/v1/admin/audit", params={"subject_id": "gone2", "limit": 1000}).json()
        assert any(e["action"] == "cli subjects erase" and e["key_id"] == "cli" for e in audit)
        assert c.get("/v1/admin/audit/verify").json()["ok"]
        # Erased is erased: the old batch ids are new again, and it starts from nothing.
        r = c.post("/v1/ingest", json=body(gone[:2]))
        assert [x["status"] for x in r.json()["results"]] == ["stored", "stored"]
