"""Alert rules at enrolment (before any data) and per cohort, over real HTTP both ways.

A subject is known to the alert endpoints once it has data *or* is enrolled: a member of a
cohort or granted to a device key. Keys still reach only their grant, and a subject or cohort
outside it is answered exactly like one that does not exist. A cohort's rule applies to every
current and future member, each with its own episode.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, body, create_key, serve, settings_for
from api_support import sim_batches as simulate
from simdata import T0, S
from webhook_receiver import Receiver, wait_until

pytestmark = pytest.mark.e2e

SECRET = "test-secret-0123456789abcdef"
FAST = {"webhook_timeout_s": 2.0, "webhook_backoff_s": 0.2, "webhook_backoff_max_s": 0.5,
        "alert_check_interval_s": 0.2, "webhook_allow": ("127.0.0.1",)}


def tiny_batch(subject: str, k: int = 0) -> dict[str, object]:
    return {"batch_id": f"{subject}:eda:{k}", "subject_id": subject, "device_id": "d1",
            "channel": "eda", "start_ns": T0 + 2 * k * S, "rate_hz": 4.0, "values": [3.0] * 8}


def no_data_rule(url: str, **kw: object) -> dict[str, object]:
    return {"kind": "no_data", "url": url, "secret": SECRET, "duration_s": 0.5, **kw}


def unknown(r: httpx.Response, what: str, name: str) -> bool:
    return (r.status_code, r.json()) == (404, {"detail": f"unknown {what} {name!r}"})


def fired(hook: Receiver) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in list(hook.received):
        assert r.signature_ok
        out.setdefault(r.body["subject_id"], []).append(r.body)
    return out


def test_rules_can_be_set_up_at_enrolment_before_any_data(tmp_path: Path) -> None:
    with (Receiver(SECRET) as hook, serve(settings_for(tmp_path, **FAST)) as url,
          admin_client(url) as c):
        assert c.post("/v1/admin/cohorts", json={"name": "enrol", "subjects": ["e1"]}
                      ).status_code == 201
        reader = bearer(create_key(c, "reader", cohorts=["enrol"]))
        device = bearer(create_key(c, "device", subjects=["e2"]))
        # e1 is enrolled (cohort), e2 too (device grant); neither has sent anything.
        r = c.post("/v1/subjects/e1/alerts/rules", json=no_data_rule(hook.url), headers=reader)
        assert r.status_code == 201, r.text
        rule = r.json()
        assert rule["subject_id"] == "e1" and rule["cohort"] is None
        assert [x["id"] for x in c.get("/v1/subjects/e1/alerts/rules", headers=reader).json()
                ] == [rule["id"]]
        assert c.get("/v1/subjects/e2/alerts/rules", headers=device).json() == []
        assert c.post("/v1/subjects/e2/alerts/rules", json=no_data_rule(hook.url),
                      headers=device).status_code == 403  # device keys set no rules
        assert c.post("/v1/subjects/e2/alerts/rules",
                      json=no_data_rule(hook.url, duration_s=3600)).status_code == 201
        # Outside the grant, or known to nobody: the same 404.
        for path in ("/v1/subjects/{}/alerts/rules", "/v1/subjects/{}/alerts",
                     "/v1/subjects/{}/alerts/deliveries"):
            assert unknown(c.get(path.format("e2"), headers=reader), "subject", "e2")
            assert unknown(c.get(path.format("nobody"), headers=reader), "subject", "nobody")
            assert unknown(c.get(path.format("nobody")), "subject", "nobody")
        assert unknown(c.post("/v1/subjects/e2/alerts/rules", json=no_data_rule(hook.url),
                              headers=reader), "subject", "e2")
        assert unknown(c.post("/v1/subjects/nobody/alerts/rules", json=no_data_rule(hook.url)),
                       "subject", "nobody")
        # Only the alert endpoints know enrolled subjects without data; the data ones do not.
        assert unknown(c.get("/v1/subjects/e1/state", headers=reader), "subject", "e1")

        # The enrolled subject's device never sends: the rule fires; the first upload ends it.
        wait_until(lambda: fired(hook).get("e1"), why="no_data fired for e1")
        [first] = fired(hook)["e1"]
        assert first["event"] == "alert.fired" and first["rule_id"] == rule["id"]
        assert first["detail"]["latest_sample_ns"] is None
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("e1")]}).status_code == 200
        wait_until(lambda: len(fired(hook)["e1"]) == 2, why="resolved")
        assert fired(hook)["e1"][1]["event"] == "alert.resolved"
        [alert] = c.get("/v1/subjects/e1/alerts", headers=reader).json()
        assert alert["resolved_reason"] == "data arrived again"


def test_cohort_rule_covers_current_and_future_members(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with (Receiver(SECRET) as hook, serve(settings_for(data, **FAST)) as url,
          admin_client(url) as c):
        for name, members in (("ca", ["a1", "a2"]), ("cb", ["b1"])):
            assert c.post("/v1/admin/cohorts", json={"name": name, "subjects": members}
                          ).status_code == 201
        reader_a = bearer(create_key(c, "reader", cohorts=["ca"]))
        reader_b = bearer(create_key(c, "reader", cohorts=["cb"]))
        device = bearer(create_key(c, "device", subjects=["a1"]))
        base = "/v1/cohorts/ca/alerts/rules"
        r = c.post(base, json=no_data_rule(hook.url), headers=reader_a)
        assert r.status_code == 201, r.text
        rule = r.json()
        assert rule["cohort"] == "ca" and rule["subject_id"] is None and rule["secret"] == SECRET
        assert set(rule["members"]) == {"a1", "a2"}
        assert all(m["phase"] == "idle" for m in rule["members"].values())

        # Cohorts outside the grant, device keys, and cohorts that do not exist: the same 404.
        for h, name in ((reader_b, "ca"), (device, "ca"), (reader_a, "cb"), (reader_a, "nope"),
                        (bearer(ADMIN_KEY), "nope")):
            assert unknown(c.get(f"/v1/cohorts/{name}/alerts/rules", headers=h), "cohort", name)
            assert unknown(c.get(f"/v1/cohorts/{name}/alerts/rules/{rule['id']}", headers=h),
                           "cohort", name)
        assert unknown(c.post("/v1/cohorts/cb/alerts/rules", json=no_data_rule(hook.url),
                              headers=reader_a), "cohort", "cb")
        assert c.post(base, json=no_data_rule(hook.url), headers=device).status_code == 403
        assert c.get("/v1/cohorts/cb/alerts/rules", headers=reader_b).json() == []

        wait_until(lambda: set(fired(hook)) == {"a1", "a2"}, why="both members fired")
        # A member added later is covered from then on, without touching the rule.
        assert c.post("/v1/admin/cohorts/ca/subjects", json={"subjects": ["a3"]}
                      ).status_code == 200
        wait_until(lambda: "a3" in fired(hook), why="the new member fired")
        events = fired(hook)
        assert set(events) == {"a1", "a2", "a3"}  # nothing for cohort cb's b1
        for subject, [event] in events.items():
            assert event["event"] == "alert.fired" and event["cohort"] == "ca"
            assert event["rule_id"] == rule["id"] and event["subject_id"] == subject
        [alert] = c.get("/v1/subjects/a3/alerts", headers=reader_a).json()
        assert alert["rule_id"] == rule["id"] and alert["subject_id"] == "a3"
        status = c.get(f"{base}/{rule['id']}", headers=reader_a).json()["members"]
        assert {m: s["phase"] for m, s in status.items()} == dict.fromkeys(
            ("a1", "a2", "a3"), "firing")

        # Each member has its own episode: data for a1 ends a1's alone.
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("a1")]}).status_code == 200
        wait_until(lambda: len(fired(hook)["a1"]) == 2, why="a1 resolved")
        assert fired(hook)["a1"][1]["event"] == "alert.resolved"
        assert [len(fired(hook)[m]) for m in ("a2", "a3")] == [1, 1]

        # Replace (every member's episode starts again), then delete.
        r = c.put(f"{base}/{rule['id']}", json=no_data_rule(hook.url, enabled=False),
                  headers=reader_a)
        assert r.status_code == 200 and r.json()["enabled"] is False
        # another cohort's reader cannot reach the rule through its own cohort
        r = c.put(f"/v1/cohorts/cb/alerts/rules/{rule['id']}", json=no_data_rule(hook.url),
                  headers=reader_b)
        assert (r.status_code, r.json()["detail"]) == (
            404, f"cohort 'cb' has no rule {rule['id']!r}")
        # a cohort rule is not any subject's own rule
        assert c.get(f"/v1/subjects/a1/alerts/rules/{rule['id']}").status_code == 404
        assert c.delete(f"/v1/cohorts/cb/alerts/rules/{rule['id']}").status_code == 404
        assert c.delete(f"{base}/{rule['id']}", headers=reader_a).status_code == 204
        assert c.get(base, headers=reader_a).json() == []

        # Erasure removes the member's episode too.
        assert c.delete("/v1/admin/subjects/a3").status_code == 200
    with sqlite3.connect(data / "alerts.sqlite3") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            cols = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
            if "subject_id" in cols:
                assert db.execute(f'SELECT COUNT(*) FROM "{table}" WHERE subject_id = ?',
                                  ("a3",)).fetchone()[0] == 0, table


def test_cohort_stress_rule_fires_for_a_member_who_joined_after_it(tmp_path: Path) -> None:
    """The simulated wearer's states cross p_stress 0.05 from the window ending at 300 s (see
    test_api_alerts.py): a 60-s rule fires at the window ending at 360 s, once."""
    with (Receiver(SECRET) as hook, serve(settings_for(tmp_path, **FAST)) as url,
          admin_client(url) as c):
        assert c.post("/v1/admin/cohorts", json={"name": "cs"}).status_code == 201
        r = c.post("/v1/cohorts/cs/alerts/rules",
                   json={"kind": "stress_sustained", "url": hook.url, "secret": SECRET,
                         "threshold": 0.05, "duration_s": 60})
        assert r.status_code == 201, r.text
        assert r.json()["members"] == {}
        assert c.post("/v1/admin/cohorts/cs/subjects", json={"subjects": ["m1"]}
                      ).status_code == 200
        batches = simulate("m1", 420)
        for i in range(0, len(batches), 12):
            assert c.post("/v1/ingest", json=body(batches[i:i + 12])).status_code == 200
        wait_until(lambda: hook.received, why="fired")
        [event] = [x.body for x in hook.received]
        assert (event["subject_id"], event["cohort"], event["kind"]) == ("m1", "cs",
                                                                        "stress_sustained")
        assert event["at_ns"] == T0 + 360 * S
        status = c.get(f"/v1/cohorts/cs/alerts/rules/{r.json()['id']}").json()["members"]["m1"]
        assert status["phase"] == "firing" and status["last_seen_ns"] == T0 + 410 * S
        # the suggestion follows the cohort's rule too (the default, 0.8, would say "none")
        suggestion = c.get("/v1/subjects/m1/suggestion").json()
        assert suggestion["action"] == "paced_breathing", suggestion
