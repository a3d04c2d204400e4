"""Live states over real HTTP: WebSocket (``websockets``) and SSE (httpx streaming) clients
receive every state while a wearable uploads over HTTP; SSE resumes from Last-Event-ID; slow
clients are cut off with a reason without holding ingest back."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, body, serve, settings_for, sim_batches
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from wearemo.samples import SampleBatch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = settings_for(tmp_path_factory.mktemp("live"), live_queue_size=4)
    with serve(settings, sndbuf=4096) as base:
        yield base


def connect_ws(url: str, **kw: Any):
    """A WebSocket client sending the admin key."""
    return ws_connect(url, additional_headers=bearer(ADMIN_KEY), **kw)


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


def upload(base: str, batches: list[SampleBatch], per_request: int = 6) -> None:
    with httpx.Client(base_url=base, timeout=60, headers=bearer(ADMIN_KEY)) as c:
        for i in range(0, len(batches), per_request):
            r = c.post("/v1/ingest", json=body(batches[i:i + per_request]))
            assert r.status_code == 200, r.text


def history(base: str, subject: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/v1/subjects/{subject}/states", params={"limit": 100_000},
                  headers=bearer(ADMIN_KEY))
    out: list[dict[str, Any]] = r.json()
    return out


class SSEReader:
    """Reads ``text/event-stream`` with httpx in a thread; events as (event, id, data) dicts."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, str]] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base + path, headers or {}),
                                        daemon=True)
        self._thread.start()
        assert self._ready.wait(30)

    def _run(self, full: str, headers: dict[str, str]) -> None:
        with httpx.Client(timeout=httpx.Timeout(60, read=None), headers=bearer(ADMIN_KEY)) as c, \
                c.stream("GET", full, headers=headers) as r:
            self.status = r.status_code
            self._ready.set()
            event: dict[str, str] = {}
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if not line:
                    if "data" in event:
                        self.events.append(event)
                    event = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    event[key] = value.removeprefix(" ")

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(e["data"]) for e in self.events if e.get("event") == "state"]

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.states()) < n:
            assert time.monotonic() < deadline, f"{len(self.states())} of {n} events"
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def ws_collect(base: str, path: str, n: int, out: list[dict[str, Any]],
               opened: threading.Event) -> None:
    with connect_ws(ws_url(base, path), open_timeout=30) as ws:
        opened.set()
        while len(out) < n:
            out.append(json.loads(ws.recv(timeout=60)))


def test_ws_and_sse_get_every_state_while_ingesting(url: str) -> None:
    batches = sim_batches("live1", 150)
    upload(url, batches[:2])  # the subject exists (no state before the first 60-s window)
    sse = SSEReader(url, "/v1/subjects/live1/events")
    assert sse.status == 200
    got: list[dict[str, Any]] = []
    opened = threading.Event()
    ws = threading.Thread(target=ws_collect, args=(url, "/v1/subjects/live1/live", 17, got,
                                                   opened))
    ws.start()
    assert opened.wait(30)
    upload(url, batches[2:])
    ws.join(60)
    want = history(url, "live1")
    # windows ending 60..140 s (the trackers hold the last 10 s back); each once, in order
    assert len(want) == 17
    assert got == want
    sse.wait_for(len(want))
    assert sse.states() == want
    assert [int(e["id"]) for e in sse.events] == [s["window_end_ns"] for s in want]
    sse.stop()


def test_sse_resumes_from_last_event_id(url: str) -> None:
    batches = sim_batches("live2", 200)
    upload(url, batches[:14])  # 70 s: the state ending at 60 s
    first = SSEReader(url, "/v1/subjects/live2/events", {"Last-Event-ID": "0"})
    first.wait_for(1)  # the replay from the store
    upload(url, batches[14:20])  # to 100 s: live states 65..90
    first.wait_for(7)
    last_id = first.events[-1]["id"]
    first.stop()
    upload(url, batches[20:30])  # to 150 s, while disconnected: 95..140 missed
    second = SSEReader(url, "/v1/subjects/live2/events", {"Last-Event-ID": last_id})
    upload(url, batches[30:])  # to 200 s: live again
    want = history(url, "live2")
    assert len(want) == 27
    second.wait_for(len(want) - 7)
    # missed states from the store, then live ones: each exactly once, in order
    assert first.states() == want[:7]
    assert second.states() == want[7:]
    second.stop()


def test_multi_subject_streams(url: str) -> None:
    a, b = sim_batches("multi-a", 90), sim_batches("multi-b", 90, seed=5)
    upload(url, a[:2] + b[:2])
    sse = SSEReader(url, "/v1/events?subject=multi-a&subject=multi-b")
    got: list[dict[str, Any]] = []
    opened = threading.Event()
    ws = threading.Thread(target=ws_collect, args=(url, "/v1/live?subject=multi-a&subject=multi-b",
                                                   10, got, opened))
    ws.start()
    assert opened.wait(30)
    upload(url, [x for pair in zip(a[2:], b[2:], strict=True) for x in pair])
    ws.join(60)
    want = {s: history(url, s) for s in ("multi-a", "multi-b")}
    assert [len(v) for v in want.values()] == [5, 5]
    for subject, states in want.items():
        assert [s for s in got if s["subject_id"] == subject] == states
    sse.wait_for(10)
    for subject, states in want.items():
        assert [s for s in sse.states() if s["subject_id"] == subject] == states
    # the id is a cursor over both subjects
    last = dict(p.split("=") for p in sse.events[-1]["id"].split(","))
    assert {k: int(v) for k, v in last.items()} == {
        s: v[-1]["window_end_ns"] for s, v in want.items()}
    sse.stop()


def test_unknown_subjects_and_bad_parameters(url: str) -> None:
    upload(url, sim_batches("known", 10))
    with pytest.raises(InvalidStatus) as err, connect_ws(ws_url(url, "/v1/subjects/nobody/live")):
        pass
    assert err.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as err, \
            connect_ws(ws_url(url, "/v1/live?subject=known&subject=nobody")):
        pass
    assert err.value.response.status_code == 404
    with admin_client(url) as c:
        r = c.get("/v1/subjects/nobody/events")
        assert r.status_code == 404 and "nobody" in r.json()["detail"]
        r = c.get("/v1/events", params={"subject": ["known", "nobody"]})
        assert r.status_code == 404 and "nobody" in r.json()["detail"]
        for params, field in (({}, "subject"), ({"subject": "bad id!"}, "subject.0")):
            r = c.get("/v1/events", params=params)
            assert r.status_code == 422 and [d["field"] for d in r.json()["detail"]] == [field]
        r = c.get("/v1/subjects/known/events", headers={"Last-Event-ID": "yesterday"})
        assert r.status_code == 422
        assert [d["field"] for d in r.json()["detail"]] == ["last-event-id"]


def test_slow_client_is_disconnected_and_ingest_goes_on(url: str) -> None:
    batches = sim_batches("slow", 600)
    upload(url, batches[:2])
    # A client that stops reading (one frame buffered, a small receive window): the small
    # socket buffers fill (no compression: states compress ~10x), the server's sends stall
    # and its queue (4 states here) overflows.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    with connect_ws(ws_url(url, "/v1/subjects/slow/live"), sock=sock, open_timeout=30,
                 max_queue=1, compression=None) as ws:
        started = time.monotonic()
        upload(url, batches[2:], per_request=2)  # many small deliveries, as a live feed
        took = time.monotonic() - started
        n_states = len(history(url, "slow"))
        assert n_states == 107  # every state stored: ingest was never held back
        received = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
                received += 1
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013
    assert "client too slow" in closed.value.rcvd.reason
    assert received < n_states
    assert took < 120
