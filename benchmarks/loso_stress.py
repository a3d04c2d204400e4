"""Leave-one-subject-out stress detection on Stress-Predict: the figures behind the model card.

Featurises ``../shared/data/stress-predict/`` (cached in ``--features``), runs the pre-registered
model leave-one-subject-out (channel variants, model search nested in every fold) and prints a
final JSON line with pooled and per-subject balanced accuracy, macro-F1, AUROC and ECE, the
per-variant figures (what a device with only those channels gets: the channel ablations), and
ablations run in the same process with one fixed classifier (gradient-boosted trees, sigmoid
calibration; no search, so the ablations cost minutes, compared with that classifier's own run
on the unchanged set-up):

* without the personal baseline (raw feature levels instead of deviations);
* one model for all channel sets (missing inputs left to the trees) instead of variants;
* without the PPG template-quality gate (HRV from every corrected beat);
* 30-s and 120-s windows instead of 60-s (featurised again).

Usage::

    .venv/bin/python benchmarks/loso_stress.py [--features out/train-features.parquet]
        [--jobs 2] [--no-ablations] [--main-from wearemo/model/default/manifest.json]

``--main-from`` takes the nested main run from a model manifest made from the same data (its
data hash is checked) instead of running it again: `wearemo train` computes exactly that run.

≈ 60 min on 2 cores with the ablations (the nested main run ≈ 25 min of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from wearemo.batch import labelled_windows
from wearemo.features import WindowConfig
from wearemo.model import BaselineConfig
from wearemo.model.classifier import StressClassifier
from wearemo.model.estimator import DEFAULT_FEATURES, VARIANTS, VariantSpec
from wearemo.model.train import loso_evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"
KEYS = ("n", "balanced_accuracy", "macro_f1", "auroc", "ece")


def _fixed(seed: int) -> StressClassifier:
    return StressClassifier(calibration_folds=3, random_state=seed)


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v
            for k, v in summary["pooled"].items() if k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--features", type=Path, default=Path("out/train-features.parquet"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-ablations", dest="ablations", action="store_false")
    ap.add_argument("--main-from", type=Path, default=None,
                    help="reuse the LOSO summary of this model manifest (same data)")
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"{a.data} is absent: no LOSO evaluation (see shared/data/README.md)")
        print(json.dumps({"skipped": "data folder absent"}))
        sys.exit(0)
    t0 = time.perf_counter()
    data, digest = labelled_windows(a.data, cache=a.features, jobs=a.jobs)
    featurised = time.perf_counter() - t0
    if a.main_from is not None:
        manifest = json.loads(a.main_from.read_text())
        if manifest.get("data_hash") != digest:
            sys.exit(f"{a.main_from} was trained on other data ({manifest.get('data_hash')})")
        main_run = manifest["loso"]
    else:
        main_run = loso_evaluate(data, n_jobs=a.jobs).summary()
    print("main", json.dumps(_brief(main_run)), file=sys.stderr, flush=True)
    out: dict[str, Any] = {
        "data_hash": digest[:16], "subjects": len(data),
        "featurise_s": round(featurised, 1),
        "loso": {k: main_run[k] for k in ("pooled", "pooled_ci95",
                                          "per_subject_balanced_accuracy_mean",
                                          "per_subject_balanced_accuracy_ci95", "worst_subject",
                                          "per_task_predicted_stress_rate", "routed_windows",
                                          "selected_model_counts")},
        "per_variant": main_run["per_variant"],
        "per_subject_balanced_accuracy": main_run["per_subject_balanced_accuracy"],
    }
    if a.ablations:
        runs: dict[str, Any] = {}

        def run(name: str, d: Any = data, **kw: Any) -> None:
            runs[name] = _brief(loso_evaluate(d, n_jobs=a.jobs, make=_fixed, **kw).summary())
            print(name, json.dumps(runs[name]), file=sys.stderr, flush=True)

        run("fixed_classifier")  # the reference the ablations below change one thing of
        run("no_personal_baseline", variants=[v.raw() for v in VARIANTS],
            baseline=BaselineConfig(personal=False))
        run("one_model_for_all_channels",
            variants=[VariantSpec("single", (), DEFAULT_FEATURES)])
        for name, cfg in (("no_ppg_sqi_gate", WindowConfig(ppg_sqi_min=0.0)),
                          ("window_30s", WindowConfig(length_s=30.0)),
                          ("window_120s", WindowConfig(length_s=120.0))):
            cache = a.features.with_name(f"{a.features.stem}-{name}.parquet")
            other, _ = labelled_windows(a.data, cache=cache, jobs=a.jobs, config=cfg)
            run(name, other)
        out["ablations_fixed_classifier"] = runs
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
