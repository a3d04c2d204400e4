"""End to end: virtual wearables → bleak/bumble → bridge → spool → HTTP on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bridge_ingest_server import IngestServer

from firmware_bridge.runner import VirtualRunConfig, load_source, run_virtual
from wearemo.samples import Channel

pytestmark = [pytest.mark.ble, pytest.mark.e2e, pytest.mark.timeout(120)]

SIGNAL_CHANNELS = ("ppg", "eda", "temp", "acc")


@pytest.fixture
def server() -> Iterator[IngestServer]:
    srv = IngestServer()
    srv.start()
    yield srv
    srv.stop()


async def test_every_sent_sample_arrives_exactly_once(server: IngestServer, tmp_path: Path) -> None:
    cfg = VirtualRunConfig(api_url=server.url, spool_path=tmp_path / "spool.db", n_virtual=2,
                           source="sim", speed=20, duration_s=20, seed=5, drain_timeout_s=20)
    report = await run_virtual(cfg)
    assert report.drained and report.spool_depth == 0 and report.dead_letters == 0
    assert set(report.subjects) == {"demo-01", "demo-02"}
    stored = server.samples()
    for k, subject in enumerate(("demo-01", "demo-02")):
        sub = report.subjects[subject]
        assert sub.device_id == f"vw-{k + 1:02d}"
        assert sub.gaps == 0 and sub.decode_errors == 0
        for ch in (*SIGNAL_CHANNELS, "hr", "rr"):
            assert sub.sent[ch] == sub.decoded[ch] == sub.uploaded[ch], (subject, ch)
            assert stored.get((subject, ch), 0) == sub.sent[ch], (subject, ch)
        # The whole simulated source was played and sent.
        src = load_source("sim", seed=5 + k, duration_s=20)
        for ch in SIGNAL_CHANNELS:
            assert sub.sent[ch] == src.signals[Channel(ch)].n_samples
        # Values at the API equal the wearable's source (codec quantisation only).
        ppg = [b for b in server.stored.values()
               if b.subject_id == subject and b.channel is Channel.PPG]
        ppg.sort(key=lambda b: b.start_ns)
        values = np.concatenate([b.values_array() for b in ppg])
        truth = src.signals[Channel.PPG].values
        np.testing.assert_allclose(values, truth, rtol=0, atol=1e-3 * float(np.ptp(truth)))
        times = np.concatenate([b.times_ns() for b in ppg])
        assert np.all(np.diff(times) > 0)
    assert server.duplicate_posts == 0  # nothing was sent twice while the API was up


def test_cli_writes_report(server: IngestServer, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "firmware_bridge", "run", "--api", server.url, "--virtual", "1",
           "--source", "sim", "--speed", "25", "--duration", "10", "--spool",
           str(tmp_path / "spool.db"), "--report", str(report_path)]
    proc = subprocess.run(cmd, cwd=Path(__file__).parents[2], capture_output=True, text=True,
                          timeout=100, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["spool_depth"] == 0
    sub = report["subjects"]["demo-01"]
    assert sub["device_id"] == "vw-01" and sub["gaps"] == 0 and sub["decode_errors"] == 0
    assert sub["sent"]["ppg"] == 640 and sub["uploaded"] == sub["sent"]
    assert server.samples()[("demo-01", "ppg")] == 640
    # the bad-input accounting is in the report, and a clean run has none
    assert sub["bad_input"] == {} and sub["repairs"] == 0 and sub["clock_resets"] == 0
    assert sub["faults"] == {"drop": 0, "silent": 0, "reboot": 0, "corrupt": 0}


def test_cli_rejects_address_without_subject() -> None:
    from firmware_bridge.__main__ import main

    with pytest.raises(SystemExit):
        main(["run", "--api", "http://127.0.0.1:9", "--address", "AA:BB:CC:DD:EE:FF"])


async def test_virtual_polar_like_run(server: IngestServer, tmp_path: Path) -> None:
    """``--pmd``: Polar-like wearables (HRS + PMD) through the whole bridge, nothing twice."""
    report = await run_virtual(VirtualRunConfig(
        api_url=server.url, spool_path=tmp_path / "spool.db", source="sim", speed=20,
        duration_s=10, pmd=True, drain_timeout_s=30))
    sub = report.subjects["demo-01"]
    assert report.drained and sub.sent["ppg"] > 0 and sub.sent["acc"] > 0
    assert sub.uploaded["ppg"] == sub.sent["ppg"] and sub.uploaded["acc"] == sub.sent["acc"]
    assert sub.uploaded["rr"] == sub.sent["rr"] > 0  # PPI records; HRS RR not stored again
    assert sub.bad_input == {}
    assert all(n == 1 for n in server.sample_multiplicity().values())
