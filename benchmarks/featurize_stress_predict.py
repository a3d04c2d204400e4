"""Featurise every Stress-Predict subject (batch path = streaming code) and time it.

Reads ``../shared/data/stress-predict/`` (Empatica E4 folders with ``labels.csv``; see that
folder's README for source, license and citation) through ``wearemo.batch.featurize_dirs`` (each
recording streamed through ``SubjectStream`` in a process pool), writes the windows with their
labels to Parquet and prints a final JSON line with the timing.

Usage::

    .venv/bin/python benchmarks/featurize_stress_predict.py \
        [--out out/features-stress-predict.parquet] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from wearemo.batch import featurize_dirs

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("out/features-stress-predict.parquet"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--step", type=float, default=5.0)
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to featurise (see shared/data/README.md)")
        print(json.dumps({"skipped": "data folder absent"}))
        sys.exit(0)
    t0, c0 = time.perf_counter(), os.times()
    frame = featurize_dirs(a.data, window_s=a.window, step_s=a.step, jobs=a.jobs)
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system) - (
        c0.user + c0.system + c0.children_user + c0.children_system
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(a.out, index=False)
    n = len(frame)
    print(json.dumps({
        "subjects": int(frame.subject.nunique()), "windows": n,
        "labelled": int(frame.label.notna().sum()), "seconds": round(wall, 1),
        "ms_per_window_wall": round(1000 * wall / n, 2),
        "ms_per_window_cpu": round(1000 * cpu / n, 2), "workers": a.jobs,
        "cpus": os.cpu_count(), "out": str(a.out),
    }))


if __name__ == "__main__":
    main()
