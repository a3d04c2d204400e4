"""Ingest forms over real loopback HTTP and WebSocket: msgpack, WebSocket, rate limits, lag.

Ground truth: the JSON ingest path. The same batches sent as msgpack (raw little-endian arrays)
must be stored bit-identically and give the same states; every bad input gets the JSON path's
422 naming the field, and a refused request leaves nothing stored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, body, serve, settings_for, sim_batches
from simdata import T0, S
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from wearemo.samples import SampleBatch
from wearemo.store import SQLiteStore

pytestmark = pytest.mark.e2e

MP = {"content-type": "application/msgpack"}


def packed(batch: SampleBatch, dtype: str = "float64", *, binary_times: bool = True
           ) -> dict[str, Any]:
    """A batch in msgpack form with raw arrays (what a watch would send)."""
    raw = batch.model_dump(mode="json", exclude_none=True)
    raw["values"] = np.asarray(batch.values, dtype={"float32": "<f4", "float64": "<f8"}[dtype]
                               ).tobytes()
    raw["values_dtype"] = dtype
    if batch.timestamps_ns is not None and binary_times:
        raw["timestamps_ns"] = np.asarray(batch.timestamps_ns, "<i8").tobytes()
    return raw


def mp_body(batches: list[dict[str, Any]]) -> bytes:
    return msgpack.packb({"batches": batches})


def eda(batch_id: str, subject: str, start_s: float, values: list[float] | None = None
        ) -> SampleBatch:
    return SampleBatch(batch_id=batch_id, subject_id=subject, device_id="d1", channel="eda",
                       start_ns=T0 + round(start_s * S), rate_hz=4.0,
                       values=values or [3.0] * 8)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    settings = settings_for(tmp_path_factory.mktemp("forms"), max_batches_per_request=50,
                            max_request_bytes=512 * 1024)
    with serve(settings) as url:
        yield url, settings


@pytest.fixture
def client(server: tuple[str, Any]) -> Any:
    with httpx.Client(base_url=server[0], timeout=60.0, headers=bearer(ADMIN_KEY)) as c:
        yield c


def test_msgpack_is_stored_like_json_and_retries_across_forms_are_duplicates(
    client: httpx.Client, server: tuple[str, Any]
) -> None:
    batches = sim_batches("mp1", 120)
    as_json = [b.model_copy(update={"subject_id": "js1"}) for b in batches]
    r = client.post("/v1/ingest", content=mp_body([packed(b) for b in batches]), headers=MP)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == len(batches) and r.json()["windows"] == 11
    assert client.post("/v1/ingest", json=body(as_json)).json()["windows"] == 11
    states = {sid: client.get(f"/v1/subjects/{sid}/states").json() for sid in ("mp1", "js1")}
    for s in states["js1"]:
        s["subject_id"] = "mp1"
    assert states["mp1"] == states["js1"] and len(states["mp1"]) == 11
    # the same batches re-sent as JSON are duplicates: float64 arrays carry the exact values
    again = client.post("/v1/ingest", json=body(batches[-4:])).json()
    assert again["duplicates"] == 4 and again["stored"] == 0

    # float32 values, binary timestamps, and acc triples (x, y, z per sample)
    ts = [T0 + k * 10**9 // 3 for k in range(6)]
    rr = SampleBatch(batch_id="rr0", subject_id="mp2", device_id="d1", channel="rr",
                     start_ns=ts[0], timestamps_ns=ts, values=[812.5, 800.25, 790.0, 805.5,
                                                                 811.0, 799.75])
    acc = SampleBatch(batch_id="acc0", subject_id="mp2", device_id="d1", channel="acc",
                      start_ns=T0, rate_hz=32.0,
                      values=[[0.1 * k, -0.5, 0.98] for k in range(32)])
    r = client.post("/v1/ingest", content=mp_body([packed(rr, "float32"),
                                                   packed(acc, "float32")]), headers=MP)
    assert r.status_code == 200, r.text
    with SQLiteStore(server[1].resolved_sqlite_path()) as store:
        [got_rr] = store.batches("mp2", channel="rr")
        [got_acc] = store.batches("mp2", channel="acc")
    assert got_rr.timestamps_ns == ts and got_rr.values == rr.values  # exact in float32
    np.testing.assert_array_equal(
        got_acc.values_array(), np.asarray(acc.values, "<f4").astype(np.float64))


def test_msgpack_errors_name_the_field_and_store_nothing(client: httpx.Client) -> None:
    good = packed(eda("ok0", "mpbad", 0))
    values = np.full(21, 1.5, "<f4")
    values[17] = np.nan
    nan = dict(packed(eda("nan0", "mpbad", 10)), values=values.tobytes(), values_dtype="float32")
    cases: list[tuple[bytes, str, str]] = [
        (mp_body([good, nan]), "batches.1.values.17",
         "values[17]: not a finite number (NaN or infinity)"),
        (mp_body([dict(good, values=b"\x00" * 10)]), "batches.0.values",
         "values: 10 bytes are not a whole number of samples (4 bytes each: 1 x float64)"
         .replace("4 bytes", "8 bytes")),
        (mp_body([{k: v for k, v in good.items() if k != "values_dtype"}]),
         "batches.0.values_dtype", "values_dtype: None is not one of ['float32', 'float64'] "
         "(required when values is a bin)"),
        (mp_body([dict(good, values_dtype="int8")]), "batches.0.values_dtype",
         "values_dtype: 'int8' is not one of ['float32', 'float64'] "
         "(required when values is a bin)"),
        (mp_body([dict(good, rate_hz=None, timestamps_ns=b"\x01" * 12)]),
         "batches.0.timestamps_ns", "timestamps_ns: 12 bytes are not a whole number of "
         "little-endian int64 values (8 bytes each)"),
        (mp_body([dict(good, unit="mS")]), "batches.0.unit",
         "unit: channel 'eda' takes 'uS', got 'mS'"),
        (mp_body([dict(good, start_ns=-1)]), "batches.0.start_ns",
         "start_ns: Input should be greater than or equal to 0"),
        (mp_body([]), "batches", "batches: List should have at least 1 item after "
         "validation, not 0"),
        (mp_body([good] * 51), "batches", "batches: 51 batches in one request; at most 50 "
         "are accepted (split the upload)"),
    ]
    for payload, field, msg in cases:
        r = client.post("/v1/ingest", content=payload, headers=MP)
        assert r.status_code == 422, (field, r.text)
        issue = r.json()["detail"][0]
        assert (issue["field"], issue["msg"]) == (field, msg)
    r = client.post("/v1/ingest", content=b"\xc1garbage", headers=MP)
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "body"
    assert r.json()["detail"][0]["msg"].startswith("body: invalid msgpack")
    r = client.post("/v1/ingest", content=b"batches", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/msgpack" in r.json()["detail"]
    assert client.get("/v1/subjects/mpbad").status_code == 404


def test_websocket_ingest_answers_every_message_and_survives_errors(
    client: httpx.Client, server: tuple[str, Any]
) -> None:
    ws_url = server[0].replace("http://", "ws://") + "/v1/ingest/ws"
    batches = sim_batches("ws1", 80)
    with connect(ws_url, additional_headers=bearer(ADMIN_KEY)) as ws:
        ws.send(json.dumps(body(batches[:8])))
        first = json.loads(ws.recv(timeout=60))
        assert first["seq"] == 1 and first["status"] == 200 and first["stored"] == 8
        assert [x["batch_id"] for x in first["results"]] == [b.batch_id for b in batches[:8]]
        ws.send(mp_body([packed(b) for b in batches[8:]]))  # binary: msgpack
        second = json.loads(ws.recv(timeout=60))
        assert (second["seq"], second["status"], second["stored"]) == (2, 200, 8)
        assert second["windows"] == 3  # ends 60..70 s, as over HTTP
        bad = body([eda("w0", "ws1", 200)])
        bad["batches"][0]["unit"] = "mS"
        ws.send(json.dumps(bad))
        third = json.loads(ws.recv(timeout=60))
        assert third["status"] == 422 and third["detail"][0]["field"] == "batches.0.unit"
        ws.send("{not json")
        assert json.loads(ws.recv(timeout=60))["detail"][0]["field"] == "body"
        for deep in ("[" * 100_000, b"\x91" * 100_000):  # JSON text, msgpack binary
            ws.send(deep)  # answered like any bad body; the connection stays open
            answer = json.loads(ws.recv(timeout=60))
            assert answer["status"] == 422, answer
            assert "nested too deeply" in answer["detail"][0]["msg"]
        ws.send(json.dumps(body(batches[:2])))  # a retry after a lost ack
        fifth = json.loads(ws.recv(timeout=60))
        assert fifth["status"] == 200 and fifth["duplicates"] == 2
        overlap = batches[1].model_copy(update={"batch_id": "ws-overlap"})
        ws.send(json.dumps(body([overlap])))
        sixth = json.loads(ws.recv(timeout=60))
        assert sixth["status"] == 409 and sixth["detail"]["batch_id"] == "ws-overlap"
        ws.send(b"\x00" * (512 * 1024 + 1))  # over max_request_bytes: protocol abuse
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    summary = client.get("/v1/subjects/ws1").json()
    assert summary["batches"] == 16 and summary["windows"] == 3


def test_rate_limits_answer_429_with_retry_after_and_store_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rate_limit_requests_per_s=1.0, rate_limit_request_burst=2,
                            rate_limit_samples_per_s=20.0, rate_limit_sample_burst=40)
    with serve(settings) as url, admin_client(url) as c:
        for i in range(2):  # the request burst
            r = c.post("/v1/ingest", json=body([eda(f"r{i}", "rl1", 2 * i, [3.0] * 4)]))
            assert r.status_code == 200, r.text
        r = c.post("/v1/ingest", json=body([eda("r2", "rl1", 4, [3.0] * 4)]))
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 1
        assert "rate limit" in r.json()["detail"]
        assert c.get("/v1/subjects/rl1").json()["batches"] == 2  # the refused one not stored
        time.sleep(1.05)
        assert c.post("/v1/ingest", json=body([eda("r2", "rl1", 4, [3.0] * 4)])).status_code == 200
        time.sleep(2.1)  # both buckets full again: 2 requests, 40 samples
        assert c.post("/v1/ingest", json=body([eda("s0", "rl1", 10, [3.0] * 30)])
                      ).status_code == 200
        # 10 samples left, 30 asked: (30 - 10) / 20 per s = 1 s to wait
        r = c.post("/v1/ingest", json=body([eda("s1", "rl1", 20, [3.0] * 30)]))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "30 samples in this one" in r.json()["detail"]
        assert c.get("/v1/subjects/rl1").json()["samples"]["eda"] == 4 + 4 + 4 + 30
        # over WebSocket: each refusal is answered; 20 in a row close the connection (1008)
        statuses: list[int] = []
        with connect(url.replace("http://", "ws://") + "/v1/ingest/ws",
                     additional_headers=bearer(ADMIN_KEY)) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                for i in range(40):
                    ws.send(json.dumps(body([eda(f"w{i}", "rl2", 2 * i, [3.0] * 4)])))
                    answer = json.loads(ws.recv(timeout=30))
                    statuses.append(answer["status"])
                    if answer["status"] == 429:
                        assert answer["retry_after_s"] >= 1
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert statuses[-20:] == [429] * 20 and len(statuses) <= 22
        stored = sum(s == 200 for s in statuses)
        summary = c.get("/v1/subjects/rl2")
        assert (summary.json()["batches"] if stored else summary.status_code) == (stored or 404)


def test_background_mode_answers_at_once_states_follow_and_backpressure_is_503(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, processing="background", max_pending_samples=20_000)
    batches = sim_batches("bg1", 360)  # 24,480 samples: more than the bound
    with serve(settings) as url, admin_client(url) as c:
        r = c.post("/v1/ingest", json=body(batches))
        assert r.status_code == 200 and r.json()["stored"] == 72
        assert r.json()["windows"] == r.json()["states"] == 0
        # processing 59 windows takes far longer than this next request
        r = c.post("/v1/ingest", json=body([eda("late0", "bg2", 0)]))
        assert r.status_code == 503, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "max_pending_samples" in r.json()["detail"]
        assert c.get("/v1/subjects/bg2").status_code == 404  # nothing of it stored
        lag = c.get("/v1/ingest/lag").json()
        assert lag["mode"] == "background" and lag["max_pending_samples"] == 20_000
        deadline = time.monotonic() + 120
        while c.get("/v1/ingest/lag").json()["pending_batches"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        lag = c.get("/v1/ingest/lag").json()
        assert lag["processed_batches"] == 72 and lag["processed_samples"] == 24_480
        assert lag["pending_samples"] == 0 and lag["processing_samples_per_s"] > 0
        # the states are those of inline mode: 59 windows ending 60..350 s
        ends = [s["window_end_ns"] for s in c.get("/v1/subjects/bg1/states").json()]
        assert ends == [T0 + e * S for e in range(60, 355, 5)]
        assert c.post("/v1/ingest", json=body([eda("late0", "bg2", 0)])).status_code == 200
