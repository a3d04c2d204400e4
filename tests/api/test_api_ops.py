"""Operations over real HTTP: Prometheus /metrics moving with ingests, request ids, JSON access
logs, and /readyz following the store."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import httpx
import pytest
from api_support import admin_client, body, serve, settings_for, sim_batches
from fastapi import Depends, FastAPI, Request

from wearemo.api.observe import RequestObserver
from wearemo.logs import configure_logging

pytestmark = pytest.mark.e2e


def scrape(c: httpx.Client) -> dict[str, float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def test_metrics_follow_ingests(client: httpx.Client) -> None:
    batches = sim_batches("metrics1", 120)  # 12 ppg + 12 eda batches
    before = scrape(client)
    r = client.post("/v1/ingest", json=body(batches))
    assert r.status_code == 200
    got = r.json()
    client.post("/v1/ingest", json=body(batches[:4]))  # a retry: 4 duplicates
    early = batches[0].model_copy(update={"batch_id": "early"})
    assert client.post("/v1/ingest", json=body([early])).status_code == 409
    assert client.get("/v1/subjects/metrics1/state").status_code == 200
    after = scrape(client)

    def m(name: str) -> float:
        return delta(after, before, name)

    for ch, n in (("ppg", 640), ("eda", 40)):
        assert m(f'wearemo_ingest_batches_total{{channel="{ch}",outcome="stored"}}') == 12
        assert m(f'wearemo_ingest_samples_total{{channel="{ch}",outcome="stored"}}') == 12 * n
        assert m(f'wearemo_ingest_batches_total{{channel="{ch}",outcome="duplicate"}}') == 2
    assert m('wearemo_ingest_batches_total{channel="ppg",outcome="rejected"}') == 1
    assert m('wearemo_ingest_samples_total{channel="ppg",outcome="rejected"}') == 640
    assert m("wearemo_pipeline_batch_seconds_count") == 24
    assert m("wearemo_pipeline_batch_seconds_sum") > 0
    states = sum(m(f'wearemo_states_total{{label="{lab}"}}')
                 for lab in ("stress", "non_stress", "withheld"))
    assert states == got["states"] == 11  # windows ending 60..110 s, all warm-up
    assert m('wearemo_states_total{label="withheld"}') == 11
    ingest = 'wearemo_http_request_duration_seconds_count{method="POST",route="/v1/ingest"'
    assert m(ingest + ',status="200"}') == 2 and m(ingest + ',status="409"}') == 1
    state = ('wearemo_http_request_duration_seconds_count{method="GET",'
             'route="/v1/subjects/{subject_id}/state",status="200"}')
    assert m(state) == 1
    assert not any("metrics1" in name for name in after)  # route templates, never ids
    assert after["wearemo_webhook_outbox_depth"] == 0
    assert after["wearemo_alert_queue_depth"] == 0
    assert "wearemo_store_write_errors_total" not in after or all(
        v == 0 for k, v in after.items() if k.startswith("wearemo_store_write_errors"))


def test_request_ids(client: httpx.Client) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "app-42:retry.1"})
    assert r.headers["x-request-id"] == "app-42:retry.1"
    for bad in (b"has space", b"x" * 129, "ümlaut".encode(), b"a\tb"):
        r = client.get("/healthz", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
    a, b = client.get("/healthz"), client.get("/healthz")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]
    r = client.get("/v1/subjects/nobody/state")  # errors carry it too
    assert r.status_code == 404 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_json_access_log_line(client: httpx.Client) -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    secret = "do-not-log-this-secret-123"
    try:
        batches = sim_batches("logs1", 20)
        assert client.post("/v1/ingest", json=body(batches),
                           headers={"X-Request-ID": "req-ingest-1"}).status_code == 200
        r = client.post("/v1/subjects/logs1/alerts/rules", headers={"X-Request-ID": "req-rule"},
                        json={"kind": "no_data", "url": "http://127.0.0.1:9/h", "secret": secret})
        assert r.status_code == 201
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_wearemo_handler", False)]:
            root.removeHandler(h)
    text = buf.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    [line] = [x for x in lines if x.get("request_id") == "req-ingest-1"
              and x["logger"] == "wearemo.access"]
    assert line["method"] == "POST" and line["route"] == "/v1/ingest"
    assert line["status"] == 200 and line["duration_ms"] > 0 and line["level"] == "INFO"
    assert line["key_id"] == "bootstrap-admin" and line["time"]  # the key that was used
    [rule_line] = [x for x in lines if x.get("request_id") == "req-rule"]
    assert rule_line["route"] == "/v1/subjects/{subject_id}/alerts/rules"
    assert rule_line["status"] == 201
    assert secret not in text
    first_value = f"{batches[0].values[0]}"
    assert first_value not in text  # no sample values either


def test_readyz_follows_the_store(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "d")
    with serve(settings) as url, admin_client(url) as c:
        assert c.get("/readyz").status_code == 200
        # The data directory is removed under the running service: SQLite would keep writing
        # to the deleted file (lost at the next start), so the service is not ready.
        db = settings.resolved_sqlite_path()
        db.rename(tmp_path / "moved.sqlite3")
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        (tmp_path / "moved.sqlite3").rename(db)
        assert c.get("/readyz").status_code == 200


async def test_key_id_hook_reaches_the_access_line() -> None:
    # What an auth dependency will do: set request.state.key_id; the access line carries it.
    def authenticated(request: Request) -> None:
        request.state.key_id = "key-7f3a"

    app = FastAPI()
    app.add_middleware(RequestObserver)

    @app.get("/v1/things/{thing_id}", dependencies=[Depends(authenticated)])
    def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/v1/things/42", headers={"X-Request-ID": "k-1"})
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, "_wearemo_handler", False)]:
            root.removeHandler(h)
    assert r.json() == {"id": "42"} and r.headers["x-request-id"] == "k-1"
    [line] = [json.loads(x) for x in buf.getvalue().splitlines()
              if json.loads(x).get("request_id") == "k-1"]
    assert line["key_id"] == "key-7f3a" and line["route"] == "/v1/things/{thing_id}"
