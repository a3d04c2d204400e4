"""Timestamp jumps over real HTTP (issue 13): bounded work, timestamp bounds, fairness between
subjects, erase and shutdown while a subject is being processed, a responsive ``/healthz``.

The heavy subject of these tests is a skin-temperature patch's backlog: a sample every 5 s for
~17 h, uploaded at once. Each sample opens a 60-s window every 5 s, so it costs one window per
sample, exactly ``n - 12`` of them (a known total), and ~10-60 s of processing on these
machines: long enough to be caught in the middle.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, body, serve, settings_for, sim_batches
from simdata import T0
from websockets.sync.client import connect

from wearemo.samples import SampleBatch
from wearemo.store import SQLiteStore

pytestmark = pytest.mark.timeout(600)

S = 10**9
DAY = 86_400 * S


def _temp_backlog(subject: str, n: int = 12_000, *, per_batch: int = 500,
                  t0: int = T0) -> list[SampleBatch]:
    """``n`` temperature samples at 0.2 Hz from ``t0`` (aligned on the 5-s step): every
    window from ``t0 + 60 s`` to the last sample holds data, so processing makes ``n - 12``."""
    return [SampleBatch(batch_id=f"{subject}:temp:{k}", subject_id=subject, device_id="patch",
                        channel="temp", start_ns=t0 + k * per_batch * 5 * S, rate_hz=0.2,
                        values=[33.0 + 0.001 * (k % 7)] * per_batch)
            for k in range(n // per_batch)]


def _until(cond: Callable[[], object], what: str, timeout_s: float = 180.0) -> Any:
    """Wait for ``cond()`` to be truthy (polling an endpoint or a counter); return it."""
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _windows(c: httpx.Client, subject: str) -> int:
    r = c.get(f"/v1/subjects/{subject}")
    return int(r.json()["windows"]) if r.status_code == 200 else 0


def _post(c: httpx.Client, batches: list[SampleBatch]) -> httpx.Response:
    return c.post("/v1/ingest", json=body(batches))


@pytest.fixture(scope="module")
def inline_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(settings_for(tmp_path_factory.mktemp("timejump"))) as url:
        yield url


@pytest.fixture
def client(inline_url: str) -> Iterator[httpx.Client]:
    with admin_client(inline_url) as c:
        yield c


def _eda(batch_id: str, subject: str, start_ns: int, **kw: Any) -> SampleBatch:
    kw.setdefault("rate_hz", 4.0)
    n = len(kw["timestamps_ns"]) if "timestamps_ns" in kw else kw.pop("n", 4)
    if "timestamps_ns" in kw:
        kw.pop("rate_hz")
    return SampleBatch(batch_id=batch_id, subject_id=subject, device_id="watch", channel="eda",
                       start_ns=start_ns, values=[3.0 + 0.01 * i for i in range(n)], **kw)


# -- timestamp bounds at acceptance -------------------------------------------------------------


def test_a_batch_at_9e18_is_refused_whole_and_nothing_is_stored(client: httpx.Client) -> None:
    bad = _eda("far", "tj-9e18", 9 * 10**18)
    r = _post(client, [bad])
    assert r.status_code == 422, r.text
    [issue] = r.json()["detail"]
    assert issue["field"] == "batches.0.start_ns" and issue["type"] == "timestamp_out_of_bounds"
    for part in ("'far'", "'eda'", "'tj-9e18'", "2255-03-14", "WEAREMO_INGEST_MAX_AHEAD_S",
                 "300 s ahead"):
        assert part in issue["msg"], issue["msg"]
    assert client.get("/v1/subjects/tj-9e18").status_code == 404
    # msgpack and WebSocket bodies get the same answer.
    packed = msgpack.packb(body([bad]))
    r = client.post("/v1/ingest", content=packed, headers={"content-type": "application/msgpack"})
    assert r.status_code == 422 and r.json()["detail"] == [issue]
    ws_url = str(client.base_url).replace("http://", "ws://") + "/v1/ingest/ws"
    with connect(ws_url, additional_headers=bearer(ADMIN_KEY)) as ws:
        ws.send(packed)
        ws_answer = json.loads(ws.recv())
    assert ws_answer["status"] == 422 and ws_answer["detail"] == [issue]
    # Nothing moved the channel's ordering mark: data at the right time is taken.
    now = time.time_ns() // (5 * S) * 5 * S
    r = _post(client, [_eda("now", "tj-9e18", now - 60 * S)])
    assert r.status_code == 200 and r.json()["stored"] == 1
    assert client.get("/healthz").status_code == 200


def test_a_clock_years_ahead_refuses_the_request_and_names_every_bad_batch(
    client: httpx.Client,
) -> None:
    now = time.time_ns()
    good = _eda("ok", "tj-ahead", now - 3600 * S)
    ahead = now + 3 * 365 * DAY  # a watch whose clock was set three years ahead
    stamps = _eda("stamps", "tj-ahead", now - 1800 * S,
                  timestamps_ns=[now - 1800 * S, now - 1799 * S, ahead, ahead + S])
    slow = _eda("slow", "tj-ahead", now + 200 * S, rate_hz=0.01, n=3)  # 3rd sample at +400 s
    r = _post(client, [good, stamps, slow])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [d["field"] for d in detail] == ["batches.1.timestamps_ns.2", "batches.2.rate_hz"]
    assert "'stamps'" in detail[0]["msg"] and "has sample 2 at" in detail[0]["msg"]
    assert "3 samples at 0.01 Hz" in detail[1]["msg"]
    # Refused whole, like any invalid batch: the valid one was not stored either.
    assert client.get("/v1/subjects/tj-ahead").status_code == 404
    r = _post(client, [good])
    assert [x["status"] for x in r.json()["results"]] == ["stored"]


def test_samples_older_than_the_horizon_are_refused(client: httpx.Client) -> None:
    r = _post(client, [_eda("reset", "tj-old", 10**9)])  # a clock reset to 1970
    assert r.status_code == 422
    [issue] = r.json()["detail"]
    assert issue["field"] == "batches.0.start_ns"
    assert "1970-01-01T00:00:01Z" in issue["msg"] and "3650 days" in issue["msg"]
    assert "WEAREMO_INGEST_MAX_AGE_DAYS" in issue["msg"]
    assert client.get("/v1/subjects/tj-old").status_code == 404


def test_the_bridge_sets_a_wrong_clocks_batches_aside_and_delivers_the_rest(
    inline_url: str, tmp_path: Path,
) -> None:
    """The uplink (at-least-once from the bridge's spool) against the real API: the batches a
    watch stamped years ahead go to the spool's dead letters with the API's reason; the
    others arrive, once."""
    from firmware_bridge.spool import Spool
    from firmware_bridge.uplink import Uplink

    now = time.time_ns() // (5 * S) * 5 * S
    batches = [_eda(f"up{k}", "tj-bridge", now - 600 * S + k * 10 * S) for k in range(6)]
    batches[3] = _eda("up3", "tj-bridge", now + 3 * 365 * DAY)
    with Spool(tmp_path / "spool.db") as spool:
        spool.put(batches)
        uplink = Uplink(spool, api_url=inline_url, api_key=ADMIN_KEY, max_batches_per_request=4)
        assert asyncio.run(uplink.drain(timeout_s=60))
        [dead] = spool.dead_letters()
        assert dead.batch_id == "up3" and dead.status == 422
        assert "WEAREMO_INGEST_MAX_AHEAD_S" in dead.reason
    with admin_client(inline_url) as c:
        assert c.get("/v1/subjects/tj-bridge").json()["batches"] == 5
    assert uplink.stats.stored == 5 and uplink.stats.dead_lettered == 1


def test_the_bounds_are_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAREMO_INGEST_MAX_AHEAD_S", "3600")
    monkeypatch.setenv("WEAREMO_INGEST_MAX_AGE_DAYS", "null")  # no age bound
    settings = settings_for(tmp_path)
    assert (settings.ingest_max_ahead_s, settings.ingest_max_age_days) == (3600.0, None)
    now = time.time_ns()
    with serve(settings) as url, admin_client(url) as c:
        assert _post(c, [_eda("a", "tj-set", 10**9)]).status_code == 200  # no age bound
        assert _post(c, [_eda("b", "tj-set", now + 1800 * S)]).status_code == 200
        r = _post(c, [_eda("c", "tj-set", now + 7200 * S)])
        assert r.status_code == 422 and "3600 s ahead" in r.json()["detail"][0]["msg"]


# -- work bounded by the data -------------------------------------------------------------------


def test_a_small_batch_after_a_week_costs_the_windows_around_the_data(
    client: httpx.Client,
) -> None:
    before = sim_batches("tj-week", 120)
    r = _post(client, before)
    assert r.status_code == 200 and r.json()["states"] > 0
    last = max(b.end_ns for b in before)
    r = _post(client, [_eda("after-gap", "tj-week", last + 7 * DAY)])
    assert r.status_code == 200, r.text
    # Before: one window per 5-s step of the week, 120,960 (about 10 s and 170 MB each time).
    # Now: the windows still open before the gap (those holding its last minute, and the
    # ones the beat/EDA trackers held back: under (60 + 30) / 5), none for the gap itself.
    assert 0 < r.json()["windows"] <= (60 + 30) // 5
    states = client.get("/v1/subjects/tj-week/states", params={"limit": 100_000}).json()
    assert max(s["window_end_ns"] for s in states) <= last + 60 * S


# -- fairness, erase and shutdown in background mode --------------------------------------------


def _worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("wearemo-process-")}


def test_a_second_subject_is_processed_while_the_first_has_a_large_backlog(
    tmp_path: Path,
) -> None:
    backlog = _temp_backlog("tj-heavy")
    total = len(backlog) * 500 - 12
    with serve(settings_for(tmp_path, processing="background")) as url, \
            admin_client(url) as c:
        assert _post(c, backlog).status_code == 200  # one request: one queue entry
        assert _post(c, sim_batches("tj-light", 120)).status_code == 200
        _until(lambda: c.get("/v1/subjects/tj-light/state").status_code == 200,
               "the light subject's first state")
        done_when_light_served = _windows(c, "tj-heavy")
        # Before: one worker turn took 500 batches of a subject, so the light subject waited
        # for every window of the heavy backlog.
        assert done_when_light_served < total
        _until(lambda: _windows(c, "tj-heavy") == total, "the heavy backlog", 600)
        assert c.get("/v1/ingest/lag").json()["pending_batches"] == 0


def test_erase_completes_while_the_subject_is_being_processed(tmp_path: Path) -> None:
    backlog = _temp_backlog("tj-erase")
    total = len(backlog) * 500 - 12
    with serve(settings_for(tmp_path, processing="background")) as url, \
            admin_client(url) as c:
        assert _post(c, backlog).status_code == 200
        _until(lambda: _windows(c, "tj-erase") > 0, "processing to start")
        r = c.delete("/v1/admin/subjects/tj-erase")
        assert r.status_code == 200, r.text
        removed = r.json()["removed"]
        # It did not wait for the backlog: only the windows made so far were there to remove.
        assert removed["batches"] == len(backlog) and 0 < removed["windows"] < total
        assert c.get("/v1/subjects/tj-erase").status_code == 404
        # The worker went on to other work and left nothing of it behind.
        assert _post(c, sim_batches("tj-other", 120)).status_code == 200
        _until(lambda: c.get("/v1/ingest/lag").json()["pending_batches"] == 0,
               "the queue to empty")
        assert c.get("/v1/subjects/tj-other/state").status_code == 200
        assert c.get("/v1/subjects/tj-erase").status_code == 404


def test_shutdown_is_prompt_while_a_subject_is_processed_and_loses_nothing(
    tmp_path: Path,
) -> None:
    backlog = _temp_backlog("tj-stop")
    total = len(backlog) * 500 - 12
    settings = settings_for(tmp_path, processing="background")
    others = _worker_threads()
    with serve(settings) as url, admin_client(url) as c:
        mine = _worker_threads() - others
        assert mine
        assert _post(c, backlog).status_code == 200
        _until(lambda: _windows(c, "tj-stop") > 0, "processing to start")
    # serve() has asked uvicorn to exit: the lifespan closes the pipeline, whose worker stops
    # at its next slice instead of finishing the backlog (before: the whole 24-batch turn).
    _until(lambda: not any(t.is_alive() for t in mine), "the workers to stop", 60)
    with SQLiteStore(tmp_path / "wearemo.sqlite3") as store:
        pending = store.pending_counts()
        stored = len(store.windows("tj-stop", limit=100_000))
    assert pending.get("tj-stop", (0, 0))[0] > 0 and stored < total
    # The next start processes the rest: every window, once.
    with serve(settings) as url, admin_client(url) as c:
        _until(lambda: _windows(c, "tj-stop") == total, "the rest of the backlog", 600)
        ends = [s["window_end_ns"] for s in
                c.get("/v1/subjects/tj-stop/states", params={"limit": 100_000}).json()]
        assert len(ends) == len(set(ends)) == total


# -- /healthz while every worker thread of the server waits -------------------------------------


def _threads_in(function: str, file_suffix: str) -> int:
    """Threads of this process currently inside ``function`` of a file ending so."""
    n = 0
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code.co_name == function and f.f_code.co_filename.endswith(file_suffix):
                n += 1
                break
            f = f.f_back
    return n


async def _until_async(cond: Callable[[], bool], what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_healthz_answers_while_every_pool_thread_waits_for_a_busy_subject(
    tmp_path: Path,
) -> None:
    """An inline upload that takes long holds its subject; more uploads of that subject wait
    for it until they hold every thread of the server's pool (anyio's 40). ``/healthz`` must
    not need a thread of that pool (before, it waited until the long upload was done)."""
    heavy = _temp_backlog("tj-busy", n=12_000)
    small = _eda("small", "tj-busy", T0 + DAY)  # sent 40 times: stored once, then duplicates
    settings = settings_for(tmp_path, rate_limit_requests_per_s=0, rate_limit_samples_per_s=0)

    async def scenario(url: str) -> tuple[int, int, bool]:
        done: list[int] = []
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits,
                                     headers=bearer(ADMIN_KEY)) as c:
            async def post(batches: list[SampleBatch]) -> None:
                r = await c.post("/v1/ingest", json=body(batches))
                assert r.status_code == 200, r.text
                done.append(1)

            first = asyncio.create_task(post(heavy))
            await _until_async(lambda: _threads_in("_process", "wearemo/pipeline.py") >= 1,
                               "the long upload to be processed")
            rest = [asyncio.create_task(post([small])) for _ in range(40)]
            await _until_async(lambda: _threads_in("ingest", "wearemo/pipeline.py") >= 40,
                               "every pool thread to wait for the subject")
            r = await c.get("/healthz")
            finished_then = len(done)
            heavy_done_then = first.done()
            await asyncio.gather(first, *rest)
        return r.status_code, finished_then, heavy_done_then

    with serve(settings) as url:
        status, finished_then, heavy_done_then = asyncio.run(scenario(url))
    assert status == 200 and finished_then == 0 and not heavy_done_then

