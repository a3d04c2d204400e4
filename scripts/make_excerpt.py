"""Cut a time excerpt from an Empatica E4 recording folder, keeping the E4 CSV layout (gzipped).

Used once to make the demo excerpt shipped in ``firmware_bridge/virtual_wearable/data``:

    python scripts/make_excerpt.py ../shared/data/stress-predict/S02 OUT --start 250 --end 1270

``--start``/``--end`` are seconds after the recording's first sample (row 0 of ``BVP.csv``).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd


def _cut_regular(src: Path, dst: Path, t0: float, t1: float) -> None:
    raw = pd.read_csv(src, header=None)
    start = float(raw.iloc[0, 0])
    rate = float(raw.iloc[1, 0])
    data = raw.iloc[2:].to_numpy(dtype=float)
    i0 = max(0, int(np.ceil((t0 - start) * rate)))
    i1 = min(len(data), int(np.floor((t1 - start) * rate)))
    new_start = start + i0 / rate
    ncol = data.shape[1]
    with gzip.open(dst, "wt", compresslevel=9) as f:
        f.write(", ".join([f"{new_start:.6f}"] * ncol) + "\n")
        f.write(", ".join([f"{rate:.6f}"] * ncol) + "\n")
        fmt = "%d" if src.name == "ACC.csv" else "%.6g"
        np.savetxt(f, data[i0:i1], fmt=fmt, delimiter=",")


def _cut_ibi(src: Path, dst: Path, t0: float, t1: float) -> None:
    lines = src.read_text().splitlines()
    start = float(lines[0].split(",")[0])
    rows = [tuple(map(float, ln.split(","))) for ln in lines[1:] if ln.strip()]
    with gzip.open(dst, "wt", compresslevel=9) as f:
        f.write(f"{t0:.6f}, IBI\n")
        for t_rel, ibi in rows:
            t = start + t_rel
            if t0 <= t < t1:
                f.write(f"{t - t0:.6f},{ibi:.6f}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    a = ap.parse_args()
    a.dst.mkdir(parents=True, exist_ok=True)
    rec_start = float((a.src / "BVP.csv").read_text().split("\n", 1)[0])
    t0, t1 = rec_start + a.start, rec_start + a.end
    for name in ("BVP", "EDA", "TEMP", "ACC", "HR"):
        _cut_regular(a.src / f"{name}.csv", a.dst / f"{name}.csv.gz", t0, t1)
    _cut_ibi(a.src / "IBI.csv", a.dst / "IBI.csv.gz", t0, t1)
    labels = pd.read_csv(a.src / "labels.csv")
    labels = labels[(labels.end_unix > t0) & (labels.start_unix < t1)].copy()
    labels["start_unix"] = labels.start_unix.clip(lower=t0)
    labels["end_unix"] = labels.end_unix.clip(upper=t1)
    labels.to_csv(a.dst / "labels.csv", index=False, float_format="%.3f")
    shutil.copy(a.src.parent / "LICENSE", a.dst / "LICENSE")


if __name__ == "__main__":
    main()
