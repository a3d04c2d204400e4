"""The audit log under abuse (issue 13, item 6): an unauthenticated flood grows it by bounded
bytes, hostile ids are truncated and escaped, and the chain is keyed (HMAC-SHA256 with a key
outside the database), so deleting entries and recomputing the chain is detected. Real HTTP
to uvicorn on loopback, real SQLite files, the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, create_key, serve, settings_for
from pydantic import ValidationError
from simdata import T0, S
from typer.testing import CliRunner

from wearemo.api.audit import (
    MAX_ACTION_CHARS,
    MAX_DETAIL_CHARS,
    MAX_ID_CHARS,
    AuditEntry,
    AuditKeyError,
    AuditLog,
    open_audit_log,
)
from wearemo.api.auth import AUDIT_KEY_FILE, load_audit_key
from wearemo.cli import app as cli
from wearemo.settings import Settings

pytestmark = pytest.mark.e2e

_GENESIS = "0" * 64
#: What a hostile client put in a path: control characters, an ANSI escape, a bidi override.
_HOSTILE = ("A\x00\x1b[31m\n\r\u202e\x7f\u0085" * 400)[:3000]


def eda(batch_id: str, subject: str, start_s: float) -> dict[str, object]:
    return {"batch_id": batch_id, "subject_id": subject, "device_id": "d1", "channel": "eda",
            "start_ns": T0 + round(start_s * S), "rate_hz": 4.0, "values": [3.0] * 8}


def _rows(path: Path, sql: str = "SELECT * FROM audit ORDER BY seq") -> list[sqlite3.Row]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _db_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_unauthenticated_flood_is_aggregated_and_bounded(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, audit_refusal_interval_s=3600)
    path = settings.resolved_auth_path()
    flood = 300
    hostile_path = "/v1/subjects/" + quote(_HOSTILE, safe="")
    with serve(settings) as url, admin_client(url) as admin, httpx.Client(base_url=url) as anon:
        dev = create_key(admin, "device", subjects=["fl1"])
        assert anon.post("/v1/ingest", json={"batches": [eda("f0", "fl1", 0)]},
                         headers=bearer(dev)).status_code == 200
        before = _db_bytes(path)
        for i in range(flood):
            headers = bearer("wmo_0123456789ab_" + "A" * 43) if i % 2 else {}
            assert anon.get(hostile_path, headers=headers).status_code == 401
        # authenticated, accepted requests are still recorded one by one
        for _ in range(5):
            assert anon.get("/v1/subjects/fl1/state", headers=bearer(dev)).status_code in (200,
                                                                                           404)
        reads = [e for e in admin.get("/v1/admin/audit", params={"subject_id": "fl1"}).json()
                 if e["action"] == "GET /v1/subjects/{subject_id}/state"]
        assert len(reads) == 5 and all(e["count"] == 1 for e in reads)
        # the first refusal of each kind is there at once, with the (escaped) subject
        firsts = [e for e in admin.get("/v1/admin/audit").json() if e["outcome"] == 401]
        assert len(firsts) == 2 and all(e["count"] == 1 for e in firsts)
    grown = _db_bytes(path) - before
    refused = [r for r in _rows(path) if r["outcome"] == 401]
    # after the interval (here: the shutdown) one row per kind adds the rest with a count
    assert sum(r["count"] for r in refused) == flood
    assert len(refused) == 4
    assert {(r["detail"].removesuffix(" (repeated)"), r["client"]) for r in refused} == {
        ("missing API key", "127.0.0.1"), ("invalid API key", "127.0.0.1")}
    assert {r["action"] for r in refused} == {"GET /v1/subjects/{subject_id}"}
    assert grown < 64 * 1024, f"the audit file grew by {grown} bytes for {flood} refusals"
    for r in refused:
        sid = r["subject_id"]
        if sid is None:  # an aggregate row names no single subject
            continue
        assert len(sid) <= MAX_ID_CHARS + 40
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in sid)
        assert sid.startswith(r"A\x00\x1b[31m\x0a\x0d\u202e\x7f\x85A")
        assert "more characters" in sid
    # keyed, and intact
    with open_audit_log(settings) as log:
        report = log.verify()
    assert report.ok and report.keyed_from_seq == 1, report


def test_refused_aggregates_are_written_each_interval(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, audit_refusal_interval_s=0.5)
    with serve(settings) as url, admin_client(url) as admin, httpx.Client(base_url=url) as anon:
        for _ in range(20):
            assert anon.get("/v1/subjects").status_code == 401
        deadline_rows: list[dict[str, object]] = []
        for _ in range(600):  # the periodic flush writes the rest within an interval or two
            deadline_rows = [e for e in admin.get("/v1/admin/audit").json()
                             if e["outcome"] == 401]
            if sum(int(str(e["count"])) for e in deadline_rows) == 20:
                break
            httpx.get(f"{url}/healthz")  # wait on the server, not on a fixed sleep
        assert sum(int(str(e["count"])) for e in deadline_rows) == 20


def test_too_many_clients_share_one_overflow_row(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite3", key=b"k" * 32, refusal_interval_s=3600,
                   refusal_buckets=3)
    for i in range(50):
        log.refuse(AuditEntry.new(None, None, "GET /v1/subjects", None, 401, "missing API key"),
                   client=f"10.0.0.{i}")
    log.close()  # flushes
    rows = _rows(tmp_path / "a.sqlite3")
    assert sum(r["count"] for r in rows) == 50
    assert len(rows) <= 2 * 3 + 2
    assert any(r["client"] == "*" for r in rows)


def test_refusals_of_a_valid_key_keep_naming_the_subject(tmp_path: Path) -> None:
    """Who tried to reach whose data stays on record for a valid key; an unauthenticated
    caller's made-up subjects are not kept beyond the first."""
    path = tmp_path / "a.sqlite3"
    with AuditLog(path, key=b"k" * 32, refusal_interval_s=3600) as log:
        for sid in ["a", "b"] * 10:
            log.refuse(AuditEntry.new("k1", "reader", "GET /v1/subjects/{subject_id}", sid, 404,
                                      "subject not in the key's grant"), client="10.0.0.1")
        for i in range(10):
            log.refuse(AuditEntry.new(None, None, "GET /v1/subjects/{subject_id}", f"x{i}", 401,
                                      "missing API key"), client="10.0.0.1")
    rows = _rows(path)
    assert sorted((r["subject_id"], r["count"]) for r in rows if r["outcome"] == 404) == [
        ("a", 1), ("a", 9), ("b", 1), ("b", 9)]
    assert sorted((r["subject_id"] or "", r["count"]) for r in rows if r["outcome"] == 401) == [
        ("", 9), ("x0", 1)]


def test_ids_and_paths_are_truncated_and_escaped(tmp_path: Path) -> None:
    long_id = ("\x00\x1b\u2028x" * 10_003)[:40_011]
    with AuditLog(tmp_path / "a.sqlite3", key=b"k" * 32) as log:
        e = log.append(AuditEntry.new("k" * 500, "reader", "GET /" + "p" * 5000, long_id, 200,
                                      "d\x00" * 5000))
        assert e.subject_id is not None and len(e.subject_id) <= MAX_ID_CHARS + 40
        assert e.subject_id.startswith(r"\x00\x1b\u2028x\x00")
        cut = re.search(r"…\(\+(\d+) more characters\)$", e.subject_id)
        assert cut is not None and int(cut[1]) > 40_011 - MAX_ID_CHARS
        assert len(e.action) <= MAX_ACTION_CHARS + 40
        assert len(e.detail) <= MAX_DETAIL_CHARS + 40 and "\x00" not in e.detail
        assert e.key_id is not None and len(e.key_id) <= MAX_ID_CHARS + 40
        # a backslash is escaped too, so an escaped value cannot pose as another
        assert log.append(AuditEntry.new(None, None, "x", "a\\x00", 1)).subject_id == r"a\\x00"
        assert log.verify().ok


# -- the keyed chain --------------------------------------------------------------------------

def _legacy_digest(row: dict[str, object], prev: str) -> str:
    """How the unkeyed chain was computed (before the HMAC): anyone can redo it."""
    fields = [row["seq"], row["at_ns"], row["key_id"], row["role"], row["action"],
              row["subject_id"], row["outcome"], row["detail"], prev]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


def _delete_and_recompute(path: Path, key_id: str, *, mark_unkeyed: bool = False) -> int:
    """The attack from the issue: drop the guards, delete one key's entries, renumber, and
    recompute the chain the old (unkeyed) way."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    gone = db.execute("DELETE FROM audit WHERE key_id = ?", (key_id,)).rowcount
    prev = _GENESIS
    for new_seq, row in enumerate(db.execute("SELECT * FROM audit ORDER BY seq").fetchall(), 1):
        fields = dict(row)
        fields["seq"] = new_seq
        digest = _legacy_digest(fields, prev)
        db.execute("UPDATE audit SET seq = ?, prev_sha256 = ?, sha256 = ? WHERE seq = ?",
                   (new_seq, prev, digest, row["seq"]))
        prev = digest
    if mark_unkeyed:
        db.execute("UPDATE audit SET keyed = 0")
    db.commit()
    db.close()
    return gone


def _activity(tmp_path: Path) -> tuple[Settings, str]:
    settings = settings_for(tmp_path)
    with serve(settings) as url, admin_client(url) as admin, httpx.Client(base_url=url) as c:
        spy = create_key(admin, "device", subjects=["ch1"])
        other = create_key(admin, "device", subjects=["ch2"])
        for k, sid in ((spy, "ch1"), (other, "ch2")):
            assert c.post("/v1/ingest", json={"batches": [eda(f"{sid}-0", sid, 0)]},
                          headers=bearer(k)).status_code == 200
            assert c.get(f"/v1/subjects/{sid}", headers=bearer(k)).status_code == 200
    return settings, spy.split("_")[1]


@pytest.mark.parametrize("mark_unkeyed", [False, True])
def test_deleting_a_keys_entries_and_recomputing_the_chain_is_detected(
    tmp_path: Path, mark_unkeyed: bool
) -> None:
    settings, spy = _activity(tmp_path)
    verify = ["audit", "verify", "--data-dir", str(tmp_path)]
    ok = CliRunner().invoke(cli, verify, env={"WEAREMO_ADMIN_KEY": ADMIN_KEY})
    assert ok.exit_code == 0 and "audit log intact" in ok.output, ok.output
    assert _delete_and_recompute(settings.resolved_auth_path(), spy,
                                 mark_unkeyed=mark_unkeyed) == 2
    bad = CliRunner().invoke(cli, verify, env={"WEAREMO_ADMIN_KEY": ADMIN_KEY})
    assert bad.exit_code == 1 and "tampered" in bad.output, bad.output
    assert "entry 1" in bad.output


def test_audit_key_file_and_setting(tmp_path: Path) -> None:
    settings, _ = _activity(tmp_path)
    key_file = tmp_path / AUDIT_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) >= 32
    # the key is nowhere in the database
    assert key_file.read_text().strip().encode() not in settings.resolved_auth_path().read_bytes()
    key_file.chmod(0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        load_audit_key(settings)
    key_file.chmod(0o600)
    # a different key does not verify the chain: the service refuses to start on it
    other = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY,  # type: ignore[arg-type]
                     audit_key="Zq7" + os.urandom(24).hex())  # type: ignore[arg-type]
    with pytest.raises(AuditKeyError, match="does not verify"):
        open_audit_log(other)
    # a lost key file is not silently replaced (that would fork the chain)
    key_file.unlink()
    with pytest.raises(AuditKeyError, match=AUDIT_KEY_FILE):
        open_audit_log(settings)
    assert not key_file.exists()
    with pytest.raises(ValidationError, match="WEAREMO_AUDIT_KEY is refused"):
        Settings(data_dir=tmp_path, audit_key="changeme")  # type: ignore[arg-type]


# -- logs written before the keyed chain ------------------------------------------------------

_LEGACY_SCHEMA = """
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, key_id TEXT, role TEXT,
    action TEXT NOT NULL, subject_id TEXT, outcome INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '', prev_sha256 TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE INDEX audit_subject ON audit (subject_id, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def _legacy_log(path: Path, n: int = 4) -> list[str]:
    """An audit table as the previous release wrote it (unkeyed SHA-256 chain)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(_LEGACY_SCHEMA)
    prev, hashes = _GENESIS, []
    for seq in range(1, n + 1):
        row: dict[str, object] = {"seq": seq, "at_ns": T0 + seq, "key_id": "k1", "role": "reader",
                                  "action": "GET /v1/subjects/{subject_id}",
                                  "subject_id": f"s{seq}", "outcome": 200, "detail": ""}
        digest = _legacy_digest(row, prev)
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (*row.values(), prev, digest))
        prev = digest
        hashes.append(digest)
    db.commit()
    db.close()
    return hashes


def test_a_legacy_log_is_migrated_when_its_key_is_first_made(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    path = settings.resolved_auth_path()
    hashes = _legacy_log(path)
    runner = CliRunner()
    verify = ["audit", "verify", "--data-dir", str(tmp_path)]
    old = runner.invoke(cli, verify)  # before the upgrade: no key yet
    assert old.exit_code == 1 and "unkeyed" in old.output and "audit migrate" in old.output
    with serve(settings) as url, admin_client(url) as admin:  # first start: key made, migrated
        check = admin.get("/v1/admin/audit/verify").json()
        assert check["ok"] and check["keyed_from_seq"] == 5, check
        entries = admin.get("/v1/admin/audit").json()
    assert [e["sha256"] for e in entries[:4]] == hashes  # old entries are kept as they were
    assert not entries[3]["keyed"] and entries[4]["keyed"]
    assert entries[4]["action"] == "audit chain keyed" and hashes[-1] in entries[4]["detail"]
    assert entries[4]["prev_sha256"] == hashes[-1]  # the first keyed entry seals the old ones
    assert runner.invoke(cli, verify).exit_code == 0
    # rewriting the old part (delete one, recompute the unkeyed chain) breaks the seal
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE seq = 2")
    prev = _GENESIS
    for seq in (1, 3, 4):
        row = dict(zip(("seq", "at_ns", "key_id", "role", "action", "subject_id", "outcome",
                        "detail"), db.execute("SELECT seq, at_ns, key_id, role, action, "
                                              "subject_id, outcome, detail FROM audit WHERE "
                                              "seq = ?", (seq,)).fetchone(), strict=True))
        row["seq"] = seq if seq == 1 else seq - 1
        digest = _legacy_digest(row, prev)
        db.execute("UPDATE audit SET seq = ?, prev_sha256 = ?, sha256 = ? WHERE seq = ?",
                   (row["seq"], prev, digest, seq))
        prev = digest
    db.commit()
    db.close()
    bad = runner.invoke(cli, verify)
    assert bad.exit_code == 1 and "tampered" in bad.output, bad.output


def test_a_legacy_log_with_a_key_set_needs_the_migrate_command(tmp_path: Path) -> None:
    env = {"WEAREMO_AUDIT_KEY": "Qx" + os.urandom(24).hex(), "WEAREMO_ADMIN_KEY": ADMIN_KEY}
    settings = Settings(data_dir=tmp_path, admin_key=ADMIN_KEY,  # type: ignore[arg-type]
                        audit_key=env["WEAREMO_AUDIT_KEY"])  # type: ignore[arg-type]
    _legacy_log(settings.resolved_auth_path())
    with pytest.raises(AuditKeyError, match="wearemo audit migrate"):
        open_audit_log(settings)
    runner = CliRunner()
    migrate = ["audit", "migrate", "--data-dir", str(tmp_path)]
    done = runner.invoke(cli, migrate, env=env)
    assert done.exit_code == 0, done.output
    assert "4 entries" in done.output
    with open_audit_log(settings) as log:
        report = log.verify()
    assert report.ok and report.keyed_from_seq == 5
    assert runner.invoke(cli, ["audit", "verify", "--data-dir", str(tmp_path)],
                         env=env).exit_code == 0
    assert not (tmp_path / AUDIT_KEY_FILE).exists()  # the setting is used, no file is made


def test_a_broken_legacy_log_is_not_sealed_silently(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    path = settings.resolved_auth_path()
    _legacy_log(path)
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET subject_id = 'someone-else' WHERE seq = 3")
    db.commit()
    db.close()
    with pytest.raises(AuditKeyError, match="entry 3"):
        open_audit_log(settings)
    assert not (tmp_path / AUDIT_KEY_FILE).exists()
    runner = CliRunner()
    migrate = ["audit", "migrate", "--data-dir", str(tmp_path)]
    refused = runner.invoke(cli, migrate)
    assert refused.exit_code == 2 and "entry 3" in refused.output
    forced = runner.invoke(cli, [*migrate, "--accept-broken"])
    assert forced.exit_code == 0, forced.output
    with open_audit_log(settings) as log:
        report = log.verify()
        anchor = log.entries(after_seq=4)[0]
    # the old break stays visible: verify still fails there, and the seal records it
    assert not report.ok and report.broken_seq == 3
    assert "entry 3" in anchor.detail
