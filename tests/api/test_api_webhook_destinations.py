"""Webhook destinations over real HTTP: no internal addresses unless allow-listed (SSRF), no
redirects followed, and rule URLs with credentials shown in full to admins only.

The API runs under uvicorn on loopback; receivers are real HTTP servers on loopback. A name
that passes the check at creation but resolves to an internal address at delivery is this
machine's own host name (``/etc/hosts`` maps it to a loopback or private address).
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, create_key, serve, settings_for
from simdata import T0, S
from webhook_receiver import Receiver, wait_until

pytestmark = pytest.mark.e2e

SECRET = "test-secret-0123456789abcdef"
FAST = {"webhook_timeout_s": 2.0, "webhook_backoff_s": 0.2, "webhook_backoff_max_s": 0.5,
        "alert_check_interval_s": 0.2}

#: Loopback, unspecified, link-local / metadata, private, CGNAT, multicast, reserved, in the
#: spellings a resolver or URL parser accepts.
INTERNAL = [
    "http://127.0.0.1:8080/h", "http://127.1/h", "http://2130706433/h", "http://0x7f.1/h",
    "http://0177.0.0.1/h", "http://0x7f000001/h", "http://127.000.000.001/h",
    "http://[::1]/h", "http://[::ffff:127.0.0.1]/h", "http://[0:0:0:0:0:ffff:7f00:1]/h",
    "http://localhost/h", "http://localhost./h", "http://LOCALHOST:9/h", "http://api.localhost/h",
    "http://0.0.0.0/h", "http://0/h", "http://[::]/h",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/h", "http://[fd00::1]/h",
    "http://[fd12:3456::1]/h", "http://10.0.0.1/h", "http://172.16.5.4/h", "http://192.168.1.1/h",
    "http://100.64.0.1/h", "http://224.0.0.1/h", "http://[ff02::1]/h", "http://240.0.0.1/h",
    "http://255.255.255.255/h", "http://[2002:7f00:1::]/h", "http://[64:ff9b::a00:1]/h",
    "http://[fec0::1]/h", "http://192.0.2.10/h",
]


def tiny_batch(subject: str, k: int = 0) -> dict[str, object]:
    return {"batch_id": f"{subject}:eda:{k}", "subject_id": subject, "device_id": "d1",
            "channel": "eda", "start_ns": T0 + 2 * k * S, "rate_hz": 4.0, "values": [3.0] * 8}


def no_data_rule(url: str, **kw: object) -> dict[str, object]:
    return {"kind": "no_data", "url": url, "secret": SECRET, "duration_s": 0.5, **kw}


def deliveries(c: httpx.Client, subject: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/subjects/{subject}/alerts/deliveries")
    assert r.status_code == 200, r.text
    return list(r.json())


def internal_name() -> str:
    """This machine's host name if it resolves to internal addresses only (else skip)."""
    name = socket.gethostname().lower()
    try:
        found = {i[4][0] for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"the host name {name!r} does not resolve here")
    if not found or any(ipaddress.ip_address(a.split("%")[0]).is_global for a in found):
        pytest.skip(f"the host name {name!r} resolves to public addresses {found}")
    if name == "localhost" or name.endswith(".localhost"):
        pytest.skip("the host name is a localhost name (refused by name already)")
    return name


def test_internal_destinations_are_refused_at_creation(tmp_path: Path) -> None:
    with serve(settings_for(tmp_path)) as url, admin_client(url) as c:
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("ssrf1")]}).status_code == 200
        base = "/v1/subjects/ssrf1/alerts/rules"
        reader = create_key(c, "reader", cohorts=["ssrf"])
        c.post("/v1/admin/cohorts/ssrf/subjects", json={"subjects": ["ssrf1"]})
        for target in INTERNAL:
            for who in (ADMIN_KEY, reader):  # nobody, not even an admin, without the allow-list
                r = c.post(base, json=no_data_rule(target), headers=bearer(who))
                assert r.status_code == 422, (target, r.text)
                [issue] = r.json()["detail"]
                assert issue["field"] == "url", issue
                assert "destination not allowed" in issue["msg"], issue
                assert "WEAREMO_WEBHOOK_ALLOW" in issue["msg"]
            # a replacement is checked the same way, and leaves the rule as it was
        good = c.post(base, json=no_data_rule("https://hooks.example.invalid/h",
                                              duration_s=3600))
        assert good.status_code == 201, good.text
        rid = good.json()["id"]
        r = c.put(f"{base}/{rid}", json=no_data_rule("http://[::ffff:169.254.169.254]/h"))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "url"
        assert c.get(f"{base}/{rid}").json()["url"] == "https://hooks.example.invalid/h"
        assert [x["id"] for x in c.get(base).json()] == [rid]  # nothing refused was stored
        # cohort rules are checked alike
        r = c.post("/v1/cohorts/ssrf/alerts/rules", json=no_data_rule("http://0x7f.1/h"),
                   headers=bearer(reader))
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "url"


def test_allow_list_admits_an_intranet_receiver(tmp_path: Path) -> None:
    """The honest way to use a receiver on loopback: allow it explicitly."""
    with (Receiver(SECRET) as hook,
          serve(settings_for(tmp_path, webhook_allow=("127.0.0.1/32",), **FAST)) as url,
          admin_client(url) as c):
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("allow1")]}).status_code == 200
        base = "/v1/subjects/allow1/alerts/rules"
        assert c.post(base, json=no_data_rule(hook.url)).status_code == 201
        # only what is listed: another loopback address or the metadata service stay refused
        for target in ("http://127.0.0.2/h", "http://169.254.169.254/h", "http://[::1]/h"):
            assert c.post(base, json=no_data_rule(target)).status_code == 422, target
        [d] = wait_until(lambda: [x for x in deliveries(c, "allow1")
                                  if x["status"] == "delivered"], why="delivered")
        assert d["history"][-1]["status_code"] == 200
        assert [r.signature_ok for r in hook.received] == [True]


def test_names_resolving_inside_are_refused_at_delivery_without_a_port_scan(
        tmp_path: Path) -> None:
    name = internal_name()
    with (Receiver(SECRET, host="0.0.0.0") as hook,
          socket.socket() as closed,
          serve(settings_for(tmp_path, **FAST)) as url, admin_client(url) as c):
        closed.bind(("0.0.0.0", 0))  # bound, never listening: a closed port
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("dns1"), tiny_batch("dns2")]}
                      ).status_code == 200
        open_url = f"http://{name}:{hook.port}/hook"
        closed_url = f"http://{name}:{closed.getsockname()[1]}/hook"
        for subject, target in (("dns1", open_url), ("dns2", closed_url)):
            r = c.post(f"/v1/subjects/{subject}/alerts/rules", json=no_data_rule(target))
            assert r.status_code == 201, r.text  # a name: judged when it is resolved
        done = {}
        for subject in ("dns1", "dns2"):
            [done[subject]] = wait_until(lambda s=subject: [
                x for x in deliveries(c, s) if x["status"] != "pending"], why=subject)
        assert hook.received == []  # nothing reached the internal receiver
        # open and closed port answer alike: refused before any connection, not retried
        shape = {(d["status"], d["attempts"], d["last_status_code"], d["last_error"])
                 for d in done.values()}
        assert len(shape) == 1, shape
        [(status, attempts, code, error)] = shape
        assert (status, attempts, code) == ("failed", 1, None)
        assert error.startswith("destination not allowed") and name not in error
        assert "Connect" not in error and "refused" not in error.lower().replace(
            "not allowed", "")


def test_allow_list_withdrawn_refuses_stored_rules_at_delivery(tmp_path: Path) -> None:
    """A rule stored while its receiver was allowed (or before this check existed) is checked
    again when it fires."""
    with Receiver(SECRET) as hook:
        allowed = settings_for(tmp_path, webhook_allow=("127.0.0.0/8",), **FAST)
        with serve(allowed) as url, admin_client(url) as c:
            assert c.post("/v1/ingest", json={"batches": [tiny_batch("wd1")]}).status_code == 200
            assert c.post("/v1/subjects/wd1/alerts/rules",
                          json=no_data_rule(hook.url, duration_s=2.0)).status_code == 201
        with serve(settings_for(tmp_path, **FAST)) as url, admin_client(url) as c:
            [d] = wait_until(lambda: [x for x in deliveries(c, "wd1")
                                      if x["status"] != "pending"], why="refused")
            assert d["status"] == "failed" and d["last_error"].startswith(
                "destination not allowed")
            assert d["history"][0]["status_code"] is None
        assert hook.received == []


def test_redirects_are_not_followed(tmp_path: Path) -> None:
    with (Receiver(SECRET, host="127.0.0.2") as inside,
          Receiver(SECRET, plan=[302], location="") as hook,
          serve(settings_for(tmp_path, webhook_allow=("127.0.0.1",), **FAST)) as url,
          admin_client(url) as c):
        hook.location = inside.url  # an allowed receiver pointing at an internal one
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("redir1")]}).status_code == 200
        assert c.post("/v1/subjects/redir1/alerts/rules",
                      json=no_data_rule(hook.url)).status_code == 201
        [d] = wait_until(lambda: [x for x in deliveries(c, "redir1")
                                  if x["status"] != "pending"], why="finished")
        assert (d["status"], d["attempts"], d["last_error"]) == ("failed", 1, "HTTP 302")
        assert len(hook.received) == 1 and inside.received == []


def test_rule_urls_with_credentials_are_redacted_for_non_admins(tmp_path: Path) -> None:
    secret_url = ("http://hook-user:hunter2-pass@127.0.0.1:{port}/hook?token=tok-4bd1e7&team=a"
                  "&raw-secret-99")
    with (Receiver(SECRET) as hook,
          serve(settings_for(tmp_path, webhook_allow=("127.0.0.1",), **FAST)) as url,
          admin_client(url) as c):
        target = secret_url.format(port=hook.port)
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("cred1")]}).status_code == 200
        reader = create_key(c, "reader", cohorts=["cred"])
        c.post("/v1/admin/cohorts/cred/subjects", json={"subjects": ["cred1"]})
        device = create_key(c, "device", subjects=["cred1"])
        created = c.post("/v1/subjects/cred1/alerts/rules", json=no_data_rule(target),
                         headers=bearer(reader))
        assert created.status_code == 201, created.text
        wait_until(lambda: any(x["status"] == "delivered" for x in deliveries(c, "cred1")),
                   why="delivered")
        redacted = f"http://***@127.0.0.1:{hook.port}/hook?token=***&team=***&***"
        secrets_ = ("hunter2-pass", "hook-user", "tok-4bd1e7", "raw-secret-99")

        def check(r: httpx.Response) -> None:
            assert r.status_code in (200, 201), r.text
            assert not any(s in r.text for s in secrets_), r.text
            assert redacted in r.text

        check(created)  # the creator is told the rule, not its credentials again
        for who in (reader, device):
            h = bearer(who)
            check(c.get("/v1/subjects/cred1/alerts/rules", headers=h))
            check(c.get(f"/v1/subjects/cred1/alerts/rules/{created.json()['id']}", headers=h))
            check(c.get("/v1/subjects/cred1/alerts/deliveries", headers=h))
        cohort_rule = c.post("/v1/cohorts/cred/alerts/rules",
                             json=no_data_rule(target, duration_s=3600), headers=bearer(reader))
        check(cohort_rule)
        check(c.get("/v1/cohorts/cred/alerts/rules", headers=bearer(reader)))
        # the admin sees the URL whole, and the receiver got the credentials
        assert c.get("/v1/subjects/cred1/alerts/rules").json()[0]["url"] == target
        assert deliveries(c, "cred1")[0]["url"] == target
        assert c.get("/v1/cohorts/cred/alerts/rules").json()[0]["url"] == target
        assert hook.received and hook.received[0].signature_ok
