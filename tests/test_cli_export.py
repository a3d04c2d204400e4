"""``wearemo export``: a cohort's states, features and samples from the store to Parquet/CSV,
read back equal to what the store holds (run as a separate process, as trial teams would)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import simdata
from simdata import T0, S
from typer.testing import CliRunner

from wearemo.cli import app
from wearemo.model import load_model
from wearemo.pipeline import Pipeline
from wearemo.samples import Channel
from wearemo.settings import Settings
from wearemo.store import SQLiteStore


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cohort")
    store = SQLiteStore(Settings(data_dir=d).resolved_sqlite_path())
    pipeline = Pipeline(store, load_model("default"))
    for k, subject in enumerate(("c1", "c2", "c3")):
        pipeline.ingest(simdata.sim_batches(subject, 90, hr_bpm=70.0 + k, seed=k + 1))
    store.close()
    return d


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wearemo", "export", *args],
                          capture_output=True, text=True, timeout=300)


def run_here(*args: str) -> tuple[int, str]:
    """The same command in this process (the bad-argument cases: no 30-s import each)."""
    result = CliRunner().invoke(app, ["export", *args])
    return result.exit_code, result.output


def test_cohort_export_round_trip(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run("--data-dir", str(data_dir), "--out", str(out), "--subject", "c1", "--subject",
            "c3", "--format", "parquet")
    assert r.returncode == 0, r.stderr
    store = SQLiteStore(Settings(data_dir=data_dir).resolved_sqlite_path())
    states = pq.read_table(out / "states.parquet").to_pandas()
    want = [s for sid in ("c1", "c3") for s in store.states(sid, limit=10_000)]
    assert len(want) == 10  # windows ending 60..80 s per subject
    assert states["subject_id"].tolist() == [s.subject_id for s in want]
    assert states["window_end_ns"].tolist() == [s.window_end_ns for s in want]
    assert states["state"].tolist() == [s.state for s in want]
    np.testing.assert_array_equal(
        states["p_stress"].to_numpy(float),
        [np.nan if s.p_stress is None else s.p_stress for s in want])

    features = pq.read_table(out / "features.parquet").to_pandas()
    windows = [w for sid in ("c1", "c3") for w in store.windows(sid, limit=10_000)]
    np.testing.assert_array_equal(features["hr_mean_bpm"].to_numpy(float),
                                  [w.feature("hr_mean_bpm") for w in windows])

    samples = pq.read_table(out / "samples.parquet").to_pandas()
    for sid in ("c1", "c3"):
        for ch in (Channel.PPG, Channel.EDA):
            got = samples[(samples.subject_id == sid) & (samples.channel == ch.value)]
            ref = store.samples(sid, ch)
            assert got["time_ns"].tolist() == ref.times_ns.tolist()
            np.testing.assert_array_equal(got["value"].to_numpy(), ref.values)
    assert set(samples.subject_id) == {"c1", "c3"}
    store.close()

    # a time range and CSV; the range selects window ends / sample times in [start, end)
    code, output = run_here("--data-dir", str(data_dir), "--out", str(tmp_path / "csv"),
                            "--kind", "states", "--format", "csv", "--start",
                            str((T0 + 65 * S) // S), "--end", str((T0 + 75 * S) // S))
    assert code == 0, output
    csv = pd.read_csv(tmp_path / "csv" / "states.csv")
    assert sorted(set(csv.window_end_ns)) == [T0 + 65 * S, T0 + 70 * S]
    assert sorted(set(csv.subject_id)) == ["c1", "c2", "c3"]
    assert not (tmp_path / "csv" / "samples.csv").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "nobody"], "unknown subject"),
        (["--kind", "beats"], "--kind"),
        (["--format", "xlsx"], "--format"),
        (["--start", "soon"], "--start"),
    ],
)
def test_bad_arguments_are_named(data_dir: Path, tmp_path: Path, args: list[str],
                                 message: str) -> None:
    code, output = run_here("--data-dir", str(data_dir), "--out", str(tmp_path / "x"), *args)
    assert code == 2 and message in output, output
    assert not (tmp_path / "x" / "states.parquet").exists()


def test_missing_store_is_refused(tmp_path: Path) -> None:
    code, output = run_here("--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "x"))
    assert code == 2 and "no wearemo store" in output, output
    assert not (tmp_path / "none").exists()


def test_export_files_are_owner_only(data_dir: Path, tmp_path: Path) -> None:
    """Exports hold health data: the folders created 0700 and the files 0600 (umask 022)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "exports" / "trial"
        code, output = run_here("--data-dir", str(data_dir), "--out", str(out), "--format",
                                "csv")
    finally:
        os.umask(old)
    assert code == 0, output
    made = [tmp_path / "exports", out, *sorted(out.iterdir())]
    assert {p.name for p in made} >= {"states.csv", "features.csv", "samples.csv"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        p.name: "0o700" if p.is_dir() else "0o600" for p in made}
