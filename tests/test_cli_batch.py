"""Batch commands (process, predict, evaluate) on bad input: one-line errors, skipped recordings
with a summary and exit code 3, cut files warned about, output formats from the suffix.

The commands run in-process through typer's runner (one import of the CLI for the whole file)
on E4 folders cut from the shipped real excerpt.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from batch_support import cut_mid_line, excerpt_slice, replace_row
from typer.testing import CliRunner

from wearemo.cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback instead of a message: {result.exception!r}\n"
                             f"{result.stderr}") from result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A1 whole; B2 with a 'NaN' in EDA.csv row 9; C3 with ACC.csv cut inside its last line."""
    root = tmp_path_factory.mktemp("cohort")
    excerpt_slice(root / "A1", 150, 240)
    replace_row(excerpt_slice(root / "B2", 150, 240) / "EDA.csv", 9, "NaN")
    c3 = excerpt_slice(root / "C3", 150, 240)
    cut_mid_line(c3 / "ACC.csv", 4)
    (root / "notes").mkdir()  # not a recording: said, and ignored
    (root / "notes" / "readme.txt").write_text("protocol notes")
    return root


@pytest.mark.parametrize("kind", ["empty", "not a recording folder", "missing", "a file"])
def test_no_recordings_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "in"
    if kind != "missing":
        folder.mkdir()
    if kind == "not a recording folder":
        (folder / "data.txt").write_text("1,2,3\n")
        (folder / "S01").mkdir()
        (folder / "S01" / "eda.txt").write_text("1\n")
    if kind == "a file":
        folder = folder / "data.txt"
        folder.write_text("1,2,3\n")
    out = tmp_path / "f.csv"
    code, stdout, stderr = _run("process", folder, "--out", out)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0], stderr
    assert ("no recording folders" in lines[0] or "no such folder" in lines[0]
            or "not a folder" in lines[0])
    assert not out.exists() and "windows" not in stdout


def test_bad_recording_is_skipped_and_the_others_are_written(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.csv"
    code, stdout, stderr = _run("process", cohort, "--out", out, "--step", "30", "--jobs", "1")
    assert code == 3, stderr
    frame = pd.read_csv(out)
    assert sorted(set(frame.subject)) == ["A1", "C3"]
    # C3 lost one ACC sample of 4 minutes: the same windows as A1
    assert (frame.subject == "C3").sum() == (frame.subject == "A1").sum() > 0
    lines = stderr.strip().splitlines()
    skipped = [ln for ln in lines if ln.startswith("skipped: ")]
    assert len(skipped) == 1, stderr
    assert f"{cohort / 'B2' / 'EDA.csv'} row 9: 'NaN' is not a finite number" in skipped[0]
    cut = [ln for ln in lines if "C3" in ln]
    assert len(cut) == 1 and cut[0].startswith("warning: "), stderr
    assert "ACC.csv row" in cut[0] and "dropped" in cut[0]
    assert any("notes" in ln and "not a recording folder" in ln for ln in lines), stderr
    assert lines[-1].startswith("summary: 1 of 3 recordings skipped (B2)"), stderr
    assert "exit code 3" in lines[-1]
    assert f"→ {out}" in stdout


def test_predict_skips_in_a_pool_too_and_writes_parquet_from_the_suffix(
    cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "predictions.parquet"
    code, _, stderr = _run("predict", cohort, "--out", out, "--jobs", "2")
    assert code == 3, stderr
    rows = pd.read_parquet(out)  # a Parquet file, not CSV text under a .parquet name
    assert sorted(set(rows.subject)) == ["A1", "C3"] and len(rows) > 0
    assert "'NaN' is not a finite number" in stderr


@pytest.mark.parametrize(("command", "name"), [("process", "f.xlsx"), ("predict", "p.json"),
                                               ("process", "noext")])
def test_unknown_output_format_is_refused_before_any_work(
    cohort: Path, tmp_path: Path, command: str, name: str
) -> None:
    out = tmp_path / name
    code, stdout, stderr = _run(command, cohort, "--out", out)
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert ".parquet" in stderr and ".csv" in stderr and name in stderr
    assert not out.exists() and "skipped" not in stderr and stdout == ""


def test_evaluate_report_must_be_json(cohort: Path, tmp_path: Path) -> None:
    code, _, stderr = _run("evaluate", cohort, "--report", tmp_path / "r.csv")
    assert code == 2 and ".json" in stderr and len(stderr.strip().splitlines()) == 1
