"""Real webhook receivers on loopback for the alert tests.

:class:`Receiver` verifies signatures and follows a plan: each request takes the next step of
``plan`` (``200``, ``500``, ``302`` (to ``location``), ``"timeout"``: answer 200 only after
``slow_s``, past the sender's timeout); when the plan is used up it answers 200.

:class:`SlowReceiver` is a raw TCP server for slow and greedy answers: it trickles its answer
one byte every ``interval_s`` (for as long as the client stays), or sends a ``huge_bytes``
body as fast as the client reads it, and counts connections, hang-ups and bytes sent.
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from wearemo.alerts import verify_signature


@dataclass
class Received:
    event: str
    delivery_id: str
    signature_ok: bool
    body: dict[str, Any]
    answered: int | str
    host: str = ""


class Receiver:
    def __init__(self, secret: str = "", *, port: int = 0, plan: list[int | str] | None = None,
                 slow_s: float = 1.5, host: str = "127.0.0.1", location: str = "") -> None:
        self.secret = secret
        self.plan = list(plan or [])
        self.slow_s = slow_s
        self.location = location
        self.received: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with outer._lock:
                    step = outer.plan.pop(0) if outer.plan else 200
                    ok = verify_signature(outer.secret.encode(), raw,
                                          self.headers.get("Wearemo-Signature", ""))
                    outer.received.append(Received(
                        self.headers.get("Wearemo-Event", ""),
                        self.headers.get("Wearemo-Delivery", ""), ok, json.loads(raw), step,
                        self.headers.get("Host", "")))
                if step == "timeout":
                    time.sleep(outer.slow_s)
                    step = 200
                code = int(step) if ok else 401
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(what: Callable[[], Any], timeout_s: float = 30.0, *, why: str = "") -> Any:
    """Poll ``what`` until it is truthy (a generous ceiling, never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, f"condition not met in {timeout_s:g} s: {why}"
        time.sleep(0.05)


class SlowReceiver:
    """A TCP server answering every request slowly (``interval_s``) or hugely (``huge_bytes``).

    Counters (under ``lock``): ``requests`` read, ``open`` answers in progress now and the most
    at once (``max_open``), ``hung_up`` (the client closed before the answer was complete),
    ``completed`` and ``bytes_sent``.
    """

    def __init__(self, host: str = "127.0.0.1", *, interval_s: float = 1.0,
                 huge_bytes: int | None = None) -> None:
        self.interval_s = interval_s
        self.huge_bytes = huge_bytes
        self.lock = threading.Lock()
        self.requests = self.open = self.max_open = self.hung_up = self.completed = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                if not outer._read_request(sock):
                    return
                with outer.lock:
                    outer.requests += 1
                    outer.open += 1
                    outer.max_open = max(outer.max_open, outer.open)
                try:
                    done = outer._answer(sock)
                except OSError:
                    done = False
                with outer.lock:
                    outer.open -= 1
                    outer.completed += done
                    outer.hung_up += not done

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _read_request(sock: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return False
            body += chunk
        return True

    def _answer(self, sock: socket.socket) -> bool:
        """Send the answer; True if it was sent whole, False if the client hung up."""
        if self.huge_bytes is not None:
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.huge_bytes}\r\n\r\n"
                         .encode())
            chunk = b"\0" * (256 * 1024)
            left = self.huge_bytes
            while left > 0 and not self._stop.is_set():
                n = sock.send(chunk[:left])
                left -= n
                with self.lock:
                    self.bytes_sent += n
            return left == 0
        # A 200 whose status line, headers and 1 MB body come one byte at a time: at 1 s per
        # byte it never ends while the test runs.
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000
        for i in range(len(answer)):
            sock.send(answer[i:i + 1])
            with self.lock:
                self.bytes_sent += 1
            readable, _, _ = select.select([sock], [], [], self.interval_s)
            if self._stop.is_set():
                return False
            if readable and not sock.recv(1):  # EOF: the client gave up
                return False
        return True

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {"requests": self.requests, "open": self.open, "max_open": self.max_open,
                    "hung_up": self.hung_up, "completed": self.completed,
                    "bytes_sent": self.bytes_sent}

    def __enter__(self) -> SlowReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
