"""Store-test helpers: real servers (influxd 1.6.7, victoria-metrics) on loopback.

Each is started once per session from its Debian package's binary (``scripts/servers.sh``
installs them; ``make test`` runs it), with a generated configuration in a temp dir, on free
loopback ports, and stopped at the end. A missing binary fails the tests with the install hint:
CI must exercise them, never skip them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HINT = "run `sudo bash scripts/servers.sh` (or `apt-get install influxdb victoria-metrics`)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed: {HINT}", pytrace=False)
    return path


@dataclass
class Server:
    """A running server process and its base URL; ``stop``/``start`` keep its data dir."""

    name: str
    argv: list[str]
    url: str
    ready_path: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code < 300:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        tail = self.log.read_text()[-2000:]
        raise RuntimeError(f"{self.name} not ready in {timeout_s} s: {tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


INFLUXD_CONF = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[coordinator]
  max-select-point = 0
  max-select-series = 0
[retention]
  enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
  max-row-limit = 0
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
"""
