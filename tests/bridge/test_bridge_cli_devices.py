"""The bridge CLI as in the field: several wearables by name on one bridge, the live status
table, and ``--chaos`` link drops; plus the status table's arithmetic.

The multi-device test runs four processes over the virtual radio (HCI-over-TCP): two virtual
wearables, each on its own controller, and one bridge on a third controller that finds both by
advertised name (``--device NAME=SUBJECT`` twice) through the bumble backend, and real HTTP to
an ingest server on loopback.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge_ingest_server import IngestServer

from firmware_bridge.__main__ import main as bridge_main
from firmware_bridge.__main__ import parse_device
from firmware_bridge.runner import VirtualRunConfig, run_virtual
from firmware_bridge.status import StatusSnapshot, _Device, status_table

SENSOR_CHANNELS = ("ppg", "eda", "temp", "acc")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[IngestServer]:
    srv = IngestServer()
    srv.start()
    yield srv
    srv.stop()


def test_parse_device_addresses_names_and_subjects() -> None:
    t = parse_device("aa:bb:cc:dd:ee:0f=s-01")
    assert (t.address, t.name, t.subject, t.id) == ("aa:bb:cc:dd:ee:0f", None, "s-01",
                                                    "ble-aabbccddee0f")
    mac = parse_device("12345678-9ABC-DEF0-1234-56789ABCDEF0")  # CoreBluetooth UUID
    assert mac.address is not None and mac.subject == mac.id
    named = parse_device("Polar H10 1A2B3C4D")
    assert named.name == "Polar H10 1A2B3C4D" and named.subject == "ble-polar-h10-1a2b3c4d"
    for bad in ("", "=s01", "dev="):
        with pytest.raises(ValueError, match="NAME_OR_ADDRESS"):
            parse_device(bad)


@pytest.mark.parametrize("argv, message", [
    (["--device", "a=s1", "--device", "b=s1"], "unique"),
    (["--device", "=s1"], "NAME_OR_ADDRESS"),
    (["--device", "a", "--chaos"], "--chaos needs --virtual"),
])
def test_cli_refuses_bad_device_lists(argv: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bridge_main(["run", "--api", "http://127.0.0.1:9", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _device(samples: int, connected: bool = True) -> _Device:
    return _Device("vw-01", "s1", connected, 2, samples, 1, 3, 0)


def test_status_table_rates_and_uplink_state() -> None:
    from rich.console import Console

    before = StatusSnapshot(at=10.0, devices=(_device(1000),))
    now = StatusSnapshot(at=12.0, devices=(_device(1500),), spool_depth=7,
                         uplink_error="connection refused", retries=4)
    console = Console(width=200, record=True)
    console.print(status_table(now, before))
    text = console.export_text()
    row = next(line for line in text.splitlines() if "vw-01" in line)
    assert "250" in row.split()  # (1500 - 1000) samples / 2 s
    assert "spool 7 batches queued" in text and "down (connection refused)" in text
    up = StatusSnapshot(at=13.0, devices=(_device(1500, connected=False),))
    console = Console(width=200, record=True)
    console.print(status_table(up, now))
    text = console.export_text()
    assert "API up" in text and "searching" in text


async def test_chaos_drops_on_one_bridge_lose_nothing(server: IngestServer,
                                                      tmp_path: Path) -> None:
    cfg = VirtualRunConfig(api_url=server.url, spool_path=tmp_path / "spool.db", n_virtual=2,
                           source="sim", speed=10, duration_s=40, seed=11, drain_timeout_s=30,
                           chaos_drops=2, live=True)
    report = await run_virtual(cfg)
    assert report.drained and report.spool_depth == 0
    stored = server.samples()
    for subject, sub in report.subjects.items():
        assert sub.link_losses >= 2, (subject, sub)  # the chaos drops happened
        for ch in SENSOR_CHANNELS:  # resumed by sequence: every sample exactly once
            assert stored.get((subject, ch), 0) == sub.sent[ch], (subject, ch)
    assert all(n == 1 for n in server.sample_multiplicity().values())


@pytest.mark.ble
@pytest.mark.timeout(180)
def test_one_bridge_several_wearables_by_name(server: IngestServer, tmp_path: Path) -> None:
    ports = [_port() for _ in range(3)]
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("ab") as f:
            p = subprocess.Popen([sys.executable, "-m", *args], stdout=f, stderr=f)
        procs.append(p)
        return p

    try:
        spawn(["firmware_bridge.virtual_wearable.radio",
               *(f"tcp-server:127.0.0.1:{p}" for p in ports)], "radio.log")
        time.sleep(1.5)
        wearables = [spawn(["firmware_bridge.virtual_wearable", "--transport",
                            f"tcp-client:127.0.0.1:{ports[k]}", "--source", "sim", "--seed",
                            str(k), "--duration", "30", "--speed", "3", "--name",
                            f"wearemo-multi-{k}", "--linger", "40", "--report",
                            str(tmp_path / f"wearable-{k}.json")], f"wearable-{k}.log")
                     for k in range(2)]
        bridge = spawn(["firmware_bridge", "run", "--api", server.url,
                        "--device", "wearemo-multi-0=multi-a",
                        "--device", "wearemo-multi-1=multi-b",
                        "--bumble-transport", f"tcp-client:127.0.0.1:{ports[2]}",
                        "--spool", str(tmp_path / "spool.db"), "--duration", "35", "--live",
                        "--report", str(tmp_path / "bridge.json")], "bridge.log")
        assert bridge.wait(timeout=150) == 0, (tmp_path / "bridge.log").read_text()[-3000:]
        for w in wearables:
            assert w.wait(timeout=60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
    report = json.loads((tmp_path / "bridge.json").read_text())
    assert report["drained"] and set(report["subjects"]) == {"multi-a", "multi-b"}
    stored = server.samples()
    for k, subject in enumerate(("multi-a", "multi-b")):
        sent = json.loads((tmp_path / f"wearable-{k}.json").read_text())["sent"]
        assert report["subjects"][subject]["device_id"] == f"ble-wearemo-multi-{k}"
        for ch in SENSOR_CHANNELS:  # the wearemo service resumes: all of it, once
            assert stored.get((subject, ch), 0) == sent[ch] > 0, (subject, ch)
        # heart rate notified before the subscription is gone by protocol, never doubled
        assert 0 < stored.get((subject, "hr"), 0) <= sent["hr"]
    assert all(n == 1 for n in server.sample_multiplicity().values())
    live = (tmp_path / "bridge.log").read_text()
    assert "wearemo bridge" in live and "ble-wearemo-multi-0" in live
    assert "ble-wearemo-multi-1" in live
