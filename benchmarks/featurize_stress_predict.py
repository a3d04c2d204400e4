"""Featurise every Stress-Predict subject and cache the windows (with labels) as Parquet.

Reads ``../shared/data/stress-predict/`` (Empatica E4 folders with ``labels.csv``; see that
folder's README for source, license and citation), runs each recording through the batch path
(``featurize_recording``: the same ``SubjectStream`` as live data) in a process pool of 2, adds
``label`` and ``task`` from ``Recording.window_label`` and writes one Parquet file. The last
line printed is a JSON object with the timing.

Usage::

    .venv/bin/python benchmarks/featurize_stress_predict.py \
        [--out out/features-stress-predict.parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from wearemo.datasets import find_recordings, load_recording
from wearemo.features import WindowConfig, featurize_recording, windows_to_frame

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "stress-predict"


def _one(path: str, length_s: float, step_s: float) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    rec = load_recording(path)
    windows = featurize_recording(rec, config=WindowConfig(length_s=length_s, step_s=step_s))
    frame = windows_to_frame(windows)
    labels = [rec.window_label(w.start_ns, w.end_ns) for w in windows]
    frame["label"] = [s.label if s else None for s in labels]
    frame["task"] = [s.task if s else None for s in labels]
    return frame, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=Path("out/features-stress-predict.parquet"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--step", type=float, default=5.0)
    ap.add_argument("--limit", type=int, default=0, help="only the first N subjects (0: all)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"{args.data} is absent: nothing to featurise (see ../shared/data/README.md).")
        print(json.dumps({"windows": 0, "skipped": "data folder absent"}))
        return 0
    paths = find_recordings(args.data)
    if args.limit:
        paths = paths[: args.limit]
    t0 = time.perf_counter()
    frames = []
    worker_s = 0.0
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(_one, str(p), args.window, args.step) for p in paths]
        for p, fut in zip(paths, futures, strict=True):
            frame, dt = fut.result()
            worker_s += dt
            frames.append(frame)
            print(f"{p.name}: {len(frame)} windows in {dt:.1f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    df = pd.concat(frames, ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(args.out, index=False)
    n = len(df)
    print(json.dumps({
        "subjects": len(paths),
        "windows": n,
        "labelled": int(df["label"].notna().sum()),
        "seconds": round(wall, 1),
        "ms_per_window_wall": round(1000 * wall / max(n, 1), 2),
        "ms_per_window_cpu": round(1000 * worker_s / max(n, 1), 2),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "out": str(args.out),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
