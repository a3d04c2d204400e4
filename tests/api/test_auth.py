"""API keys, scopes, grants, cohorts, the admin API and the audit log over real loopback HTTP."""

from __future__ import annotations

import logging
import sqlite3
import stat
import time
from pathlib import Path

import httpx
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, create_key, serve, settings_for
from fastapi import routing
from pydantic import ValidationError
from simdata import T0, S
from typer.testing import CliRunner

from wearemo.api import create_app
from wearemo.api.audit import open_audit_log
from wearemo.api.auth import load_admin_key
from wearemo.api.deps import authenticate
from wearemo.cli import app as cli
from wearemo.settings import Settings

pytestmark = pytest.mark.e2e

#: Routes anyone may call: probes and the API description (``/metrics`` joins them later).
PUBLIC = {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
          "/metrics", "/docs-assets"}  # the docs pages' own scripts and styles


def eda(batch_id: str, subject: str, start_s: float) -> dict[str, object]:
    return {"batch_id": batch_id, "subject_id": subject, "device_id": "d1", "channel": "eda",
            "start_ns": T0 + round(start_s * S), "rate_hz": 4.0, "values": [3.0] * 8}


def _declared_scopes(dependant: object, inherited: tuple[str, ...] = ()) -> set[str]:
    """Scopes with which ``authenticate`` is reached anywhere in a route's dependency tree."""
    scopes = inherited + tuple(getattr(dependant, "own_oauth_scopes", None) or ())
    found = set(scopes) if getattr(dependant, "call", None) is authenticate else set()
    for sub in getattr(dependant, "dependencies", []):
        found |= _declared_scopes(sub, scopes)
    return found


def test_every_route_declares_a_scope(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))
    # FastAPI >= 0.16x mounts included routers lazily: walk the effective routes (with their
    # prefixes and router-level dependencies); older versions list them in app.routes.
    walk = getattr(routing, "iter_route_contexts", lambda routes: routes)
    undeclared, declared = [], 0
    for route in walk(app.routes):
        path = getattr(route, "path", None) or repr(route)
        if path in PUBLIC:
            continue
        dependant = getattr(route, "dependant", None)
        if dependant is not None and _declared_scopes(dependant):
            declared += 1
            continue
        undeclared.append(path)
    assert undeclared == [], f"routes without a declared scope (or not in PUBLIC): {undeclared}"
    assert declared >= 19  # ingest, 6 subject routes, 12 admin routes
    ops = app.openapi()
    assert set(ops["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    ingest = ops["paths"]["/v1/ingest"]["post"]
    assert {"bearer": ["ingest:write"]} in ingest["security"]
    assert {"401", "403"} <= set(ingest["responses"])
    put = ops["paths"]["/v1/subjects/{subject_id}/baseline"]["put"]["security"]
    assert {"bearer": ["baseline:write"]} in put
    assert "security" not in ops["paths"]["/healthz"]["get"]


def test_missing_bad_and_wrong_scope(anon: httpx.Client, client: httpx.Client) -> None:
    r = anon.get("/v1/subjects")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "missing API key" in r.json()["detail"]
    for bad in ("nonsense", "wmo_0123456789ab_" + "A" * 43, ADMIN_KEY + "x"):
        r = anon.get("/v1/subjects", headers=bearer(bad))
        assert r.status_code == 401 and "invalid API key" in r.json()["detail"]
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert anon.get("/healthz").status_code == 200 and anon.get("/readyz").status_code == 200
    assert anon.get("/openapi.json").status_code == 200

    reader = create_key(client, "reader", cohorts=["scope-c"])
    r = anon.post("/v1/ingest", json={"batches": [eda("x0", "scope1", 0)]},
                  headers=bearer(reader))
    assert r.status_code == 403 and "lacks the scope 'ingest:write'" in r.json()["detail"]
    assert client.get("/v1/subjects/scope1").status_code == 404  # nothing stored
    device = create_key(client, "device", subjects=["scope1"])
    r = anon.get("/v1/admin/keys", headers=bearer(device))
    assert r.status_code == 403 and "'admin'" in r.json()["detail"]
    # the same key in X-API-Key works too
    r = anon.post("/v1/ingest", json={"batches": [eda("x0", "scope1", 0)]},
                  headers={"X-API-Key": device})
    assert r.status_code == 200, r.text


def test_device_key_writes_and_reads_only_its_subjects(anon: httpx.Client,
                                                       client: httpx.Client) -> None:
    dev = create_key(client, "device", subjects=["mine1", "mine2"])
    h = bearer(dev)
    assert anon.post("/v1/ingest", json={"batches": [eda("a0", "mine1", 0)]},
                     headers=h).status_code == 200
    assert client.post("/v1/ingest", json={"batches": [eda("o0", "other1", 0)]}).status_code == 200
    before = client.get("/v1/subjects/other1").json()

    # one foreign subject refuses the whole request: nothing of it is stored
    req = [eda("a1", "mine1", 2), eda("a2", "mine2", 0), eda("o1", "other1", 2)]
    r = anon.post("/v1/ingest", json={"batches": req}, headers=h)
    assert r.status_code == 403
    detail = r.json()["detail"]
    assert detail.startswith("batches.2.subject_id:") and "'other1'" in detail
    assert "nothing of this request was stored" in detail
    assert client.get("/v1/subjects/mine1").json()["batches"] == 1
    assert client.get("/v1/subjects/mine2").status_code == 404
    assert client.get("/v1/subjects/other1").json() == before

    # reads: its own subjects; a foreign one answers exactly like an unknown one
    assert anon.get("/v1/subjects", headers=h).json() == ["mine1"]
    assert anon.get("/v1/subjects/mine1", headers=h).status_code == 200
    for path in ("", "/state", "/states", "/baseline"):
        foreign = anon.get(f"/v1/subjects/other1{path}", headers=h)
        unknown = anon.get(f"/v1/subjects/nobody{path}", headers=h)
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json() == {"detail": "unknown subject 'other1'"}
        assert unknown.json() == {"detail": "unknown subject 'nobody'"}
    r = anon.put("/v1/subjects/other1/baseline", json={"start": 0, "end": 1}, headers=h)
    assert r.status_code == 404


def test_reader_cohorts_and_revocation(anon: httpx.Client, client: httpx.Client) -> None:
    for i, sid in enumerate(("coh1", "coh2", "coh3")):
        assert client.post("/v1/ingest", json={"batches": [eda(f"c{i}", sid, 0)]}
                           ).status_code == 200
    r = client.post("/v1/admin/cohorts", json={"name": "trial-a", "subjects": ["coh1"]})
    assert r.status_code == 201 and r.json()["subjects"] == ["coh1"]
    assert client.post("/v1/admin/cohorts", json={"name": "trial-a"}).status_code == 422
    reader = create_key(client, "reader", name="clinic")
    h = bearer(reader)
    key_id = reader.split("_")[1]
    assert anon.get("/v1/subjects", headers=h).json() == []  # no cohort granted yet
    r = client.put(f"/v1/admin/cohorts/trial-a/grants/{key_id}")
    assert r.status_code == 200 and r.json()["keys"] == [key_id]
    assert anon.get("/v1/subjects", headers=h).json() == ["coh1"]
    client.post("/v1/admin/cohorts/trial-a/subjects", json={"subjects": ["coh2"]})
    assert anon.get("/v1/subjects", headers=h).json() == ["coh1", "coh2"]
    assert anon.get("/v1/subjects/coh2/states", headers=h).status_code == 200
    assert anon.get("/v1/subjects/coh3", headers=h).status_code == 404
    assert client.delete("/v1/admin/cohorts/trial-a/subjects/coh1").status_code == 200
    assert anon.get("/v1/subjects/coh1", headers=h).status_code == 404
    assert anon.put("/v1/subjects/coh2/baseline", json={"start": 0, "end": 1},
                    headers=h).status_code == 403  # a reader cannot calibrate

    # grants go to reader keys only; unknown cohorts and keys are 404
    dev_id = create_key(client, "device").split("_")[1]
    r = client.put(f"/v1/admin/cohorts/trial-a/grants/{dev_id}")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "key_id"
    assert client.put(f"/v1/admin/cohorts/nope/grants/{key_id}").status_code == 404
    assert client.put("/v1/admin/cohorts/trial-a/grants/0123456789ab").status_code == 404

    keys = client.get("/v1/admin/keys").json()
    mine = next(k for k in keys if k["key_id"] == key_id)
    assert mine["role"] == "reader" and mine["cohorts"] == ["trial-a"] and mine["active"]
    assert all("secret" not in k for k in keys)
    r = client.delete(f"/v1/admin/keys/{key_id}")
    assert r.status_code == 200 and r.json()["revoked_ns"] and not r.json()["active"]
    assert anon.get("/v1/subjects", headers=h).status_code == 401
    assert client.delete("/v1/admin/keys/0123456789ab").status_code == 404


def test_admin_api_errors_name_the_field(client: httpx.Client) -> None:
    r = client.post("/v1/admin/keys", json={"role": "reader", "subjects": ["s1"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "subjects"
    assert "device keys" in r.json()["detail"][0]["msg"]
    r = client.post("/v1/admin/keys", json={"role": "root"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "role"
    r = client.post("/v1/admin/keys", json={"role": "device", "subjects": ["bad id"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "subjects.0"
    r = client.post("/v1/admin/keys", json={"role": "device", "expires_in_s": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "expires_in_s"
    r = client.post("/v1/admin/subjects", json={"count": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "count"
    assert client.post("/v1/admin/subjects", json={"cohort": "nope"}).status_code == 404


def test_expiry_and_minted_subjects(anon: httpx.Client, client: httpx.Client) -> None:
    r = client.post("/v1/admin/cohorts", json={"name": "minted"})
    minted = client.post("/v1/admin/subjects", json={"count": 3, "cohort": "minted"}).json()
    ids = minted["subjects"]
    assert len(set(ids)) == 3 and all(len(i) == 18 and i.startswith("p-") for i in ids)
    r = client.get("/v1/admin/cohorts").json()
    assert sorted(next(c for c in r if c["name"] == "minted")["subjects"]) == sorted(ids)
    dev = create_key(client, "device", subjects=ids[:1], expires_in_s=1.0)
    h = bearer(dev)
    assert anon.post("/v1/ingest", json={"batches": [eda("m0", ids[0], 0)]},
                     headers=h).status_code == 200
    time.sleep(1.1)
    r = anon.post("/v1/ingest", json={"batches": [eda("m1", ids[0], 2)]}, headers=h)
    assert r.status_code == 401
    assert client.get(f"/v1/subjects/{ids[0]}").json()["batches"] == 1


def test_audit_log_records_and_detects_tampering(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with serve(settings) as url, admin_client(url) as admin, httpx.Client(base_url=url) as anon:
        dev = create_key(admin, "device", subjects=["aud1"])
        dev_id = dev.split("_")[1]
        h = bearer(dev)
        assert anon.post("/v1/ingest", json={"batches": [eda("a0", "aud1", 0)]},
                         headers=h).status_code == 200
        assert anon.get("/v1/subjects/aud1/states", headers=h).status_code == 200
        assert anon.get("/v1/subjects/aud2", headers=h).status_code == 404
        assert anon.get("/v1/subjects/aud1").status_code == 401
        assert anon.get("/healthz").status_code == 200  # public: not audited
        entries = admin.get("/v1/admin/audit", params={"subject_id": "aud1"}).json()
        got = [(e["key_id"], e["role"], e["action"], e["outcome"]) for e in entries]
        assert got == [
            (dev_id, "device", "POST /v1/ingest", 200),
            (dev_id, "device", "GET /v1/subjects/{subject_id}/states", 200),
            (None, None, "GET /v1/subjects/{subject_id}", 401),
        ]
        everything = admin.get("/v1/admin/audit").json()
        assert everything[0]["action"] == "POST /v1/admin/keys"
        assert everything[0]["detail"] == f"created key {dev_id} (device)"
        assert everything[0]["key_id"] == "bootstrap-admin"
        assert any(e["subject_id"] == "aud2" and e["outcome"] == 404 for e in everything)
        assert not any("healthz" in e["action"] for e in everything)
        check = admin.get("/v1/admin/audit/verify").json()
        # the verify call itself is logged only once answered
        assert check["ok"] and check["entries"] == len(everything) + 1

    path = settings.resolved_auth_path()
    verify = ["audit", "verify", "--data-dir", str(tmp_path)]
    ok = CliRunner().invoke(cli, verify)
    assert ok.exit_code == 0 and "audit log intact" in ok.output
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET outcome = 200 WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit WHERE seq = 2")
    # someone who drops the guard and rewrites history is caught by the hash chain
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET subject_id = 'someone-else' WHERE seq = 3")
    db.commit()
    db.close()
    with open_audit_log(settings) as log:  # verifying the keyed chain needs the audit key
        report = log.verify()
    assert not report.ok and report.broken_seq == 3 and "changed" in (report.reason or "")
    assert report.entries == 2
    bad = CliRunner().invoke(cli, verify)
    assert bad.exit_code == 1 and "tampered" in bad.output and "entry 3" in bad.output


def test_cli_keys_work_offline_and_against_a_running_api(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--role", "device", "--subject", "cli1",
                               "--expires-in", "1d", "--data-dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("wmo_")
    bad = runner.invoke(cli, ["keys", "create", "--role", "reader", "--subject", "x",
                              "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "device keys" in bad.output
    with serve(settings_for(tmp_path)) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/ingest", json={"batches": [eda("k0", "cli1", 0)]}, headers=bearer(secret))
        assert r.status_code == 200, r.text
        key_id = secret.split("_")[1]
        assert runner.invoke(cli, ["keys", "revoke", key_id, "--data-dir", str(tmp_path)]
                             ).exit_code == 0
        r = c.post("/v1/ingest", json={"batches": [eda("k1", "cli1", 2)]}, headers=bearer(secret))
        assert r.status_code == 401  # the revocation applies to the running API at once
        audit = c.get("/v1/admin/audit", headers=bearer(ADMIN_KEY)).json()
    assert [e["action"] for e in audit if e["key_id"] == "cli"] == [
        "cli keys create", "cli keys create", "cli keys revoke"]


def test_weak_admin_keys_are_refused_and_one_is_generated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for weak in ("changeme", "admin", "x" * 40, "admin-" + "k3y9" * 8,
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "0123456789abcdef" * 2):
        with pytest.raises(ValidationError, match="WEAREMO_ADMIN_KEY is refused"):
            Settings(data_dir=tmp_path, admin_key=weak)  # type: ignore[arg-type]
    settings = Settings(data_dir=tmp_path / "d")
    with caplog.at_level(logging.INFO, logger="wearemo.api.auth"):
        key = load_admin_key(settings)
    path = tmp_path / "d" / "admin.key"
    assert path.read_text().strip() == key and len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in caplog.text and key not in caplog.text
    assert load_admin_key(settings) == key  # kept across restarts
    with serve(settings) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v1/subjects", headers=bearer(key)).json() == []
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by other users"):
        load_admin_key(settings)
    path.chmod(0o600)
    path.write_text("changeme\n")
    with pytest.raises(ValueError, match="refused"):
        load_admin_key(settings)
