"""Chaos run across real processes: nothing the wearable produced is lost or stored twice.

Four processes talk as in the field: the virtual radio (linked bumble controllers behind
HCI-over-TCP), the virtual wearable replaying 7 min of the shipped real recording on one
controller, the bridge (``python -m firmware_bridge run --name ... --bumble-transport ...``) on
the other, and the wearemo API (``wearemo serve``) with its SQLite store. During the replay the
wearable drops the link 10 times at random moments, goes silent twice and damages 3 frames on
the air (rejected by the bridge and re-sent), the API is stopped for 2 minutes, and the
bridge is killed with SIGKILL 3 times (twice while the API is down, so its spool holds the
backlog across the kills; the third kill comes right after it is back) and restarted.

Afterwards the store of record must hold every sample of the wearemo sensor service's channels
exactly once, at its source time (within 5 ms; frames carry device time in µs) and value
(within the codec's quantisation). The standard Heart Rate Service cannot resume (its
notifications carry no sequence number and are not buffered by the device), so heart-rate
samples notified while no bridge was subscribed are gone by protocol: for ``hr`` the test
checks that nothing was stored twice or invented and that all of it matches the source.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from firmware_bridge.runner import DEFAULT_SOURCE
from firmware_bridge.virtual_wearable import RecordingSource
from wearemo.samples import Channel
from wearemo.store import SQLiteStore

pytestmark = [pytest.mark.ble, pytest.mark.timeout(900)]

REPLAY_S = 420.0  # source seconds
SPEED = 3.0  # 140 s of wall time
OUTAGE = (10.0, 130.0)  # wall seconds after the replay starts: 2 min without the API
KILLS = (25.0, 70.0, 133.0)  # wall seconds: SIGKILL the bridge, restart it 1 s later
DROPS = 10
SILENCES = 2  # 2 s of device time each without notifications (sensor frames wait, HR is lost)
CORRUPTIONS = 3  # frames damaged on the air: rejected, re-sent via RESUME_FROM
SUBJECT, DEVICE, NAME = "chaos-01", "vw-chaos", "wearemo-vw-chaos"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Api:
    """``wearemo serve`` on a fixed port and data dir, stoppable and restartable."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "WEAREMO_DATA_DIR": str(data_dir)}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wearemo", "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail("API not ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_chaos_run_stores_every_sample_exactly_once(workdir: Path) -> None:
    a, b = _port(), _port()
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], log: str, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        with (workdir / log).open("ab") as f:
            p = subprocess.Popen([sys.executable, "-m", *args], stdout=f, stderr=f, env=env)
        procs.append(p)
        return p

    radio = spawn(["firmware_bridge.virtual_wearable.radio", f"tcp-server:127.0.0.1:{a}",
                   f"tcp-server:127.0.0.1:{b}"], "radio.log")
    api = _Api(workdir / "data", workdir / "api.log")
    # the bridge's device key, made offline with the CLI on the API's data dir
    made = subprocess.run([sys.executable, "-m", "wearemo", "keys", "create", "--role", "device",
                           "--subject", SUBJECT, "--data-dir", str(workdir / "data")],
                          capture_output=True, text=True, check=True)
    bridge_env = {**os.environ, "WEAREMO_API_KEY": made.stdout.strip()}

    def bridge() -> subprocess.Popen[bytes]:
        return spawn(["firmware_bridge", "run", "--api", api.url, "--name", NAME,
                      "--subject", SUBJECT, "--device-id", DEVICE, "--bumble-transport",
                      f"tcp-client:127.0.0.1:{b}", "--spool", str(workdir / "spool.db"),
                      "--report", str(workdir / "bridge.json"), "--drain-timeout", "120",
                      "-v"], "bridge.log", bridge_env)

    try:
        api.start()
        time.sleep(1.0)  # the radio listens by now (it started before the API)
        assert radio.poll() is None, (workdir / "radio.log").read_text()
        wearable = spawn(["firmware_bridge.virtual_wearable", "--transport",
                          f"tcp-client:127.0.0.1:{a}", "--source", str(DEFAULT_SOURCE),
                          "--duration", str(REPLAY_S), "--speed", str(SPEED), "--name", NAME,
                          "--drops", str(DROPS), "--silences", str(SILENCES),
                          "--corruptions", str(CORRUPTIONS), "--chaos-seed", "3", "--linger", "10",
                          "--report", str(workdir / "wearable.json")], "wearable.log")
        t0 = time.monotonic()
        link = bridge()
        events = sorted([(OUTAGE[0], "api-down"), (OUTAGE[1], "api-up"),
                         *((k, "kill") for k in KILLS)])
        for at, what in events:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "api-down":
                api.stop()
            elif what == "api-up":
                api.start()
            else:
                link.kill()  # SIGKILL: no flush, no goodbye
                link.wait(timeout=10)
                time.sleep(1.0)
                link = bridge()
        assert wearable.wait(timeout=REPLAY_S / SPEED + 120) == 0, (
            workdir / "wearable.log").read_text()[-3000:]
        link.send_signal(signal.SIGTERM)  # the last bridge stops cleanly and drains
        assert link.wait(timeout=180) == 0, (workdir / "bridge.log").read_text()[-3000:]
        report = json.loads((workdir / "bridge.json").read_text())
        assert report["drained"] and report["dead_letters"] == 0, report
        chaos = json.loads((workdir / "wearable.json").read_text())
        assert len(chaos["link_drops_s"]) == DROPS
        assert chaos["faults"]["silent"] == SILENCES
        assert chaos["faults"]["corrupt"] == CORRUPTIONS
    finally:
        api.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=20)

    source = RecordingSource(DEFAULT_SOURCE).cut(REPLAY_S)
    assert source.start_unix is not None
    t0_ns = round(source.start_unix * 1e9)
    with SQLiteStore(workdir / "data" / "wearemo.sqlite3") as store:
        stored = store.batches(SUBJECT, limit=10**6)
    for channel in (Channel.PPG, Channel.EDA, Channel.TEMP, Channel.ACC):
        sig = source.signals[channel]
        mine = [x for x in stored if x.channel is channel]
        times = np.concatenate([x.times_ns() for x in mine])
        values = np.concatenate([x.values_array() for x in mine])
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        # every sample exactly once: as many as the source has, none repeated
        assert len(times) == sig.n_samples, (channel, len(times), sig.n_samples)
        assert np.all(np.diff(times) > 0), channel
        truth = t0_ns + np.round(
            (sig.start_offset_s + np.arange(sig.n_samples) / sig.rate_hz) * 1e9
        ).astype(np.int64)
        assert np.max(np.abs(times - truth)) <= 5_000_000, channel  # within 5 ms
        span = float(np.ptp(sig.values)) or 1.0
        np.testing.assert_allclose(values, sig.values, rtol=0, atol=1e-3 * span)
    # Heart Rate Service: no duplicates, nothing invented, values as sent.
    hr = [x for x in stored if x.channel is Channel.HR]
    hr_times = np.sort(np.concatenate([x.times_ns() for x in hr]))
    hr_values = np.concatenate([x.values_array() for x in hr])
    assert np.all(np.diff(hr_times) > 0)
    assert source.hr is not None
    truth_s = source.start_unix + source.hr.start_offset_s + np.arange(
        source.hr.n_samples) / source.hr.rate_hz
    nearest = np.abs(hr_times[:, None] / 1e9 - truth_s[None, :]).min(axis=1)
    assert np.max(nearest) < 1.0  # each stored HR sample is one the source had
    assert len(hr_times) <= source.hr.n_samples
    assert set(np.unique(hr_values)) <= set(np.clip(np.rint(source.hr.values), 0, None))
