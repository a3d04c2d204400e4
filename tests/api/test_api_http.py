"""The HTTP API over real loopback HTTP (uvicorn + httpx): ingest, reads, bad input, restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from api_support import HR_BPM, MODEL, admin_client, body, serve, settings_for, sim_batches
from simdata import T0, S

from wearemo.samples import SampleBatch

pytestmark = pytest.mark.e2e


def post(client: httpx.Client, batches: list[SampleBatch]) -> httpx.Response:
    return client.post("/v1/ingest", json=body(batches))


def tiny(batch_id: str, subject: str, start_s: float, **kw: object) -> dict[str, object]:
    raw: dict[str, object] = {"batch_id": batch_id, "subject_id": subject, "device_id": "d1",
                              "channel": "eda", "start_ns": T0 + round(start_s * S),
                              "rate_hz": 4.0, "values": [3.0] * 8}
    raw.update(kw)
    return raw


def test_sim_ingest_produces_windows_and_states(client: httpx.Client) -> None:
    batches = sim_batches("sim1", 360)
    totals = {"stored": 0, "duplicates": 0, "windows": 0, "states": 0}
    for i in range(0, len(batches), 12):  # one request per minute of data
        r = post(client, batches[i:i + 12])
        assert r.status_code == 200, r.text
        got = r.json()
        assert [x["status"] for x in got["results"]] == ["stored"] * 12
        for k in totals:
            totals[k] += got[k]
    # 6 min of data: windows end every 5 s from 60 s; the one ending at 355 s waits for the
    # beat and EDA trackers, which commit 10-s blocks once 5 s past a block are in (to 350 s).
    assert totals == {"stored": 72, "duplicates": 0, "windows": 59, "states": 59}

    assert "sim1" in client.get("/v1/subjects").json()
    summary = client.get("/v1/subjects/sim1").json()
    assert summary["samples"] == {"ppg": 36 * 640, "eda": 36 * 40}
    assert summary["batches"] == 72 and summary["windows"] == 59
    assert sum(summary["states"].values()) == 59
    assert summary["first_sample_ns"] == T0

    history = client.get("/v1/subjects/sim1/states", params={"limit": 100_000}).json()
    assert [s["window_end_ns"] for s in history] == [T0 + e * S for e in range(60, 355, 5)]
    latest = client.get("/v1/subjects/sim1/state").json()
    assert latest == history[-1] == summary["last_state"]
    assert latest["state"] in ("stress", "non_stress") and 0 <= latest["p_stress"] <= 1
    assert all(s["reason"] for s in history if s["state"] == "withheld")
    # the features behind the states: simulated heart rate recovered (ground truth 72 bpm)
    assert set(latest["channels_used"]) == {"eda", "ppg"}

    # time range as unix seconds and as ISO-8601, [start, end) on the window end
    t = lambda e: (T0 + e * S) / S  # noqa: E731
    r = client.get("/v1/subjects/sim1/states", params={"start": t(100), "end": t(120)})
    assert [s["window_end_ns"] for s in r.json()] == [T0 + e * S for e in (100, 105, 110, 115)]
    iso = datetime.fromtimestamp(t(340), tz=UTC).isoformat()
    r = client.get("/v1/subjects/sim1/states", params={"start": iso})
    assert [s["window_end_ns"] for s in r.json()] == [T0 + e * S for e in (340, 345, 350)]
    # pagination
    r = client.get("/v1/subjects/sim1/states", params={"limit": 7})
    assert len(r.json()) == 7
    nxt = client.get("/v1/subjects/sim1/states", params={"start": r.headers["X-Next-Start"]})
    assert nxt.json()[0]["window_end_ns"] == T0 + 95 * S


def test_feature_values_match_ground_truth(tmp_path: Path) -> None:
    # the stored windows behind the API carry the simulated heart rate
    from wearemo.store import SQLiteStore

    settings = settings_for(tmp_path)
    with serve(settings) as url, admin_client(url) as c:
        assert post(c, sim_batches("gt", 120)).status_code == 200
    with SQLiteStore(settings.resolved_sqlite_path()) as store:
        hrs = [w.features["hr_mean_bpm"] for w in store.windows("gt")]
    assert len(hrs) == 11 and all(abs(h - HR_BPM) < 2.0 for h in hrs), hrs  # ends 60..110 s


def test_retry_is_idempotent(client: httpx.Client) -> None:
    batches = sim_batches("retry1", 80)
    first = post(client, batches)
    again = post(client, batches)
    assert first.status_code == again.status_code == 200
    assert first.json()["stored"] == 16 and first.json()["windows"] == 3  # ends 60..70 s
    assert again.json() == {
        "stored": 0, "duplicates": 16, "windows": 0, "states": 0,
        "results": [{"batch_id": b.batch_id, "status": "duplicate"} for b in batches]}
    summary = client.get("/v1/subjects/retry1").json()
    assert summary["samples"] == {"ppg": 8 * 640, "eda": 8 * 40} and summary["windows"] == 3


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_values_are_422_naming_the_field(client: httpx.Client, literal: str) -> None:
    values = ", ".join(["1.5"] * 17 + [literal] + ["1.5"] * 3)
    good = json.dumps(tiny("ok0", "nan1", 0.0))
    bad = json.dumps(tiny("nan0", "nan1", 10.0, values=[0.0])).replace("[0.0]", f"[{values}]")
    r = client.post("/v1/ingest", content=f'{{"batches": [{good}, {bad}]}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [issue] = r.json()["detail"]
    assert issue["field"] == "batches.1.values.17"
    assert issue["msg"] == "values[17]: not a finite number (NaN or infinity)"
    assert client.get("/v1/subjects/nan1").status_code == 404  # nothing of the request stored


def test_bad_unit_and_bad_timestamps_are_422(client: httpx.Client) -> None:
    r = client.post("/v1/ingest", json={"batches": [tiny("u0", "unit1", 0, unit="mS")]})
    assert r.status_code == 422
    [issue] = r.json()["detail"]
    assert issue["field"] == "batches.0.unit"
    assert issue["msg"] == "unit: channel 'eda' takes 'uS', got 'mS'"

    ts = [T0, T0 + S, T0 + S, T0 + 2 * S]
    dup = tiny("t0", "ts1", 0, rate_hz=None, timestamps_ns=ts, values=[1.0] * 4)
    del dup["rate_hz"]
    [issue] = client.post("/v1/ingest", json={"batches": [dup]}).json()["detail"]
    assert issue["field"] == "batches.0.timestamps_ns.2"
    assert "duplicate timestamp" in issue["msg"]
    ooo = dict(dup, timestamps_ns=[T0, T0 + 2 * S, T0 + S, T0 + 3 * S])
    [issue] = client.post("/v1/ingest", json={"batches": [ooo]}).json()["detail"]
    assert issue["field"] == "batches.0.timestamps_ns.2" and "out-of-order" in issue["msg"]

    r = client.post("/v1/ingest", json={"batches": [tiny("s0", "ts1", 0, values=[1.0, "x"])]})
    assert r.json()["detail"] == [{  # one clear issue, not one per branch of the values union
        "type": "float_type", "loc": ["body", "batches", 0, "values", 1],
        "field": "batches.0.values.1",
        "msg": "values[1]: Input should be a valid number"}]  # strict: "1.5" is refused too
    r = client.post("/v1/ingest", json={"batches": [tiny("x", "bad id!", 0)]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "batches.0.subject_id"
    r = client.post("/v1/ingest", json={"batches": []})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "batches"
    r = client.post("/v1/ingest", content="{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "body"
    assert r.json()["detail"][0]["msg"].startswith("body: invalid JSON at character 1")
    assert client.get("/v1/subjects/ts1").status_code == 404


def test_out_of_order_batch_is_409_and_earlier_data_intact(client: httpx.Client) -> None:
    r = client.post("/v1/ingest", json={"batches": [tiny(f"o{i}", "ooo1", 2 * i)
                                                    for i in range(3)]})
    assert r.status_code == 200 and r.json()["stored"] == 3
    before = client.get("/v1/subjects/ooo1").json()
    req = [tiny("o3", "ooo1", 6), tiny("o1", "ooo1", 2), tiny("late", "ooo1", 3),
           tiny("o9", "ooo1", 20)]
    r = client.post("/v1/ingest", json={"batches": req})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert detail["field"] == "batches.2.start_ns" and detail["batch_id"] == "late"
    assert detail["stored_before"] == ["o3"] and detail["duplicates_before"] == ["o1"]
    last = T0 + round(7.75 * S)
    assert f"start_ns {T0 + 3 * S}" in detail["message"] and "'eda'" in detail["message"]
    assert str(last) in detail["message"]
    after = client.get("/v1/subjects/ooo1").json()
    assert after["samples"]["eda"] == before["samples"]["eda"] + 8  # only o3 added
    assert after["batches"] == 4
    # the client drops the bad batch and retries: stored ones are duplicates, the rest goes in
    r = client.post("/v1/ingest", json={"batches": [req[0], req[1], req[3]]})
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["duplicate", "duplicate", "stored"]
    assert client.get("/v1/subjects/ooo1").json()["samples"]["eda"] == 5 * 8


def test_batch_id_reuse_with_other_values_is_409(client: httpx.Client) -> None:
    assert client.post("/v1/ingest", json={"batches": [tiny("r0", "reuse1", 0)]}).status_code == 200
    r = client.post("/v1/ingest", json={"batches": [tiny("r0", "reuse1", 0, values=[9.0] * 8)]})
    assert r.status_code == 409
    assert r.json()["detail"]["field"] == "batches.0.batch_id"
    assert "different content" in r.json()["detail"]["message"]


def test_unknown_and_invalid_subjects(client: httpx.Client) -> None:
    for path in ("", "/state", "/states"):
        r = client.get(f"/v1/subjects/nobody{path}")
        assert r.status_code == 404 and r.json() == {"detail": "unknown subject 'nobody'"}
        r = client.get(f"/v1/subjects/bad%20id{path}")
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "subject_id"
    # known, but no full window yet
    assert client.post("/v1/ingest", json={"batches": [tiny("n0", "young1", 0)]}).status_code == 200
    r = client.get("/v1/subjects/young1/state")
    assert r.status_code == 404 and "has no state yet" in r.json()["detail"]
    assert client.get("/v1/subjects/young1/states").json() == []


def test_bad_time_ranges_are_422(client: httpx.Client) -> None:
    assert client.post("/v1/ingest", json={"batches": [tiny("q0", "q1", 0)]}).status_code == 200
    cases = [({"start": "20", "end": "10"}, "start"), ({"start": "yesterday"}, "start"),
             ({"end": "nan"}, "end"), ({"limit": "0"}, "limit")]
    for params, field in cases:
        r = client.get("/v1/subjects/q1/states", params=params)
        assert r.status_code == 422, params
        assert r.json()["detail"][0]["field"] == field


def test_oversize_is_413(client: httpx.Client) -> None:
    big = {"batches": [tiny("big", "big1", 0, values=[1.25] * 99_000)] * 16}  # ~9.5 MB
    payload = json.dumps(big).encode()
    assert len(payload) > 8 * 1024 * 1024
    r = client.post("/v1/ingest", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "too large" in r.json()["detail"] and str(8 * 1024 * 1024) in r.json()["detail"]

    def chunks():  # no Content-Length: counted while read
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    r = client.post("/v1/ingest", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert client.get("/v1/subjects/big1").status_code == 404
    assert client.get("/healthz").status_code == 200  # the server is fine


def test_too_many_batches_is_422(client: httpx.Client) -> None:
    r = client.post("/v1/ingest", json={"batches": [tiny(f"m{i}", "many1", i * 2)
                                                    for i in range(201)]})
    assert r.status_code == 422
    [issue] = r.json()["detail"]
    assert issue["field"] == "batches" and "at most 200" in issue["msg"]
    assert client.get("/v1/subjects/many1").status_code == 404


def test_health_ready_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["store"] == "sqlite" and ready["model_version"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/ingest", "/v1/subjects", "/v1/subjects/{subject_id}",
            "/v1/subjects/{subject_id}/state", "/v1/subjects/{subject_id}/states",
            "/healthz", "/readyz"} <= set(paths)
    assert "409" in paths["/v1/ingest"]["post"]["responses"]


def test_restart_keeps_states_and_idempotency(tmp_path: Path) -> None:
    batches = sim_batches("rs1", 180)
    settings = settings_for(tmp_path)
    with serve(settings) as url, admin_client(url) as c:
        assert post(c, batches[:20]).json()["stored"] == 20
        states_before = c.get("/v1/subjects/rs1/states").json()
        assert len(states_before) == 7  # ends 60..90 s (trackers through 90 s of 100 s)
    with serve(settings) as url, admin_client(url) as c:
        assert c.get("/v1/subjects").json() == ["rs1"]
        assert c.get("/v1/subjects/rs1/states").json() == states_before
        retry = post(c, batches[:20]).json()
        assert retry["stored"] == 0 and retry["duplicates"] == 20
        overlap = batches[18].model_copy(update={"batch_id": "again"})
        assert post(c, [overlap]).status_code == 409  # ordering state survived too
        rest = post(c, batches[20:]).json()
        assert rest["stored"] == len(batches) - 20
        ends = [s["window_end_ns"] for s in c.get("/v1/subjects/rs1/states").json()]
        assert ends == [T0 + e * S for e in range(60, 175, 5)]  # no gap, no duplicate


def test_uvicorn_factory_cli(tmp_path: Path) -> None:
    env = {**os.environ, "WEAREMO_DATA_DIR": str(tmp_path / "d"), "WEAREMO_MODEL": MODEL}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "wearemo.api.app:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200
        assert (tmp_path / "d" / "wearemo.sqlite3").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
