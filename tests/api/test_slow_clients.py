"""Slow request bodies over real loopback sockets (slowloris).

Clients send the headers of an upload, then its body a byte at a time: the server must answer
408 and close each connection after a bounded time, while it keeps serving others. An upload
that is slow but steady (above the minimum rate) must not be cut off.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from pathlib import Path

import httpx
from api_support import ADMIN_KEY, body, serve, settings_for, sim_batches

TIMEOUT_S = 2.0  # body_timeout_s of the test server
MIN_RATE = 1000.0  # body_min_bytes_per_s
CEILING_S = 90.0  # generous: the CI machine may be busy


def _headers(port: int, length: int, *, method: str = "POST", path: str = "/v1/ingest",
             close: bool = True) -> bytes:
    # Connection: close: the server closes once it has answered, so "read to EOF" is the
    # whole answer, whichever it is.
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n" + ("Connection: close\r\n" if close else "")
            + "\r\n").encode()


def _answer(raw: bytes) -> tuple[int, dict]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(rest)


def test_byte_at_a_time_bodies_are_cut_off_and_others_still_served(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, body_timeout_s=TIMEOUT_S, body_min_bytes_per_s=MIN_RATE)
    with serve(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        sel = selectors.DefaultSelector()
        answers: dict[int, bytes] = {}
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(_headers(port, 100_000, close=False))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            answers[i] = b""
        open_ = {key.data: key.fileobj for key in sel.get_map().values()}
        started = time.monotonic()
        served = 0
        # Trickle one byte per connection per round; a round ends when the server has
        # something to say or after 0.25 s. Done when the server has closed every connection.
        while open_:
            assert time.monotonic() - started < CEILING_S, f"{len(open_)} slow clients held"
            for s in list(open_.values()):
                # a failed send: the server is closing it; what it said is read below
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, BlockingIOError):
                    s.send(b" ")
            if served < 3:  # the server keeps answering other clients meanwhile
                assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
                served += 1
            for key, _ in sel.select(timeout=0.25):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)  # type: ignore[union-attr]
                except ConnectionResetError:
                    chunk = b""
                answers[key.data] += chunk
                if not chunk:  # closed by the server
                    sel.unregister(s)
                    s.close()  # type: ignore[union-attr]
                    del open_[key.data]
        sel.close()
        for raw in answers.values():
            status, detail = _answer(raw)
            assert status == 408, raw[:200]
            assert "request body too slow" in detail["detail"]
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_slow_but_steady_upload_is_not_cut_off(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, body_timeout_s=TIMEOUT_S, body_min_bytes_per_s=MIN_RATE)
    payload = json.dumps(body(sim_batches("steady1", 20))).encode()
    chunk = 4 * int(MIN_RATE)  # each chunk buys 4 s; sent every ~0.5 s: well above the rate
    assert len(payload) > 6 * chunk  # the whole upload takes longer than TIMEOUT_S
    with serve(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=CEILING_S) as s:
            s.sendall(_headers(port, len(payload)))
            for i in range(0, len(payload), chunk):
                s.sendall(payload[i:i + chunk])
                # Pace like a slow link, but stop at once if the server answers early.
                sel = selectors.DefaultSelector()
                sel.register(s, selectors.EVENT_READ)
                early = sel.select(timeout=0.5)
                sel.close()
                if early:
                    break
            raw = b""
            while more := s.recv(65536):
                raw += more
        status, answer = _answer(raw)
        assert status == 200, answer
        assert answer["stored"] == 4


def test_an_answer_before_the_body_closes_the_connection(tmp_path: Path) -> None:
    """A route that answers without reading the body (a GET with one): the rest of the body
    would be taken untimed on the kept-alive connection, so the server closes it instead."""
    settings = settings_for(tmp_path, body_timeout_s=TIMEOUT_S, body_min_bytes_per_s=MIN_RATE)
    with serve(settings) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=CEILING_S) as s:
            s.sendall(_headers(port, 100_000, method="GET", path="/healthz", close=False))
            raw = b""
            started = time.monotonic()
            while True:  # trickle the body until the server closes
                assert time.monotonic() - started < CEILING_S, "connection held"
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    s.send(b" ")
                sel = selectors.DefaultSelector()
                sel.register(s, selectors.EVENT_READ)
                ready = sel.select(timeout=0.25)
                sel.close()
                if ready:
                    try:
                        more = s.recv(65536)
                    except ConnectionResetError:
                        more = b""
                    if not more:
                        break
                    raw += more
        assert raw.startswith(b"HTTP/1.1 200") and b"connection: close" in raw.lower()
