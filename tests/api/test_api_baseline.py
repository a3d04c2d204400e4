"""Personal baseline over real HTTP: calibration from a labelled rest of a real recording
(the shipped Stress-Predict S02 excerpt), warm-up progress, errors, and restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_support import admin_client, body, serve, settings_for, sim_batches
from simdata import T0, S

from wearemo.datasets import load_recording
from wearemo.model import load_model
from wearemo.model.baseline import RELATIVE_FEATURES
from wearemo.samples import SampleBatch
from wearemo.store import SQLiteStore

pytestmark = pytest.mark.e2e

EXCERPT = (Path(__file__).resolve().parents[2] / "firmware_bridge" / "virtual_wearable" / "data"
           / "stress-predict-S02-excerpt")
SID = "s02"


def send(client: httpx.Client, batches: list[SampleBatch]) -> None:
    for i in range(0, len(batches), 200):
        r = client.post("/v1/ingest", json=body(batches[i:i + 200]))
        assert r.status_code == 200, r.text


def test_calibration_on_the_first_rest_is_used_and_survives_a_restart(tmp_path: Path) -> None:
    rec = load_recording(EXCERPT, subject_id=SID)
    batches = list(rec.iter_batches())
    rest = rec.labels[0]
    assert (rest.task, rest.label) == ("rest", "non_stress")
    a, b, c = (next(i for i, x in enumerate(batches) if x.start_ns >= t)
               for t in (rec.start_ns + 120 * S, rest.end_ns + 60 * S, rest.end_ns + 260 * S))
    settings = settings_for(tmp_path)
    with serve(settings) as url, admin_client(url) as client:
        send(client, batches[:a])
        early = client.get(f"/v1/subjects/{SID}/baseline").json()
        assert early["source"] == "warm-up" and not early["ready"]
        assert early["medians"] == {} and early["start_ns"] is None
        warmup = early["warmup"]
        assert warmup["needed_s"] == 240.0 and warmup["min_windows"] == 12
        assert 0 < warmup["covered_s"] < 240 and warmup["windows"] > 0
        # the same progress the latest (withheld) state reports
        latest = client.get(f"/v1/subjects/{SID}/state").json()
        assert latest["reason"] == f"warm-up: personal baseline {warmup['covered_s']:.0f}/240 s"
        send(client, batches[a:b])
        warm = client.get(f"/v1/subjects/{SID}/baseline").json()
        assert warm["source"] == "warm-up" and warm["ready"] and warm["warmup"] is None
        calibrated_at = client.get(f"/v1/subjects/{SID}/state").json()["window_end_ns"]
        # the rest as labelled in labels.csv: unix seconds as a JSON number and as ISO-8601
        start_iso = datetime.fromtimestamp(rest.end_ns / S, tz=UTC).isoformat()
        put = client.put(f"/v1/subjects/{SID}/baseline",
                         json={"start": rest.start_ns / S, "end": start_iso})
        assert put.status_code == 200, put.text
        cal = put.json()
        assert cal["source"] == "calibration" and cal["ready"]
        assert (cal["start_ns"], cal["end_ns"]) == (rest.start_ns, rest.end_ns)
        assert cal["windows_used"] == 51 and cal["created_ns"] > 0
        assert client.get(f"/v1/subjects/{SID}/baseline").json() == cal
        send(client, batches[b:c])
    with serve(settings) as url, admin_client(url) as client:
        assert client.get(f"/v1/subjects/{SID}/baseline").json() == cal  # rebuilt from the store
        send(client, batches[c:])
        states = client.get(f"/v1/subjects/{SID}/states", params={"limit": 10_000}).json()
    with SQLiteStore(settings.resolved_sqlite_path()) as store:
        windows = store.windows(SID, limit=10_000)
    assert [s["window_end_ns"] for s in states] == [w.end_ns for w in windows]

    # ground truth, computed here: medians of the rest's windows that pass a fresh gate
    model = load_model("default")
    gate = model.for_subject(SID)
    period = [w for w in windows if rest.start_ns <= w.end_ns < rest.end_ns]
    rows = [f for f, _ in map(gate._usable, period) if f is not None]
    assert len(period) == 63 and len(rows) == cal["windows_used"]
    for name in RELATIVE_FEATURES:
        vals = np.array([r.get(name, np.nan) for r in rows], dtype=float)
        vals = vals[np.isfinite(vals)]
        assert (name in cal["medians"]) == bool(vals.size)
        if vals.size:
            assert cal["medians"][name] == pytest.approx(float(np.median(vals)), rel=1e-12)

    # every state after the calibration, across the restart, is the calibrated estimator's
    calibrated = model.for_subject(SID)
    calibrated.calibrate(period)
    after = [(w, s) for w, s in zip(windows, states, strict=True) if w.end_ns > calibrated_at]
    assert len(after) > 100
    for w, s in after:
        ref = calibrated.update(w)
        assert (s["state"], s["reason"], s["top_features"]) == (
            ref.state, ref.reason, ref.top_features)
        assert s["p_stress"] == pytest.approx(ref.p_stress, abs=1e-12)


def test_baseline_errors(client: httpx.Client) -> None:
    for method in ("GET", "PUT"):
        r = client.request(method, "/v1/subjects/nobody/baseline", json={"start": 0, "end": 1})
        assert r.status_code == 404 and r.json() == {"detail": "unknown subject 'nobody'"}
        r = client.request(method, "/v1/subjects/bad%20id/baseline", json={"start": 0, "end": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "subject_id"

    sid = "calfew"
    r = client.post("/v1/ingest", json=body(sim_batches(sid, 80)))  # windows end at 60..70 s
    assert r.status_code == 200 and r.json()["windows"] == 3
    url = f"/v1/subjects/{sid}/baseline"
    before = client.get(url).json()
    assert before["source"] == "warm-up" and not before["ready"]

    r = client.put(url, json={"start": T0 / S, "end": (T0 + 100 * S) / S})
    assert r.status_code == 422, r.text
    [issue] = r.json()["detail"]
    assert issue["field"] == "body"
    assert "has 3 usable windows; the baseline needs at least 12" in issue["msg"]
    assert "3 windows of this subject end in the period" in issue["msg"]

    t0 = str(T0 // S)
    cases = [
        ({"start": "yesterday", "end": t0}, "start", "neither unix seconds nor an ISO-8601"),
        ({"start": t0, "end": "nan"}, "end", "outside the representable time range"),
        ({"start": -5, "end": t0}, "start", "outside the representable time range"),
        ({"start": t0, "end": t0}, "end", "must be after start"),
        ({"start": "2023-11-14T22:13:30Z", "end": "2023-11-14T22:13:20Z"}, "end",
         "must be after start"),
        ({"start": True, "end": t0}, "start", "got a boolean"),
        ({"start": t0}, "end", "Field required"),
        ({"start": t0, "end": None}, "end", "valid string"),
        ('{"start": 1e999, "end": 1}', "start", "outside the representable time range"),
    ]
    for payload, field, why in cases:
        if isinstance(payload, str):  # JSON the client's encoder refuses to write (infinity)
            r = client.put(url, content=payload, headers={"content-type": "application/json"})
        else:
            r = client.put(url, json=payload)
        assert r.status_code == 422, payload
        [issue] = r.json()["detail"]
        assert issue["field"] == field and why in issue["msg"], (payload, issue)
    r = client.put(url, json={"start": t0, "end": t0, "extra": 1})
    assert r.status_code == 422 and "extra" in {i["field"] for i in r.json()["detail"]}
    r = client.put(url, content="{oops", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body"
    assert client.get(url).json() == before  # nothing changed


def test_baseline_in_openapi(client: httpx.Client) -> None:
    ops = client.get("/openapi.json").json()["paths"]["/v1/subjects/{subject_id}/baseline"]
    assert set(ops) == {"get", "put"}
    assert {"200", "404", "422"} <= set(ops["put"]["responses"])
    assert "404" in ops["get"]["responses"]
