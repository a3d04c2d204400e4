"""Validity of the a-priori arousal score on Stress-Predict: does it rise during the stressors?

Featurises ``../shared/data/stress-predict/`` (cached in ``--features``), runs each subject's
windows in time order through a fresh ``load_model("default").for_subject(s)`` estimator's
``assess`` (gating, warm-up, personal baseline) and scores every estimable window with
:func:`wearemo.model.arousal.arousal_score`. Nothing is fitted, so the figures are out-of-sample
for every subject. Reports per-subject and pooled AUROC for stress vs rest (majority window
labels), per-task and per-rest-phase mean scores, the fraction of subjects whose task mean
exceeds their rest mean, the distribution at rest (checks the 0..1 mapping), group ablations
(cardiac only, EDA only) and the cost per call; the last line is JSON.

Usage::

    .venv/bin/python benchmarks/arousal_validity.py [--features out/features.parquet]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from wearemo.batch import labelled_windows
from wearemo.model import load_model
from wearemo.model.arousal import AROUSAL_FEATURES, ArousalConfig, arousal_score

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"
TASKS = ("stroop", "interview", "hyperventilation")
CONFIGS = {
    "all": ArousalConfig(),
    "cardiac_only": replace(ArousalConfig(),
                            features=tuple(f for f in AROUSAL_FEATURES if f.group == "cardiac")),
    "eda_only": replace(ArousalConfig(),
                        features=tuple(f for f in AROUSAL_FEATURES if f.group == "eda")),
    # Sensitivity to the skin-conductance level, which drifts up through a session (reported,
    # not used to choose the shipped table).
    "scl_floor_0_10": replace(ArousalConfig(), features=tuple(
        replace(f, spread_floor=0.10) if f.name == "rel_eda_scl_mean_uS" else f
        for f in AROUSAL_FEATURES)),
    "without_scl": replace(ArousalConfig(), features=tuple(
        f for f in AROUSAL_FEATURES if f.name != "rel_eda_scl_mean_uS")),
}
_BRIEF = ("n_windows", "pooled_auroc", "per_subject_auroc_median", "per_task_mean")


def _scores(root: Path, cache: Path, jobs: int) -> tuple[pd.DataFrame, float, str]:
    """One row per estimable labelled window: subject, label, task, phase and the scores."""
    data, digest = labelled_windows(root, cache=cache, jobs=jobs)
    model = load_model("default")
    rows: list[dict[str, Any]] = []
    calls, spent = 0, 0.0
    for lw in data:
        est = model.for_subject(lw.subject_id)
        phase = "rest_baseline"  # rests are named by the task they follow
        for w, label, task in zip(lw.windows, lw.labels, lw.tasks, strict=True):
            if task in TASKS:
                phase = f"rest_after_{task}"
            inputs, _ = est.assess(w)  # every window, in order: the baseline learns from them
            if inputs is None or label is None:
                continue
            row: dict[str, Any] = {"subject": lw.subject_id, "label": label, "task": task,
                                   "phase": task if task in TASKS else phase}
            t0 = time.perf_counter()
            row["arousal"] = arousal_score(inputs, est.baseline)
            spent += time.perf_counter() - t0
            calls += 1
            for name, cfg in CONFIGS.items():
                if name != "all":
                    row[f"arousal_{name}"] = arousal_score(inputs, est.baseline, config=cfg)
            rows.append(row)
    return pd.DataFrame(rows), spent / max(calls, 1) * 1e6, digest


def _auroc(frame: pd.DataFrame, col: str) -> float | None:
    f = frame.dropna(subset=[col])
    y = (f.label == "stress").to_numpy()
    if y.all() or not y.any():
        return None
    return round(float(roc_auc_score(y, f[col])), 3)


def _summary(df: pd.DataFrame, col: str) -> dict[str, Any]:
    f = df.dropna(subset=[col])
    per_subject = {str(s): _auroc(g, col) for s, g in f.groupby("subject")}
    aucs = np.array([v for v in per_subject.values() if v is not None])
    means = f.groupby(["subject", "task"])[col].mean().unstack()
    exceeds = {t: round(float((means[t] > means["rest"]).mean()), 3)
               for t in TASKS if t in means}
    stress_mean = f[f.label == "stress"].groupby("subject")[col].mean()
    rest_mean = f[f.label == "non_stress"].groupby("subject")[col].mean()
    both = stress_mean.index.intersection(rest_mean.index)
    exceeds["any_stress"] = round(float((stress_mean[both] > rest_mean[both]).mean()), 3)
    return {
        "n_windows": len(f),
        "pooled_auroc": _auroc(f, col),
        "per_subject_auroc_median": round(float(np.median(aucs)), 3),
        "per_subject_auroc_mean": round(float(aucs.mean()), 3),
        "per_subject_auroc_min": round(float(aucs.min()), 3),
        "subjects_auroc_above_0_5": f"{int((aucs > 0.5).sum())}/{aucs.size}",
        "per_task_mean": {k: round(float(v), 3) for k, v in f.groupby("task")[col].mean().items()},
        "per_phase_mean": {k: round(float(v), 3)
                           for k, v in f.groupby("phase")[col].mean().items()},
        "fraction_subjects_task_mean_above_rest_mean": exceeds,
        "per_subject_auroc": per_subject,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--features", type=Path, default=Path("out/features.parquet"))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"{a.data} is absent: no arousal validation (see shared/data/README.md)")
        print(json.dumps({"skipped": "data folder absent"}))
        sys.exit(0)
    t0 = time.perf_counter()
    df, us_per_call, digest = _scores(a.data, a.features, a.jobs)
    scored = df.dropna(subset=["arousal"])
    rest = scored[scored.task == "rest"].arousal
    base = scored[scored.phase == "rest_baseline"].arousal
    main_run = _summary(df, "arousal")
    both = df.dropna(subset=["arousal_cardiac_only", "arousal_eda_only"])
    out = {
        "data_hash": digest[:16],
        "subjects": int(df.subject.nunique()),
        "windows_estimable": len(df),
        "windows_scored": len(scored),
        "us_per_call": round(us_per_call, 2),
        **{k: v for k, v in main_run.items() if k != "per_subject_auroc"},
        # The same comparison on windows that have both groups (cardiac needs usable beats).
        "pooled_auroc_windows_with_both_groups": {
            name: _auroc(both, col) for name, col in (
                ("all", "arousal"), ("cardiac_only", "arousal_cardiac_only"),
                ("eda_only", "arousal_eda_only"))
        } | {"n_windows": len(both)},
        "rest_distribution": {
            "all_rest": {"median": round(float(rest.median()), 3),
                         "p10": round(float(rest.quantile(0.1)), 3),
                         "p90": round(float(rest.quantile(0.9)), 3)},
            "baseline_rest_after_warmup": {"n": len(base),
                                           "median": round(float(base.median()), 3),
                                           "p90": round(float(base.quantile(0.9)), 3)},
        },
        "task_distribution_median": {
            t: round(float(scored[scored.task == t].arousal.median()), 3) for t in TASKS
        },
        **{f"ablation_{name}": {
            **{k: v for k, v in _summary(df, f"arousal_{name}").items() if k in _BRIEF},
            "baseline_rest_median": round(float(
                df[df.phase == "rest_baseline"][f"arousal_{name}"].median()), 3),
        } for name in CONFIGS if name != "all"},
        "per_subject_auroc": main_run["per_subject_auroc"],
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
