"""Revocation, expiry, key deletion and grant changes reach connections that are already open:
single- and multi-subject WebSockets, Server-Sent Events and the ingest WebSocket, over real
loopback connections to uvicorn (issue 13, item 2)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import (
    ADMIN_KEY,
    admin_client,
    bearer,
    body,
    create_key,
    serve,
    settings_for,
    sim_batches,
)
from simdata import T0, S
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from wearemo.api.auth import WS_CLOSE_FORBIDDEN, WS_CLOSE_UNAUTHORIZED
from wearemo.cli import app as cli

pytestmark = pytest.mark.e2e

#: Generous ceiling for "within seconds" on a shared CI machine (the waits end on the event).
CEILING_S = 30.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("revoke")


@pytest.fixture(scope="module")
def url(data_dir: Path) -> Iterator[str]:
    # A long re-check interval: in-process changes must not depend on it (they notify); the
    # cross-process test below uses its own server with a short one.
    with serve(settings_for(data_dir, auth_recheck_interval_s=3600)) as base:
        yield base


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


def key_id(secret: str) -> str:
    return secret.split("_")[1]


def upload(base: str, batches: list[Any], per_request: int = 6) -> None:
    with admin_client(base) as c:
        for i in range(0, len(batches), per_request):
            r = c.post("/v1/ingest", json=body(batches[i:i + per_request]))
            assert r.status_code == 200, r.text


def history(base: str, subject: str) -> list[dict[str, Any]]:
    with admin_client(base) as c:
        out: list[dict[str, Any]] = c.get(f"/v1/subjects/{subject}/states",
                                          params={"limit": 100_000}).json()
    return out


class WSReader:
    """A live WebSocket read in a thread: the states it got and how it was closed."""

    def __init__(self, base: str, path: str, key: str) -> None:
        self.states: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.ended = threading.Event()
        self._opened = threading.Event()
        self._ws: ClientConnection | None = None
        self._thread = threading.Thread(target=self._run, args=(ws_url(base, path), key),
                                        daemon=True)
        self._thread.start()
        assert self._opened.wait(30) and self._ws is not None, "the WebSocket did not open"

    def _run(self, url: str, key: str) -> None:
        try:
            with ws_connect(url, open_timeout=30, additional_headers=bearer(key)) as ws:
                self._ws = ws
                self._opened.set()
                while True:
                    self.states.append(json.loads(ws.recv()))
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                self.close_code, self.close_reason = exc.rcvd.code, exc.rcvd.reason
        finally:
            self._opened.set()
            self.ended.set()

    def wait_closed(self) -> tuple[int | None, str]:
        assert self.ended.wait(CEILING_S), "the stream is still open"
        return self.close_code, self.close_reason

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()


class SSEStream:
    """Server-Sent Events read in a thread: events as dicts, and whether the stream ended."""

    def __init__(self, base: str, path: str, key: str) -> None:
        self.events: list[dict[str, str]] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self._ready = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(60, read=None), headers=bearer(key))
        self._thread = threading.Thread(target=self._run, args=(base + path,), daemon=True)
        self._thread.start()
        assert self._ready.wait(30)

    def _run(self, full: str) -> None:
        try:
            with self._client.stream("GET", full) as r:
                self.status = r.status_code
                self._ready.set()
                event: dict[str, str] = {}
                for line in r.iter_lines():
                    if not line:
                        if "data" in event:
                            self.events.append(event)
                        event = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        event[name] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()
            self.ended.set()

    def states(self) -> list[dict[str, Any]]:
        return [json.loads(e["data"]) for e in self.events if e.get("event") == "state"]

    def errors(self) -> list[str]:
        return [e["data"] for e in self.events if e.get("event") == "error"]

    def wait_ended(self) -> None:
        assert self.ended.wait(CEILING_S), "the event stream is still open"

    def close(self) -> None:
        self._client.close()


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + CEILING_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reader_on(base: str, cohort: str, subjects: list[str], **extra: object) -> str:
    with admin_client(base) as c:
        assert c.post("/v1/admin/cohorts", json={"name": cohort, "subjects": subjects}
                      ).status_code == 201
        return create_key(c, "reader", cohorts=[cohort], **extra)


def test_revoking_a_key_ends_every_open_stream(url: str) -> None:
    upload(url, sim_batches("rv-a", 20) + sim_batches("rv-b", 20, seed=5))
    key = reader_on(url, "rv", ["rv-a", "rv-b"])
    single = WSReader(url, "/v1/subjects/rv-a/live", key)
    multi = WSReader(url, "/v1/live?subject=rv-a&subject=rv-b", key)
    sse = SSEStream(url, "/v1/subjects/rv-a/events", key)
    sse_multi = SSEStream(url, "/v1/events?subject=rv-a&subject=rv-b", key)
    assert sse.status == sse_multi.status == 200
    with admin_client(url) as c:
        assert c.delete(f"/v1/admin/keys/{key_id(key)}").status_code == 200
    for ws in (single, multi):
        code, reason = ws.wait_closed()
        assert code == WS_CLOSE_UNAUTHORIZED and "revoked" in reason
    for stream in (sse, sse_multi):
        stream.wait_ended()
        assert any("revoked" in e for e in stream.errors())
    # and nothing more reaches them: new states after the revocation were never sent
    upload(url, sim_batches("rv-a", 90)[4:])
    assert history(url, "rv-a")
    assert single.states == multi.states == [] and sse.states() == sse_multi.states() == []
    # the audit log records that the streams were ended, and why
    with admin_client(url) as c:
        ended = [e for e in c.get("/v1/admin/audit").json()
                 if e["key_id"] == key_id(key) and e["outcome"] == WS_CLOSE_UNAUTHORIZED]
    assert {e["action"] for e in ended} >= {"WS /v1/subjects/{subject_id}/live", "WS /v1/live"}


def test_expired_key_ends_its_stream(url: str) -> None:
    upload(url, sim_batches("ex-a", 20))
    key = reader_on(url, "ex", ["ex-a"], expires_in_s=5)
    ws = WSReader(url, "/v1/subjects/ex-a/live", key)
    sse = SSEStream(url, "/v1/subjects/ex-a/events", key)
    code, reason = ws.wait_closed()  # no change notification: the key's expiry itself
    assert code == WS_CLOSE_UNAUTHORIZED and "expired" in reason
    sse.wait_ended()
    assert any("expired" in e for e in sse.errors())


def test_grant_changes_filter_or_end_streams(url: str) -> None:
    a, b = sim_batches("gr-a", 120), sim_batches("gr-b", 120, seed=5)
    upload(url, a[:2] + b[:2])
    key = reader_on(url, "gr", ["gr-a", "gr-b"])
    single_a = WSReader(url, "/v1/subjects/gr-a/live", key)
    single_b = WSReader(url, "/v1/subjects/gr-b/live", key)
    multi = WSReader(url, "/v1/live?subject=gr-a&subject=gr-b", key)
    sse_multi = SSEStream(url, "/v1/events?subject=gr-a&subject=gr-b", key)
    sse_a = SSEStream(url, "/v1/subjects/gr-a/events", key)
    with admin_client(url) as c:
        assert c.delete("/v1/admin/cohorts/gr/subjects/gr-a").status_code == 200
    code, reason = single_a.wait_closed()
    assert code == WS_CLOSE_FORBIDDEN and "gr-a" in reason
    sse_a.wait_ended()
    assert any("gr-a" in e for e in sse_a.errors())
    # a's data first, then b's: once b's states arrived, a's would have come before them
    upload(url, a[2:])
    upload(url, b[2:])
    want_b = history(url, "gr-b")
    assert want_b and len(history(url, "gr-a")) == len(want_b)
    wait_until(lambda: len(multi.states) >= len(want_b), "b's states on the multi WebSocket")
    wait_until(lambda: len(sse_multi.states()) >= len(want_b), "b's states on the multi SSE")
    assert multi.states == want_b and sse_multi.states() == want_b  # filtered: none of a's
    assert single_b.states == want_b
    assert not multi.ended.is_set() and not sse_multi.ended.is_set()
    # taking the cohort away leaves the streams nothing: they end
    with admin_client(url) as c:
        assert c.delete(f"/v1/admin/cohorts/gr/grants/{key_id(key)}").status_code == 200
    for ws in (multi, single_b):
        code, reason = ws.wait_closed()
        assert code == WS_CLOSE_FORBIDDEN and "gr-b" in reason
    sse_multi.wait_ended()
    assert sse_multi.errors()


def test_erasing_a_subject_ends_reader_streams(url: str) -> None:
    upload(url, sim_batches("er-a", 20) + sim_batches("er-b", 20, seed=5))
    key = reader_on(url, "er", ["er-a", "er-b"])
    single = WSReader(url, "/v1/subjects/er-a/live", key)
    multi = WSReader(url, "/v1/live?subject=er-a&subject=er-b", key)
    with admin_client(url) as c:
        assert c.delete("/v1/admin/subjects/er-a").status_code == 200
    code, reason = single.wait_closed()
    assert code == WS_CLOSE_FORBIDDEN and "er-a" in reason
    assert not multi.ended.wait(0.5)  # er-b is still granted: filtered, not ended
    upload(url, sim_batches("er-b", 90, seed=5)[4:])
    wait_until(lambda: len(multi.states) >= len(history(url, "er-b")), "er-b's states")
    assert {s["subject_id"] for s in multi.states} == {"er-b"}
    multi.close()


def _eda(batch_id: str, subject: str, start_s: float) -> dict[str, object]:
    return {"batch_id": batch_id, "subject_id": subject, "device_id": "d1", "channel": "eda",
            "start_ns": T0 + round(start_s * S), "rate_hz": 4.0, "values": [3.0] * 8}


def _batches(base: str, subject: str) -> int:
    with admin_client(base) as c:
        r = c.get(f"/v1/subjects/{subject}")
        return int(r.json()["batches"]) if r.status_code == 200 else 0


def test_revoked_device_key_ingest_websocket_is_refused_and_closed(url: str) -> None:
    with admin_client(url) as c:
        idle_key = create_key(c, "device", subjects=["iw-idle"])
        busy_key = create_key(c, "device", subjects=["iw-busy"])
    ingest = ws_url(url, "/v1/ingest/ws")
    with ws_connect(ingest, additional_headers=bearer(idle_key)) as idle, \
            ws_connect(ingest, additional_headers=bearer(busy_key)) as busy:
        for ws, subject in ((idle, "iw-idle"), (busy, "iw-busy")):
            ws.send(json.dumps({"batches": [_eda("m0", subject, 0)]}))
            assert json.loads(ws.recv(timeout=30))["status"] == 200
        # An idle socket is closed soon after the revocation, with the reason.
        with admin_client(url) as c:
            assert c.delete(f"/v1/admin/keys/{key_id(idle_key)}").status_code == 200
        with pytest.raises(ConnectionClosed) as closed:
            idle.recv(timeout=CEILING_S)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == WS_CLOSE_UNAUTHORIZED
        assert "revoked" in closed.value.rcvd.reason
        # A message sent right after the revocation is refused (never stored), then the
        # socket is closed: whichever the client sees first, an answer 401 or the close.
        with admin_client(url) as c:
            assert c.delete(f"/v1/admin/keys/{key_id(busy_key)}").status_code == 200
        answers: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            busy.send(json.dumps({"batches": [_eda("m1", "iw-busy", 2)]}))
            while True:
                answers.append(json.loads(busy.recv(timeout=CEILING_S)))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == WS_CLOSE_UNAUTHORIZED
        assert all(a["status"] == 401 for a in answers), answers
    assert _batches(url, "iw-busy") == 1 and _batches(url, "iw-idle") == 1


def test_changes_made_by_another_process_reach_open_streams(tmp_path: Path) -> None:
    """The CLI (or anyone editing the key file) works on the SQLite file, not through the
    API: the running API notices within ``auth_recheck_interval_s``."""
    with serve(settings_for(tmp_path, auth_recheck_interval_s=0.2)) as base, ExitStack() as stack:
        upload(base, sim_batches("xp-a", 20))
        revoked = reader_on(base, "xp1", ["xp-a"])
        deleted = reader_on(base, "xp2", ["xp-a"])
        with admin_client(base) as c:
            device = create_key(c, "device", subjects=["xp-a"])
        ws_revoked = WSReader(base, "/v1/subjects/xp-a/live", revoked)
        sse_deleted = SSEStream(base, "/v1/subjects/xp-a/events", deleted)
        ws_deleted = WSReader(base, "/v1/live?subject=xp-a", deleted)
        ingest = ws_connect(ws_url(base, "/v1/ingest/ws"), additional_headers=bearer(device))
        stack.enter_context(ingest)
        ingest.send(json.dumps({"batches": [_eda("x0", "xp-a", 200)]}))
        assert json.loads(ingest.recv(timeout=30))["status"] == 200

        runner = CliRunner()
        for k in (revoked, device):
            done = runner.invoke(cli, ["keys", "revoke", key_id(k), "--data-dir", str(tmp_path)])
            assert done.exit_code == 0, done.output
        # a key deleted outright from the file (its grants first: foreign keys)
        db = sqlite3.connect(tmp_path / "auth.sqlite3")
        with db:
            db.execute("DELETE FROM cohort_grants WHERE key_id = ?", (key_id(deleted),))
            db.execute("DELETE FROM keys WHERE key_id = ?", (key_id(deleted),))
        db.close()

        code, reason = ws_revoked.wait_closed()
        assert code == WS_CLOSE_UNAUTHORIZED and "revoked" in reason
        code, _ = ws_deleted.wait_closed()
        assert code == WS_CLOSE_UNAUTHORIZED
        sse_deleted.wait_ended()
        assert sse_deleted.errors()
        with pytest.raises(ConnectionClosed) as closed:
            ingest.recv(timeout=CEILING_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == WS_CLOSE_UNAUTHORIZED
        with httpx.Client(base_url=base, headers=bearer(ADMIN_KEY)) as c:
            assert c.get("/v1/subjects/xp-a").json()["batches"] == 5  # 4 sim + 1 over the socket
