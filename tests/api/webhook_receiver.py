"""A real webhook receiver on loopback for the alert tests: verifies signatures, follows a plan.

Each request takes the next step of ``plan`` (``200``, ``500``, ``"timeout"``: answer 200 only
after ``slow_s``, past the sender's timeout); when the plan is used up it answers 200.
"""

from __future__ import annotations

import json
import threading
import time
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


class Receiver:
    def __init__(self, secret: str = "", *, port: int = 0, plan: list[int | str] | None = None,
                 slow_s: float = 1.5) -> None:
        self.secret = secret
        self.plan = list(plan or [])
        self.slow_s = slow_s
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
                        self.headers.get("Wearemo-Delivery", ""), ok, json.loads(raw), step))
                if step == "timeout":
                    time.sleep(outer.slow_s)
                    step = 200
                code = int(step) if ok else 401
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
