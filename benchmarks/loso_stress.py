"""Leave-one-subject-out stress detection on Stress-Predict: the figures behind the model card.

Featurises ``../shared/data/stress-predict/`` (cached in ``--features``), runs the
pre-registered model leave-one-subject-out, and prints a final JSON line with pooled and
per-subject balanced accuracy, macro-F1, AUROC and ECE, plus ablations run in the same process:
without the personal baseline (raw feature levels instead of deviations), without cardiac
features, without EDA features, and without the PPG template-quality gate
(``WindowConfig(ppg_sqi_min=0)``: HRV from every corrected beat, featurised again into
``<features>-nosqi.parquet``).

Usage::

    .venv/bin/python benchmarks/loso_stress.py [--features out/train-features.parquet]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wearemo.batch import labelled_windows
from wearemo.features import WindowConfig
from wearemo.model import BaselineConfig
from wearemo.model.baseline import RELATIVE_FEATURES
from wearemo.model.estimator import ABSOLUTE_FEATURES, DEFAULT_FEATURES
from wearemo.model.train import loso_evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--features", type=Path, default=Path("out/train-features.parquet"))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"{a.data} is absent: no LOSO evaluation (see shared/data/README.md)")
        print(json.dumps({"skipped": "data folder absent"}))
        sys.exit(0)
    t0 = time.perf_counter()
    data, digest = labelled_windows(a.data, cache=a.features, jobs=a.jobs)
    featurised = time.perf_counter() - t0
    main_run = loso_evaluate(data, n_jobs=a.jobs).summary()
    # Ablation in the same run: the same classifier on raw levels (no personal baseline).
    raw_names = [n for n in RELATIVE_FEATURES if n != "temp_mean_degC"] + list(ABSOLUTE_FEATURES)
    no_baseline = loso_evaluate(
        data, feature_names=raw_names, baseline=BaselineConfig(personal=False), n_jobs=a.jobs
    ).summary()
    # Channel ablations on the same windows: without cardiac features (an EDA wristband) and
    # without EDA (a chest strap or a watch without EDA).
    cardiac = ("rel_hr_", "rel_hrv_")
    no_cardiac = loso_evaluate(
        data, feature_names=[n for n in DEFAULT_FEATURES if not n.startswith(cardiac)],
        n_jobs=a.jobs).summary()
    no_eda = loso_evaluate(
        data, feature_names=[n for n in DEFAULT_FEATURES if "eda_" not in n],
        n_jobs=a.jobs).summary()
    # Ablation: no PPG template-quality gate (HRV from every beat, as before the gate existed).
    nosqi_cache = a.features.with_name(a.features.stem + "-nosqi.parquet")
    nosqi_data, _ = labelled_windows(a.data, cache=nosqi_cache, jobs=a.jobs,
                                     config=WindowConfig(ppg_sqi_min=0.0))
    no_sqi = loso_evaluate(nosqi_data, n_jobs=a.jobs).summary()
    print(json.dumps({
        "data_hash": digest[:16], "subjects": len(data),
        "featurise_s": round(featurised, 1), "total_s": round(time.perf_counter() - t0, 1),
        "features": list(DEFAULT_FEATURES),
        "loso": {k: main_run[k] for k in ("pooled", "per_subject_balanced_accuracy_mean",
                                          "per_subject_balanced_accuracy_ci95", "worst_subject",
                                          "per_task_predicted_stress_rate")},
        "per_subject_balanced_accuracy": main_run["per_subject_balanced_accuracy"],
        "ablation_no_personal_baseline": no_baseline["pooled"],
        "ablation_no_ppg_sqi_gate": no_sqi["pooled"],
        "ablation_no_cardiac_features": no_cardiac["pooled"],
        "ablation_no_eda_features": no_eda["pooled"],
        "estimated_windows": main_run["pooled"].get("n"),
        "estimated_windows_no_ppg_sqi_gate": no_sqi["pooled"].get("n"),
    }))


if __name__ == "__main__":
    main()
