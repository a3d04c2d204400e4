"""The uplink against the real wearemo API with API keys: a wrong or ungranted key keeps every
batch spooled (never dead-lettered), shows ``unauthorized``, and once the key is fixed
everything arrives exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from api.api_support import ADMIN_KEY, admin_client, create_key, serve, settings_for

from firmware_bridge.spool import Spool
from firmware_bridge.status import StatusSnapshot, status_table
from firmware_bridge.uplink import Uplink
from wearemo.samples import SampleBatch

pytestmark = pytest.mark.timeout(120)


def _batch(i: int, subject: str = "s01") -> SampleBatch:
    return SampleBatch(
        batch_id=f"vw-01:eda:{i}", subject_id=subject, device_id="vw-01", channel="eda",
        start_ns=1_700_000_000 * 10**9 + i * 10**9, rate_hz=4.0,
        values=[0.5 + i, 0.75 + i, 1.0 + i, 1.25 + i], seq=i,
    )


async def _until(cond: object, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def _uplink_state(uplink: Uplink, spool: Spool) -> str:
    table = status_table(StatusSnapshot.take([], spool, uplink), None)
    return str(table.caption)


async def test_wrong_then_fixed_key_loses_nothing(tmp_path: Path) -> None:
    with serve(settings_for(tmp_path / "api")) as url, admin_client(url) as admin:
        right = create_key(admin, "device", subjects=["s01"])
        other = create_key(admin, "device", subjects=["s02"])  # valid, but not granted s01
        with Spool(tmp_path / "spool.db") as spool:
            spool.put([_batch(i) for i in range(6)])
            wrong = "wmo_0123456789ab_" + "A" * 43
            uplink = Uplink(spool, api_url=url, api_key=wrong, max_batches_per_request=4,
                            backoff_initial_s=0.02, backoff_max_s=0.1)
            stop = asyncio.Event()
            task = asyncio.create_task(uplink.run(stop))
            try:
                await _until(lambda: uplink.stats.unauthorized >= 3)
                assert spool.depth == 6 and spool.dead_depth == 0
                assert (uplink.stats.last_error or "").startswith("unauthorized (HTTP 401")
                assert "unauthorized" in _uplink_state(uplink, spool)

                uplink.set_api_key(other)
                n = uplink.stats.unauthorized
                await _until(lambda: uplink.stats.unauthorized >= n + 3)
                assert (uplink.stats.last_error or "").startswith("unauthorized (HTTP 403")
                assert "may not write subject 's01'" in (uplink.stats.last_error or "")
                assert spool.depth == 6 and spool.dead_depth == 0
                assert admin.get("/v1/subjects/s01").status_code == 404  # nothing stored

                uplink.set_api_key(right)
                await _until(lambda: spool.depth == 0)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
            assert spool.dead_depth == 0 and uplink.stats.last_error is None
            assert uplink.stats.stored == 6 and uplink.stats.duplicates == 0
        summary = admin.get("/v1/subjects/s01").json()
        assert summary["batches"] == 6 and summary["samples"] == {"eda": 24}
        # the refused attempts are in the audit log: the 403s (an authenticated key) name the
        # subject, the 401s (no valid key: the body is never looked at) do not
        async with httpx.AsyncClient(base_url=url) as c:
            audit = (await c.get("/v1/admin/audit", headers={"X-API-Key": ADMIN_KEY})).json()
        ingests = {(e["outcome"], e["subject_id"]) for e in audit
                   if e["action"] == "POST /v1/ingest"}
        assert ingests == {(401, None), (403, "s01"), (200, "s01")}
