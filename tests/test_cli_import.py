"""`wearemo import`: a trial's recording folders into a real server on loopback (uvicorn, SQLite).

The import is killed (SIGKILL) half-way while the server rate-limits it, then re-run: every
sample is stored exactly once and equals the files; a third run that ignores its progress file
stores nothing more. Refusals are reported per folder while the other folders go in.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from api.api_support import admin_client, bearer, create_key, serve, settings_for
from batch_support import excerpt_slice, replace_row
from typer.testing import CliRunner

from wearemo.cli import app
from wearemo.datasets import load_recording
from wearemo.samples import Channel

DAY_S = 86_400


def _stored(client: httpx.Client, subject: str, key: str) -> dict[Channel, tuple[np.ndarray,
                                                                                 np.ndarray]]:
    """Every stored sample of ``subject`` per channel, read back over the API."""
    out = {}
    for ch in Channel:
        r = client.get(f"/v1/subjects/{subject}/samples",
                       params={"channel": ch.value, "limit": 1_000_000}, headers=bearer(key))
        assert r.status_code == 200, r.text
        assert "x-next-start" not in r.headers
        body = r.json()
        out[ch] = (np.asarray(body["times_ns"], dtype=np.int64),
                   np.asarray(body["values"], dtype=np.float64))
    return out


def _assert_stored_once_and_equal(client: httpx.Client, subject: str, key: str,
                                  folder: Path) -> None:
    rec = load_recording(folder)
    stored = _stored(client, subject, key)
    for ch in Channel:
        times, values = stored[ch]
        if ch not in rec.channels:
            assert times.size == 0
            continue
        data = rec.channels[ch]
        assert times.size == data.n_samples, (subject, ch)  # nothing twice, nothing lost
        assert np.array_equal(times, data.times_ns), (subject, ch)
        assert np.array_equal(values.reshape(data.values.shape), data.values), (subject, ch)


def _acked(state: Path) -> int:
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return 0
    return sum(e["acked"] for server in data["servers"].values() for e in server.values())


def _summary(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("summary: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """S02 (the real excerpt) and S99 (the same a day later), and a CSV subject map."""
    root = tmp_path_factory.mktemp("trial")
    excerpt_slice(root / "data" / "S02")
    excerpt_slice(root / "data" / "S99", shift_s=DAY_S)
    (root / "map.csv").write_text("folder,subject\nS02,p-a\nS99,p-b\n")
    return root / "data", root / "map.csv"


@pytest.mark.timeout(1800)  # the killed import is a real process: its start-up is slow here
def test_killed_import_resumes_and_stores_every_sample_once(
    tmp_path: Path, trial: tuple[Path, Path]
) -> None:
    data, subject_map = trial
    # Background processing takes batches in fast, and a budget of 2 requests a second makes
    # the server answer 429 + Retry-After: the import must wait them out to get through.
    settings = settings_for(tmp_path / "srv", processing="background",
                            rate_limit_requests_per_s=2.0, rate_limit_request_burst=2.0)
    state = tmp_path / "progress.json"
    with serve(settings) as url, admin_client(url) as admin:
        key = create_key(admin, "device", subjects=["p-a", "p-b"])
        args = ["import", str(data), "--api", url, "--subject-map", str(subject_map),
                "--state", str(state), "--batches-per-request", "30"]
        total = sum(len(list(load_recording(data / n).iter_batches(chunk_s=10.0)))
                    for n in ("S02", "S99"))
        log = tmp_path / "first.log"
        with log.open("w") as err:
            first = subprocess.Popen([sys.executable, "-m", "wearemo", *args],
                                     env={**os.environ, "WEAREMO_API_KEY": key},
                                     stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 1200
        while _acked(state) < total // 3:  # kill it a third of the way in
            assert first.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the import made no progress"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = _acked(state)
        assert 0 < killed_at < total

        runner = CliRunner()
        second = runner.invoke(app, [*args, "--key", key])
        assert second.exit_code == 0, second.stderr[-3000:]
        summary = _summary(second.stderr)
        assert "2 of 2 folders imported" in summary
        waited = re.search(r"(\d+) requests waited", summary)
        assert waited is not None and int(waited[1]) > 0, summary  # 429s honoured
        # the re-run started where the progress file said, not from the beginning
        sent = re.search(r"(\d+) batches stored, (\d+) already there", summary)
        assert sent is not None and int(sent[1]) + int(sent[2]) == total - killed_at, summary
        assert _acked(state) == total

        for folder, subject in (("S02", "p-a"), ("S99", "p-b")):
            _assert_stored_once_and_equal(admin, subject, key, data / folder)

        # Without its progress file an import sends everything again: all duplicates.
        third = runner.invoke(app, [*args, "--key", key, "--fresh"])
        assert third.exit_code == 0, third.stderr[-3000:]
        assert f"0 batches stored, {total} already there" in _summary(third.stderr)
        for folder, subject in (("S02", "p-a"), ("S99", "p-b")):
            _assert_stored_once_and_equal(admin, subject, key, data / folder)


def test_refusals_are_reported_per_folder_and_the_rest_goes_in(tmp_path: Path) -> None:
    data = tmp_path / "data"
    excerpt_slice(data / "A", 0, 300)
    # B: A with one value changed (so new batch ids) for the same subject: overlapping data
    replace_row(excerpt_slice(data / "B", 0, 300) / "EDA.csv", 200, "9.5")
    excerpt_slice(data / "C", 0, 300, shift_s=DAY_S)  # a subject the key is not granted
    replace_row(excerpt_slice(data / "D", 0, 300) / "TEMP.csv", 40, "n/a")  # unreadable
    runner = CliRunner()
    with serve(settings_for(tmp_path / "srv")) as url, admin_client(url) as admin:
        key = create_key(admin, "device", subjects=["p-a"])
        args = ["import", str(data), "--api", url, "--key", key, "--state",
                str(tmp_path / "st.json"), "--subject-map", "A=p-a", "--subject-map", "B=p-a",
                "--subject-map", "C=p-c", "--subject-map", "D=p-d"]
        result = runner.invoke(app, args)
        assert result.exit_code == 3, result.stderr
        lines = result.stderr.splitlines()
        refused = {ln.split(": ", 2)[1].rsplit("/", 1)[-1]: ln for ln in lines
                   if ln.startswith(("refused: ", "unreadable: "))}
        assert set(refused) == {"B", "C", "D"}, result.stderr
        assert "HTTP 409" in refused["B"] and "already holds other data" in refused["B"]
        assert "HTTP 403" in refused["C"] and "may not write subject 'p-c'" in refused["C"]
        assert refused["D"].startswith("unreadable: ")
        assert f"{data / 'D' / 'TEMP.csv'} row 40: 'n/a' is not a number" in refused["D"]
        assert "1 of 4 folders imported" in _summary(result.stderr)
        _assert_stored_once_and_equal(admin, "p-a", key, data / "A")

        # a key the server does not know stops the import at once
        result = runner.invoke(app, [*args[:5], "wmo_nobody_0123456789abcdef",
                                        *args[6:]])
        assert result.exit_code == 2
        assert "import stopped: the server refused the API key (HTTP 401" in result.stderr

        # a progress file that cannot be written is refused before anything is sent
        nowhere = tmp_path / "no-such-dir" / "st.json"
        result = runner.invoke(app, [*args[:7], str(nowhere), *args[8:]])
        assert result.exit_code == 2 and "cannot write the progress file" in result.stderr
        assert "summary" not in result.stderr


def test_bad_arguments_are_refused_before_any_upload(tmp_path: Path,
                                                     trial: tuple[Path, Path]) -> None:
    data, _ = trial
    runner = CliRunner()
    cases = [
        (["--api", "http://127.0.0.1:9", "--key", "k", "--subject-map", "S02=p-a"],
         "does not map 1 folder(s): S99"),
        (["--api", "http://127.0.0.1:9", "--key", "k", "--subject-map", "S02=Jane Doe"],
         "'Jane Doe' is not a valid id"),
        (["--api", "localhost:8000", "--key", "k"], "expected a URL"),
        (["--api", "http://127.0.0.1:9", "--key", "k"], "cannot reach the API"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["import", str(data), *extra,
                                        "--state", str(tmp_path / "s.json")])
        assert result.exit_code == 2, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "s.json").exists()
