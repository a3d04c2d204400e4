"""The `wearemo` command line on real data: process, predict, train, and the demo's tracking."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from wearemo.batch import DEFAULT_EXCERPT, tracking_report
from wearemo.datasets import load_recording
from wearemo.features import featurize_recording


def _wearemo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "wearemo", *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_predict_writes_one_row_per_window(tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    _wearemo("predict", str(DEFAULT_EXCERPT), "--model", "default", "--out", str(out))
    rows = pd.read_csv(out, keep_default_na=False)
    windows = featurize_recording(load_recording(DEFAULT_EXCERPT))
    assert len(rows) == len(windows)
    assert list(rows.columns[:6]) == [
        "subject", "window_start", "window_end", "state", "p_stress", "reason"]
    assert rows.window_end.tolist() == [w.end_ns / 1e9 for w in windows]
    withheld = rows[rows.state == "withheld"]
    assert (withheld.p_stress == "").all() and (withheld.reason != "").all()
    estimated = rows[rows.state != "withheld"]
    assert estimated.p_stress.astype(float).between(0, 1).all()
    assert set(rows.state) <= {"stress", "non_stress", "withheld"}


def test_process_writes_features(tmp_path: Path) -> None:
    out = tmp_path / "features.csv"
    _wearemo("process", str(DEFAULT_EXCERPT), "--out", str(out), "--step", "10")
    frame = pd.read_csv(out)
    # 17 min of data, 60-s windows every 10 s; the last window ends at or before the last sample.
    assert 90 <= len(frame) <= 97
    # HRV only where the PPG beats pass the template test (about half of this wrist excerpt,
    # whose E4 itself dropped most beats); every window without it says why.
    hr = frame.hr_mean_bpm.dropna()
    assert len(hr) >= 0.4 * len(frame) and hr.between(50, 110).all()
    why = frame.loc[frame.hr_mean_bpm.isna(), "reasons"]
    assert why.str.contains("hrv: ").all() and why.str.contains("ppg: ").all()
    assert {"label", "task", "quality_ppg", "quality_ppg_sqi", "coverage_eda"} <= set(frame.columns)


def test_train_on_a_small_cohort_writes_an_honest_artifact(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    for name in ("A1", "A2", "A3"):  # three copies: enough for leave-one-subject-out folds
        shutil.copytree(DEFAULT_EXCERPT, cohort / name)
    out = tmp_path / "model"
    _wearemo("train", str(cohort), "--out", str(out), "--jobs", "1")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_subjects"] == ["A1", "A2", "A3"]
    assert set(manifest["loso"]["per_subject_balanced_accuracy"]) == {"A1", "A2", "A3"}
    assert "leave-one-subject-out" in (out / "MODEL_CARD.md").read_text()
    _wearemo("predict", str(cohort / "A1"), "--model", str(out), "--out", str(tmp_path / "p.csv"))

    # `evaluate --loso` reproduces the LOSO figures written into the model card
    rep = tmp_path / "eval" / "loso.json"
    _wearemo("evaluate", str(cohort), "--loso", "--report", str(rep), "--jobs", "1")
    summary = json.loads(rep.read_text())
    assert summary["pooled"] == manifest["loso"]["pooled"]
    c = summary["confusion"]
    assert c["tn"] + c["fp"] + c["fn"] + c["tp"] == summary["pooled"]["n"]
    assert sum(b["n"] for b in summary["reliability"]) == summary["pooled"]["n"]
    md = rep.with_suffix(".md").read_text()
    assert "Confusion matrix" in md and "| A1 |" in md and "loso-reliability.svg" in md
    assert (rep.parent / "loso-reliability.svg").stat().st_size > 1000
    # a fixed model on one of its own training recordings: nothing is fitted, and the scores
    # are in-sample, not external validation
    assert set(manifest["training_fingerprints"]["subjects"]) == {"A1", "A2", "A3"}
    ext = tmp_path / "eval" / "ext.json"
    done = _wearemo("evaluate", str(cohort / "A1"), "--model", str(out), "--report", str(ext))
    assert "WARNING" in done.stderr and "A1" in done.stderr
    ext_summary = json.loads(ext.read_text())
    assert ext_summary["protocol"].startswith(f"fixed model {manifest['version']}")
    assert ext_summary["training_overlap"]["seen"] == {"A1": "A1"}
    assert ext_summary["external_validation"] is None
    ins = ext_summary["in_sample"]
    assert ins["pooled"]["n"] > 50 and ins["pooled"]["auroc"] is not None


def test_evaluate_refuses_labels_that_cover_no_window(tmp_path: Path) -> None:
    rec = tmp_path / "B1"
    shutil.copytree(DEFAULT_EXCERPT, rec)
    (rec / "labels.csv").write_text("start_unix,end_unix,label,task\n1,2,stress,stroop\n")
    done = subprocess.run(
        [sys.executable, "-m", "wearemo", "evaluate", str(rec), "--report",
         str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "cannot evaluate" in done.stderr and "no labelled window" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r.json").exists()


def _state(start_s: float, state: str, p: float | None) -> dict[str, object]:
    return {"window_start_ns": int(start_s * 1e9), "window_end_ns": int((start_s + 60) * 1e9),
            "state": state, "p_stress": p}


def test_tracking_report_counts_states_against_labels() -> None:
    rec = load_recording(DEFAULT_EXCERPT, channels=["eda"])
    rest, stroop = rec.labels[0], rec.labels[1]
    r0, s0 = rest.start_ns / 1e9, stroop.start_ns / 1e9
    states = [
        _state(r0, "non_stress", 0.1), _state(r0 + 10, "stress", 0.6),  # rest: 1 of 2 right
        _state(s0 + 10, "stress", 0.7), _state(s0 + 20, "stress", 0.8),  # stroop: 2 of 2
        _state(s0 + 30, "withheld", None),  # not scored
    ]
    report = tracking_report(states, DEFAULT_EXCERPT)
    assert report is not None
    assert report["windows_compared"] == 4
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert report["auroc"] == pytest.approx(1.0)
    assert math.isclose(sum(report["stress_rate_by_segment"].values()), 1.5)
