"""Session fixtures: influxd 1.6.7 and victoria-metrics on loopback (see servers.py).

A missing binary fails the tests with the install hint: CI must exercise them, never skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import INFLUXD_CONF, Server, binary, free_port


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """influxd (Debian's 1.6.7) with its own config, dirs and free loopback ports."""
    exe = binary("influxd")
    root = tmp_path_factory.mktemp("influxd")
    http = free_port()
    conf = root / "influxdb.conf"
    conf.write_text(INFLUXD_CONF.format(root=root, rpc=free_port(), http=http))
    server = Server("influxd", [exe, "-config", str(conf)], f"http://127.0.0.1:{http}",
                    "/ping", root / "influxd.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """victoria-metrics (Debian's package): accepts the InfluxDB line protocol on /api/v2/write."""
    exe = binary("victoria-metrics")
    root = tmp_path_factory.mktemp("vm")
    port = free_port()
    server = Server(
        "victoria-metrics",
        [exe, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={root / 'data'}",
         "-retentionPeriod=100y", "-search.latencyOffset=0s", "-loggerLevel=ERROR"],
        f"http://127.0.0.1:{port}", "/health", root / "vm.log")
    server.start()
    yield server
    server.stop()
