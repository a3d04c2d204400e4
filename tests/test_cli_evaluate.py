"""`wearemo evaluate` with a fixed model: recordings the model was trained on are recognised by
their content and reported apart (in-sample) from the external validation; the report's
figures are SVG drawn without matplotlib.

The shipped default model was trained on Stress-Predict, whose participant S02 is the shipped
excerpt: a copy of the excerpt under another name is in-sample, and the same data moved to
another day under a training subject's name ("S04") is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from batch_support import excerpt_slice

from wearemo.batch import DEFAULT_EXCERPT, recording_fingerprints, training_overlap
from wearemo.model import load_model

DAY_S = 86_400
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """X9: the excerpt renamed (= training subject S02); S04: the excerpt 400 days later."""
    root = tmp_path_factory.mktemp("trial")
    excerpt_slice(root / "X9")
    excerpt_slice(root / "S04", shift_s=400 * DAY_S)
    return root


def _wearemo(*args: object, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wearemo", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


def test_training_recordings_are_recognised_by_content_not_by_name(
    tmp_path: Path, trial: Path
) -> None:
    manifest = load_model("default").manifest
    assert "S02" in manifest["training_subjects"] and "S04" in manifest["training_subjects"]
    # a 6-minute excerpt of the excerpt, named like nothing in the training data
    excerpt_slice(tmp_path / "part" / "P1", 300, 360)
    fps = recording_fingerprints(trial) | recording_fingerprints(tmp_path / "part")
    seen, method = training_overlap(fps, manifest)
    assert seen == {"X9": "S02", "P1": "S02"}  # S04 here is another day's data
    assert method.startswith("recording content")
    # the shipped folder itself, under its own name
    assert training_overlap(recording_fingerprints(DEFAULT_EXCERPT), manifest)[0] == {
        DEFAULT_EXCERPT.name: "S02"}
    # a manifest without fingerprints can only go by ids, and says what that gets wrong
    ids_only = {k: v for k, v in manifest.items() if k != "training_fingerprints"}
    seen, method = training_overlap(fps, ids_only)
    assert seen == {"S04": "S04"} and "subject ids only" in method


def test_evaluate_reports_seen_recordings_apart_with_a_loud_warning(
    tmp_path: Path, trial: Path
) -> None:
    report = tmp_path / "eval.json"
    done = _wearemo("evaluate", trial, "--model", "default", "--report", report)
    assert done.returncode == 0, done.stderr[-3000:]
    warning = [ln for ln in done.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warning) == 1, done.stderr
    assert "1 of 2 recordings" in warning[0] and "X9 (= training subject S02)" in warning[0]
    assert "NOT validation" in warning[0] and "S04" not in warning[0]

    summary = json.loads(report.read_text())
    assert "pooled" not in summary  # no figure mixes the two parts
    assert summary["training_overlap"]["seen"] == {"X9": "S02"}
    assert summary["training_overlap"]["unseen"] == ["S04"]
    ext, ins = summary["external_validation"], summary["in_sample"]
    assert set(ext["per_subject"]) == {"S04"} and set(ins["per_subject"]) == {"X9"}
    assert "(external validation)" in ext["protocol"]
    assert "NOT validation" in ins["protocol"] and "external" not in ins["protocol"]
    assert "1 not in its training data (external validation), 1 in its training data" \
        in summary["protocol"]
    # the same samples a whole number of windows later: scored the same, only the name of
    # what the figures are differs
    assert ext["pooled"]["n"] > 50
    assert ext["pooled"] == ins["pooled"]

    md = report.with_suffix(".md").read_text()
    ext_part = md.split("## External validation")[1].split("## In-sample")[0]
    ins_part = md.split("## In-sample, NOT validation")[1]
    assert "| S04 |" in ext_part and "| X9 |" not in ext_part
    assert "| X9 |" in ins_part and "| S04 |" not in ins_part
    assert "**Warning: the model was trained on 1 of these 2 recordings: X9 (training " \
           "subject S02)" in md
    for name in ("eval-unseen-reliability.svg", "eval-seen-reliability.svg",
                 "eval-unseen-subjects.svg", "eval-seen-subjects.svg"):
        assert f"]({name})" in md and (tmp_path / name).is_file()


def _matplotlib_stub(root: Path) -> Path:
    """A ``matplotlib`` package that imports (NeuroKit2 0.2.13 imports ``matplotlib.pyplot``
    and friends at import time, so wearemo cannot start without one) but raises ImportError
    on any use: what a report that reaches for matplotlib meets where it is not installed."""
    pkg = root / "matplotlib"
    pkg.mkdir(parents=True)
    missing = ("def __getattr__(name):\n"
               "    raise ImportError(f'matplotlib is not installed (test stub: {name})')\n")
    subs = ("pyplot", "gridspec", "collections", "ticker", "patches", "cm", "animation")
    (pkg / "__init__.py").write_text(f"from . import {', '.join(subs)}\n" + missing)
    for sub in subs:
        (pkg / f"{sub}.py").write_text(missing)
    return root


def test_report_figures_are_drawn_without_matplotlib(tmp_path: Path, trial: Path) -> None:
    stub = _matplotlib_stub(tmp_path / "stub")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(stub), *filter(None, [os.environ.get("PYTHONPATH")])])}
    check = subprocess.run([sys.executable, "-c", "import matplotlib; matplotlib.use('Agg')"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert "matplotlib is not installed" in check.stderr  # the stub is what gets imported

    report = tmp_path / "out" / "eval.json"
    done = _wearemo("evaluate", trial / "S04", "--model", "default", "--report", report,
                    env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(report.read_text())["external_validation"]
    bins = summary["reliability"]
    rel = ET.parse(report.parent / "eval-unseen-reliability.svg").getroot()
    assert rel.tag == f"{SVG}svg"
    circles = rel.findall(f".//{SVG}circle")
    assert len(circles) == len(bins) >= 3
    # each point where its bin says: x = mean p, y = observed (300-px unit square at 52, 30)
    for c, b in zip(circles, bins, strict=True):
        assert float(c.get("cx", "nan")) == pytest.approx(52 + 300 * b["mean_p"], abs=0.06)
        assert float(c.get("cy", "nan")) == pytest.approx(30 + 300 * (1 - b["observed"]),
                                                          abs=0.06)
    bars = ET.parse(report.parent / "eval-unseen-subjects.svg").getroot()
    heights = [float(r.get("height", "nan")) for r in bars.findall(f".//{SVG}rect")
               if r.get("class") == "bar"]
    assert heights == [pytest.approx(220 * summary["per_subject_balanced_accuracy"]["S04"],
                                     abs=0.06)]
    assert not list(report.parent.glob("*.png"))
