"""Alerts over real HTTP both ways: the API under uvicorn, a webhook receiver on loopback.

Simulated wearers (NeuroKit2 PPG + EDA at 72 bpm) give withheld states during the 4-min
warm-up of the personal baseline and then estimated states with p_stress ≈ 0.10-0.13 (the
default model), so a rule with threshold 0.05 sees sustained "stress" from the window ending
at 300 s: with duration 60 s it fires at the window ending at 360 s, exactly once.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import admin_client, body, serve, settings_for, sim_batches
from simdata import T0, S
from webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

SECRET = "test-secret-0123456789abcdef"
# The receivers listen on loopback: an intranet receiver, allowed explicitly.
FAST = {"webhook_timeout_s": 0.5, "webhook_backoff_s": 0.2, "webhook_backoff_max_s": 0.5,
        "alert_check_interval_s": 0.2, "webhook_allow": ("127.0.0.1",)}


def wait_for(what: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def stress_rule(url: str, **kw: object) -> dict[str, object]:
    return {"kind": "stress_sustained", "url": url, "secret": SECRET, "threshold": 0.05,
            "duration_s": 60, **kw}


def ingest(c: httpx.Client, batches: list[Any]) -> None:
    for i in range(0, len(batches), 12):
        r = c.post("/v1/ingest", json=body(batches[i:i + 12]))
        assert r.status_code == 200, r.text


def deliveries(c: httpx.Client, subject: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/subjects/{subject}/alerts/deliveries")
    assert r.status_code == 200
    return list(r.json())


def test_rules_crud_and_bad_input(client: httpx.Client) -> None:
    ingest(client, sim_batches("crud1", 10))
    base = "/v1/subjects/crud1/alerts/rules"
    r = client.post(base, json={"kind": "no_data", "url": "https://example.org/h"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert len(created["secret"]) >= 32 and created["duration_s"] == 1800
    rid = created["id"]
    got = client.get(f"{base}/{rid}").json()
    assert "secret" not in got and got["status"]["phase"] == "idle"
    assert [x["id"] for x in client.get(base).json()] == [rid]
    assert created["secret"] not in client.get(base).text

    bad = [({"kind": "no_data", "url": "ftp://example.org/h"}, "url"),
           ({"kind": "no_data", "url": "file:///etc/passwd"}, "url"),
           ({"kind": "stress_sustained", "url": "http://h/x", "threshold": 1.5}, "threshold"),
           ({"kind": "stress_sustained", "url": "http://h/x", "threshold": 0.8,
             "clear_below": 0.9}, "body"),
           ({"kind": "loud", "url": "http://h/x"}, "kind"),
           ({"kind": "no_data", "url": "http://h/x", "secret": "short"}, "secret"),
           ({"kind": "no_data", "url": "http://h/x", "colour": "red"}, "colour")]
    for payload, field in bad:
        r = client.post(base, json=payload)
        assert r.status_code == 422, payload
        issue = r.json()["detail"][0]
        assert issue["field"] == field, (payload, issue)
    assert "clear_below" in client.post(base, json=bad[3][0]).json()["detail"][0]["msg"]
    assert len(client.get(base).json()) == 1  # nothing of the bad requests stored

    r = client.put(f"{base}/{rid}", json={"kind": "stress_sustained", "url": "http://h/y",
                                          "threshold": 0.7})
    assert r.status_code == 200 and r.json()["clear_below"] == pytest.approx(0.6)
    assert r.json()["kind"] == "stress_sustained" and "secret" not in r.json()
    assert client.put(f"{base}/{rid}", json={"kind": "no_data", "url": "gopher://h"}
                      ).status_code == 422
    assert client.get(f"{base}/{rid}").json()["url"] == "http://h/y"  # unchanged by the 422

    assert client.get("/v1/subjects/nobody/alerts/rules").status_code == 404
    assert client.post("/v1/subjects/nobody/alerts/rules",
                       json={"kind": "no_data", "url": "http://h/x"}).status_code == 404
    ingest(client, sim_batches("crud2", 10))
    assert client.get(f"/v1/subjects/crud2/alerts/rules/{rid}").status_code == 404  # not theirs
    assert client.get(f"{base}/{'0' * 32}").status_code == 404
    assert client.get(f"{base}/not-an-id").status_code == 422
    assert client.delete(f"{base}/{rid}").status_code == 204
    assert client.get(base).json() == [] and client.delete(f"{base}/{rid}").status_code == 404
    assert client.get("/v1/subjects/crud1/alerts").json() == []


def test_stress_alert_is_signed_retried_and_fires_once(tmp_path: Path) -> None:
    batches = sim_batches("w1", 420)
    with (Receiver(SECRET, plan=[500, "timeout", 200], slow_s=1.5) as hook,
          serve(settings_for(tmp_path, **FAST)) as url,
          admin_client(url) as c):
        ingest(c, batches[:2])
        rule = c.post("/v1/subjects/w1/alerts/rules", json=stress_rule(hook.url)).json()
        before = c.get("/metrics").text
        ingest(c, batches[2:])
        [d] = wait_for(lambda: [d for d in deliveries(c, "w1") if d["status"] != "pending"])
        assert d["status"] == "delivered" and d["attempts"] == 3
        codes = [(a["status_code"], a["error"]) for a in d["history"]]
        assert codes[0] == (500, "HTTP 500") and codes[2] == (200, None)
        assert codes[1][0] is None and codes[1][1].startswith("timeout after 0.5 s")
        assert all(a["next_retry_ns"] for a in d["history"][:2])
        assert d["history"][2]["next_retry_ns"] is None
        # the receiver saw every attempt, each correctly signed, with one delivery id
        assert [r.signature_ok for r in hook.received] == [True, True, True]
        assert {r.delivery_id for r in hook.received} == {d["id"]}
        payload = hook.received[-1].body
        assert payload["event"] == "alert.fired" and payload["rule_id"] == rule["id"]
        assert payload["subject_id"] == "w1" and payload["kind"] == "stress_sustained"
        assert payload["at_ns"] == T0 + 360 * S  # 60 s after the first estimated window (300 s)
        detail = payload["detail"]
        assert detail["run_start_ns"] == T0 + 300 * S and detail["covered_s"] == 60
        assert detail["withheld_states"] == 0 and 0.05 < detail["mean_p_stress"] < 0.2
        # one episode, one alert: the 9 later states above the threshold do not fire again
        [alert] = c.get("/v1/subjects/w1/alerts").json()
        assert alert["fired_ns"] == T0 + 360 * S and alert["resolved_ns"] is None
        status = c.get(f"/v1/subjects/w1/alerts/rules/{rule['id']}").json()["status"]
        assert status["phase"] == "firing" and status["last_seen_ns"] == T0 + 410 * S
        after = c.get("/metrics").text
    for outcome, n in (("retry", 2), ("delivered", 1)):
        assert metric(after, f'wearemo_webhook_deliveries_total{{outcome="{outcome}"}}') \
            - metric(before, f'wearemo_webhook_deliveries_total{{outcome="{outcome}"}}') == n
    assert metric(after, 'wearemo_alerts_fired_total{kind="stress_sustained"}') \
        - metric(before, 'wearemo_alerts_fired_total{kind="stress_sustained"}') == 1


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_outbox_survives_restart_while_receiver_is_down(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on until the receiver starts
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook_url = f"http://127.0.0.1:{port}/hook"
    settings = settings_for(tmp_path, **{**FAST, "webhook_max_attempts": 100})
    batches = sim_batches("w2", 420)
    with serve(settings) as url, admin_client(url) as c:
        ingest(c, batches[:2])
        assert c.post("/v1/subjects/w2/alerts/rules", json=stress_rule(hook_url)).status_code \
            == 201
        ingest(c, batches[2:])
        [d] = wait_for(lambda: [d for d in deliveries(c, "w2") if d["attempts"] >= 2])
        assert d["status"] == "pending" and d["next_attempt_ns"] is not None
        assert all(a["status_code"] is None and "ConnectError" in a["error"]
                   for a in d["history"])
    with (serve(settings) as url, admin_client(url) as c):
        [pending] = deliveries(c, "w2")
        assert pending["id"] == d["id"] and pending["status"] == "pending"
        with Receiver(SECRET, port=port) as hook:
            [done] = wait_for(lambda: [x for x in deliveries(c, "w2")
                                       if x["status"] == "delivered"])
        assert done["id"] == d["id"] and done["history"][-1]["status_code"] == 200
        assert done["attempts"] == len(done["history"]) > pending["attempts"]
        assert [(r.delivery_id, r.signature_ok) for r in hook.received] == [(d["id"], True)]
        assert len(c.get("/v1/subjects/w2/alerts").json()) == 1  # not fired again on restart


def test_no_data_fires_and_resolves(tmp_path: Path) -> None:
    batches = sim_batches("quiet1", 30)
    with (Receiver(SECRET) as hook, serve(settings_for(tmp_path, **FAST)) as url,
          admin_client(url) as c):
        ingest(c, batches[:2])
        rule = c.post("/v1/subjects/quiet1/alerts/rules",
                      json={"kind": "no_data", "url": hook.url, "secret": SECRET,
                            "duration_s": 1.0}).json()
        started = time.monotonic()
        [alert] = wait_for(lambda: c.get("/v1/subjects/quiet1/alerts").json())
        assert time.monotonic() - started >= 0.5  # not at once: the silence must last 1 s
        assert alert["kind"] == "no_data" and alert["rule_id"] == rule["id"]
        assert alert["detail"]["latest_sample_ns"] == T0 + 10 * S - S // 64  # last PPG sample
        ingest(c, batches[2:4])  # data again: the episode ends
        [alert] = wait_for(lambda: [a for a in c.get("/v1/subjects/quiet1/alerts").json()
                                    if a["resolved_ns"]])
        assert alert["resolved_reason"] == "data arrived again"
        wait_for(lambda: len(hook.received) == 2)
        assert [(r.event, r.signature_ok) for r in hook.received] == [
            ("alert.fired", True), ("alert.resolved", True)]
        assert {r.body["alert_id"] for r in hook.received} == {alert["id"]}


def test_suggestion(tmp_path: Path) -> None:
    with serve(settings_for(tmp_path)) as url, admin_client(url) as c:
        ingest(c, sim_batches("calm1", 420))
        r = c.get("/v1/subjects/calm1/suggestion").json()  # default rule: p_stress > 0.8
        assert r["action"] == "none" and r["notice"].startswith("A wellness suggestion")
        assert r["reason"].startswith("latest estimated p_stress 0.1")
        assert r["as_of_ns"] == T0 + 410 * S
        c.post("/v1/subjects/calm1/alerts/rules",
               json=stress_rule("https://hooks.example.invalid/unused", duration_s=600))
        r = c.get("/v1/subjects/calm1/suggestion").json()
        assert r["action"] == "none" and r["reason"] == (
            "p_stress above 0.05 for 1.8 of the 10.0 min needed")  # 300..410 s
        assert r["window"]["start_ns"] == T0 + 300 * S
        rid = c.get("/v1/subjects/calm1/alerts/rules").json()[0]["id"]
        c.put(f"/v1/subjects/calm1/alerts/rules/{rid}",
              json=stress_rule("https://hooks.example.invalid/unused"))
        r = c.get("/v1/subjects/calm1/suggestion").json()
        assert r["action"] == "paced_breathing" and r["breaths_per_min"] == 6
        assert r["duration_s"] == 300 and "for 1.8 min" in r["reason"]
        assert r["window"]["covered_s"] == 110 and r["window"]["estimated_states"] == 23
        ingest(c, sim_batches("young1", 30))
        r = c.get("/v1/subjects/young1/suggestion").json()
        assert r == {**r, "action": "none", "reason": "no state yet"}
        assert c.get("/v1/subjects/nobody/suggestion").status_code == 404
