"""The whole path over real parts: virtual BLE wearable (bumble) → bridge (bleak + bumble
backend, spool, HTTP uplink) → API process (uvicorn on loopback) → SQLite store → GET state.

The wearable replays the shipped real Stress-Predict excerpt with its original timestamps, so
the states that come back over HTTP must equal what the batch path computes from the same files
on disk (streaming equals batch across BLE, the device clock and HTTP).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from firmware_bridge.runner import VirtualRunConfig, run_virtual
from wearemo.api.keystore import KeyStore
from wearemo.batch import DEFAULT_EXCERPT
from wearemo.datasets import load_recording
from wearemo.features import WindowConfig, featurize_recording
from wearemo.model import load_model

REPLAY_S = 420.0  # past the 5-min personal-baseline warm-up, so estimates come back
SPEED = 40.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


KEYS: dict[str, str] = {}  # role -> key, created offline in the API's data dir


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("store")
    with KeyStore(data_dir / "auth.sqlite3") as keys:  # as `wearemo keys create` does
        KEYS["device"] = keys.create_key("device", subjects=["demo-01"]).secret
        reader = keys.create_key("reader")
        keys.create_cohort("e2e", subjects=["demo-01"])
        keys.grant_cohort("e2e", reader.info.key_id)
        KEYS["reader"] = reader.secret
    env = {**os.environ, "WEAREMO_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wearemo", "serve", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "API process died"
        assert time.monotonic() < deadline, "API not ready"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


async def test_virtual_wearable_to_served_state(api_url: str, tmp_path: Path) -> None:
    report = await run_virtual(
        VirtualRunConfig(api_url=api_url, spool_path=tmp_path / "spool.sqlite", n_virtual=1,
                         source=DEFAULT_EXCERPT, speed=SPEED, duration_s=REPLAY_S,
                         api_key=KEYS["device"])
    )
    assert report.drained and report.spool_depth == 0 and report.dead_letters == 0
    (subject,) = report.subjects
    sent = report.subjects[subject].sent

    async with httpx.AsyncClient(base_url=api_url, timeout=30,
                                 headers={"Authorization": f"Bearer {KEYS['reader']}"}) as client:
        summary = (await client.get(f"/v1/subjects/{subject}")).json()
        latest = await client.get(f"/v1/subjects/{subject}/state")
        history = (await client.get(f"/v1/subjects/{subject}/states",
                                    params={"limit": 10000})).json()
        missing = await client.get("/v1/subjects/nobody/state")

    # Every sample the wearable notified is stored, once.
    assert {ch: n for ch, n in sent.items() if n} == summary["samples"]
    assert sent["ppg"] == int(REPLAY_S * 64) and sent["eda"] == int(REPLAY_S * 4)
    assert missing.status_code == 404 and "unknown subject" in missing.json()["detail"]

    # The latest state is a real estimate with its provenance.
    assert latest.status_code == 200
    state = latest.json()
    assert state["state"] in {"stress", "non_stress"}, state
    assert 0.0 <= state["p_stress"] <= 1.0
    assert state["model_version"] == load_model().version
    # what the estimate used: EDA here, with the PPG beats when they passed the quality gate
    # (variant full), else the device's own heart rate (hr_eda)
    assert "eda" in set(state["channels_used"]) <= {"ppg", "hr", "eda", "acc", "temp"}
    assert state["variant"] in {"full", "hr_eda"}
    assert ("ppg" if state["variant"] == "full" else "hr") in state["channels_used"]
    # explained: inputs ranked by their effect on p_stress, each with a sentence
    effects = [abs(c["effect"]) for c in state["explanation"]]
    assert effects and effects == sorted(effects, reverse=True)
    assert all("baseline" in c["text"] or "trend" in c["text"] for c in state["explanation"])
    assert 0.0 <= state["arousal"] <= 1.0
    assert set(state["not_estimated"]) == {"affect", "valence"}

    # Streaming through BLE + HTTP equals the batch path over the same files on disk.
    rec = load_recording(DEFAULT_EXCERPT)
    cut = rec.between(rec.start_ns, rec.start_ns + int(REPLAY_S * 1e9))
    est = load_model().for_subject(subject)
    batch = {w.end_ns: est.update(w) for w in featurize_recording(cut)}
    served = {s["window_end_ns"]: s for s in history}
    common = sorted(set(batch) & set(served))
    # A live stream has no end: its last windows wait (up to lateness_s) for lagging channels,
    # while the batch path flushes them at the end of the files.
    cfg = WindowConfig()
    assert set(served) <= set(batch)
    assert len(common) >= len(batch) - cfg.lateness_s / cfg.step_s
    assert [served[t]["state"] for t in common] == [batch[t].state for t in common]
    p_served = np.array([served[t]["p_stress"] or np.nan for t in common], dtype=float)
    p_batch = np.array([batch[t].p_stress or np.nan for t in common], dtype=float)
    # PPG crosses BLE as int24 at 2^-10 au; probabilities agree to that quantisation's effect.
    np.testing.assert_allclose(p_served, p_batch, atol=0.02, equal_nan=True)


def test_demo_command_writes_summary(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "wearemo", "demo", "--duration", "360", "--speed", "40",
         "--summary", str(summary), "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(summary.read_text())
    (subject,) = result["subjects"]
    s = result["subjects"][subject]
    assert s["lost_samples"] == 0
    assert s["samples"]["ppg"] == 360 * 64 and s["samples"]["acc"] == 360 * 32
    assert s["windows"] == sum(s["states"].values()) > 50
    assert s["states"]["withheld"] >= 40  # the 4-min personal-baseline warm-up at least
    assert result["store_rows"] > s["windows"]


def test_demo_chaos_counts_lost_and_duplicate_samples(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "wearemo", "demo", "--chaos", "--duration", "120", "--speed", "4",
         "--summary", str(summary), "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(summary.read_text())
    assert [f.split(" at ")[0] for f in result["chaos"]["faults"]] == [
        "api-down", "api-up", "kill-bridge"]
    (s,) = result["subjects"].values()
    assert s["link_drops"] == 3
    for ch in ("ppg", "eda", "temp", "acc"):  # resumed by sequence number: all of it, once
        assert s["lost_samples"][ch] == 0 and s["duplicate_samples"][ch] == 0, ch
    assert s["samples"]["ppg"] == 120 * 64 and s["samples"]["eda"] == 120 * 4
    assert s["duplicate_samples"]["hr"] == 0  # heart rate: lost by protocol, never twice
    assert 0 < s["samples"]["hr"] <= 120
