"""Slow and greedy webhook receivers cannot stall the alerts of others (real HTTP both ways).

The receivers are real TCP servers on loopback (:class:`webhook_receiver.SlowReceiver`): one
trickles its answer a byte at a time for as long as the client stays, one answers 300 MB.
Each loopback address (127.0.0.2, 127.0.0.3 ...) is its own destination. Every wait is for an
event (a counter, a delivery's status), with a generous ceiling; nothing is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import admin_client, serve, settings_for
from simdata import T0
from webhook_receiver import Receiver, SlowReceiver, wait_until

pytestmark = pytest.mark.e2e

SECRET = "test-secret-0123456789abcdef"


def tiny_batch(subject: str) -> dict[str, object]:
    return {"batch_id": f"{subject}:eda:0", "subject_id": subject, "device_id": "d1",
            "channel": "eda", "start_ns": T0, "rate_hz": 4.0, "values": [3.0] * 8}


def no_data_rule(url: str) -> dict[str, object]:
    return {"kind": "no_data", "url": url, "secret": SECRET, "duration_s": 0.5}


def deliveries(c: httpx.Client, subject: str) -> list[dict[str, Any]]:
    r = c.get(f"/v1/subjects/{subject}/alerts/deliveries")
    assert r.status_code == 200, r.text
    return list(r.json())


def settings(tmp_path: Path, **kw: object) -> Any:
    return settings_for(tmp_path, webhook_allow=("127.0.0.0/8",), webhook_backoff_s=0.2,
                        webhook_backoff_max_s=0.5, alert_check_interval_s=0.2, **kw)


def test_a_trickling_answer_is_cut_off_at_the_attempt_deadline(tmp_path: Path) -> None:
    # One byte every 0.3 s: each read gets data long before a per-read timeout would fire,
    # so only a deadline for the whole attempt ends it.
    with (SlowReceiver("127.0.0.2", interval_s=0.3) as slow,
          serve(settings(tmp_path, webhook_timeout_s=1.5)) as url, admin_client(url) as c):
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("trk1")]}).status_code == 200
        assert c.post("/v1/subjects/trk1/alerts/rules",
                      json=no_data_rule(slow.url)).status_code == 201
        [d] = wait_until(lambda: [x for x in deliveries(c, "trk1") if x["history"]],
                         timeout_s=60, why="the first attempt ended")
        first = d["history"][0]
        assert first["error"].startswith("timeout after 1.5 s"), first
        assert first["next_retry_ns"] is not None  # a timeout is retried
        wait_until(lambda: slow.counts()["hung_up"] >= 1, why="the sender hung up")
        counts = slow.counts()
        assert counts["completed"] == 0 and counts["bytes_sent"] < 1000, counts


def test_slow_receivers_do_not_delay_another_cohorts_alert(tmp_path: Path) -> None:
    """Three trickling receivers with four alerts each (twelve deliveries: more than the eight
    slots of old) hold two slots each; another alert goes out while they are all open."""
    slow_hosts = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    # The deadline is far beyond the test: only the per-destination limit can explain a
    # prompt delivery of the other alert.
    with (SlowReceiver(slow_hosts[0]) as s1, SlowReceiver(slow_hosts[1]) as s2,
          SlowReceiver(slow_hosts[2]) as s3, Receiver(SECRET) as fast,
          serve(settings(tmp_path, webhook_timeout_s=120)) as url, admin_client(url) as c):
        slow = (s1, s2, s3)
        subjects = [f"slow{i}" for i in range(12)]
        r = c.post("/v1/ingest", json={"batches": [tiny_batch(s) for s in [*subjects, "calm1"]]})
        assert r.status_code == 200, r.text
        for i, subject in enumerate(subjects):  # round robin over the slow hosts
            r = c.post(f"/v1/subjects/{subject}/alerts/rules",
                       json=no_data_rule(slow[i % 3].url))
            assert r.status_code == 201, r.text
        wait_until(lambda: all(s.counts()["open"] >= 2 for s in slow), timeout_s=60,
                   why="every slow receiver trickles to two deliveries")

        assert c.post("/v1/subjects/calm1/alerts/rules",
                      json=no_data_rule(fast.url)).status_code == 201
        [done] = wait_until(lambda: [x for x in deliveries(c, "calm1")
                                     if x["status"] == "delivered"], timeout_s=60,
                            why="the other alert was delivered")
        # ... while the slow receivers were still trickling: it waited for none of them.
        counts = [s.counts() for s in slow]
        assert all(n["open"] == 2 and n["completed"] == 0 and n["hung_up"] == 0
                   for n in counts), counts
        assert all(n["max_open"] == 2 for n in counts), counts  # the per-destination limit
        assert all(d["attempts"] == 0 for s in subjects for d in deliveries(c, s))
        assert [r.signature_ok for r in fast.received] == [True]
        delay_ms = (done["finished_ns"] - done["created_ns"]) / 1e6
        print(f"other alert delivered {delay_ms:.0f} ms after it fired, 6 slow attempts open")


def test_a_huge_answer_is_read_only_up_to_the_cap(tmp_path: Path) -> None:
    huge = 300 * 1024 * 1024
    with (SlowReceiver("127.0.0.2", huge_bytes=huge) as greedy,
          serve(settings(tmp_path, webhook_timeout_s=60)) as url, admin_client(url) as c):
        assert c.post("/v1/ingest", json={"batches": [tiny_batch("big1")]}).status_code == 200
        assert c.post("/v1/subjects/big1/alerts/rules",
                      json=no_data_rule(greedy.url)).status_code == 201
        [d] = wait_until(lambda: [x for x in deliveries(c, "big1") if x["history"]],
                         timeout_s=120, why="the attempt ended")
        wait_until(lambda: greedy.counts()["open"] == 0, timeout_s=60, why="connection closed")
        counts = greedy.counts()
        # The 200 delivers it; of the body only the first 64 KiB were wanted, and the
        # connection was dropped after them (what was sent beyond is socket buffers).
        assert d["status"] == "delivered" and d["history"][0]["status_code"] == 200, d
        assert counts["hung_up"] == 1 and counts["completed"] == 0, counts
        assert counts["bytes_sent"] < 64 * 1024 * 1024, counts
