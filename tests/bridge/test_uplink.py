"""The uplink against a real HTTP server on loopback: acks, retries, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge_ingest_server import IngestServer

from firmware_bridge.spool import Spool
from firmware_bridge.uplink import Uplink
from wearemo.samples import SampleBatch

pytestmark = pytest.mark.timeout(60)


def _batch(i: int, *, subject: str = "s01", channel: str = "eda") -> SampleBatch:
    return SampleBatch(
        batch_id=f"vw-01:{channel}:{i}", subject_id=subject, device_id="vw-01", channel=channel,
        start_ns=10**18 + i * 10**9, rate_hz=4.0, values=[0.5 + i, 0.75 + i, 1.0 + i, 1.25 + i],
        seq=i,
    )


@pytest.fixture
def server() -> Iterator[IngestServer]:
    srv = IngestServer()
    yield srv
    srv.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.db") as sp:
        yield sp


async def test_uploads_everything_exactly(server: IngestServer, spool: Spool) -> None:
    server.start()
    batches = [_batch(i) for i in range(10)]
    spool.put(batches)
    uplink = Uplink(spool, api_url=server.url, max_batches_per_request=4)
    assert await uplink.drain(timeout_s=10)
    assert list(server.stored) == [b.batch_id for b in batches]
    assert all(server.stored[b.batch_id] == b for b in batches)  # values byte-identical
    assert uplink.stats.stored == 10 and uplink.stats.duplicates == 0
    assert uplink.stats.uploaded_samples == {"s01": {"eda": 40}}
    assert server.posts == 3


async def test_sends_msgpack_and_falls_back_to_json_on_415(
    server: IngestServer, spool: Spool
) -> None:
    server.start()
    acc = SampleBatch(batch_id="vw-01:acc:0", subject_id="s01", device_id="vw-01",
                      channel="acc", start_ns=10**18, rate_hz=32.0,
                      values=[[0.1 * k, -0.3333333333333333, 0.98] for k in range(32)])
    rr = SampleBatch(batch_id="vw-01:rr:0", subject_id="s01", device_id="vw-01", channel="rr",
                     start_ns=10**18, timestamps_ns=[10**18, 10**18 + 812_345_678],
                     values=[812.3456789, 799.1])
    spool.put([acc, rr, _batch(0)])
    uplink = Uplink(spool, api_url=server.url, max_batches_per_request=2)
    assert uplink.form == "msgpack"
    assert await uplink.drain(timeout_s=10)
    assert server.content_types == ["application/msgpack"] * 2
    assert all(server.stored[b.batch_id] == b for b in (acc, rr))  # float64: bit-exact
    # an API without the compact form answers 415: the uplink switches to JSON for good
    server.accept_msgpack = False
    spool.put([_batch(i) for i in range(1, 4)])
    assert await uplink.drain(timeout_s=10)
    assert uplink.form == "json" and uplink.stats.dead_lettered == 0
    assert server.content_types[2:] == ["application/msgpack", "application/json",
                                        "application/json"]
    assert [server.stored[f"vw-01:eda:{i}"] == _batch(i) for i in range(4)] == [True] * 4


async def test_api_down_then_up_nothing_lost_nothing_twice(
    server: IngestServer, spool: Spool
) -> None:
    uplink = Uplink(spool, api_url=server.url, max_batches_per_request=3,
                    backoff_initial_s=0.02, backoff_max_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop))
    spool.put([_batch(i) for i in range(5)])
    await asyncio.sleep(0.4)  # connection refused for a while
    assert uplink.stats.retries >= 2 and spool.depth == 5
    server.start()
    server.mode = "503"  # up but unavailable
    await asyncio.sleep(0.3)
    assert spool.depth == 5
    server.mode = "store_then_500"  # stores, but the answer is lost
    await asyncio.sleep(0.3)
    server.mode = "up"
    spool.put([_batch(i) for i in range(5, 9)])
    uplink.notify()
    for _ in range(200):
        if spool.depth == 0:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert spool.depth == 0 and spool.dead_depth == 0
    assert sorted(server.stored) == sorted(_batch(i).batch_id for i in range(9))
    assert server.samples() == {("s01", "eda"): 36}
    assert server.duplicate_posts >= 1  # the lost answers were retried, and stored once
    assert uplink.stats.stored + uplink.stats.duplicates == 9
    assert uplink.stats.uploaded_samples == {"s01": {"eda": 36}}


async def test_422_dead_letters_only_the_bad_batch(server: IngestServer, spool: Spool) -> None:
    server.start()
    good = [_batch(i) for i in range(4)]
    # Valid on the wire, refused by the (stricter) server: EDA of 500 uS.
    bad = _batch(2, subject="s02").model_copy(update={"batch_id": "bad", "values": [1.0, 500.0]})
    spool.put([good[0], good[1], bad, good[2], good[3]])
    uplink = Uplink(spool, api_url=server.url)
    assert await uplink.drain(timeout_s=10)
    assert sorted(server.stored) == sorted(b.batch_id for b in good)
    (dead,) = spool.dead_letters()
    assert dead.batch_id == "bad" and dead.batch == bad and dead.status == 422
    assert "batches.2.values.1" in dead.reason
    assert uplink.stats.dead_lettered == 1 and uplink.stats.stored == 4


async def test_409_keeps_earlier_and_later_batches(server: IngestServer, spool: Spool) -> None:
    server.start()
    first = [_batch(i) for i in range(3)]
    stale = _batch(1).model_copy(update={"batch_id": "vw-01:eda:1:again"})  # overlaps batch 1
    later = [_batch(i) for i in range(3, 5)]
    spool.put([*first, stale, *later])
    uplink = Uplink(spool, api_url=server.url)
    assert await uplink.drain(timeout_s=10)
    assert sorted(server.stored) == sorted(b.batch_id for b in first + later)
    (dead,) = spool.dead_letters()
    assert dead.batch_id == stale.batch_id and dead.status == 409
    assert "start_ns" in dead.reason


async def test_drain_times_out_when_api_stays_down(server: IngestServer, spool: Spool) -> None:
    spool.put([_batch(0)])
    uplink = Uplink(spool, api_url=server.url, backoff_initial_s=0.01, backoff_max_s=0.05)
    assert not await uplink.drain(timeout_s=0.3)
    assert spool.depth == 1 and spool.dead_depth == 0  # never dropped


async def test_wrong_url_is_not_dead_lettered(server: IngestServer, spool: Spool) -> None:
    server.start()
    spool.put([_batch(0)])
    uplink = Uplink(spool, api_url=server.url + "/nope", backoff_initial_s=0.01,
                    backoff_max_s=0.05)
    assert not await uplink.drain(timeout_s=0.3)
    assert spool.depth == 1 and spool.dead_depth == 0


def test_bad_options(spool: Spool) -> None:
    with pytest.raises(ValueError, match="max_batches_per_request"):
        Uplink(spool, api_url="http://x", max_batches_per_request=0)
