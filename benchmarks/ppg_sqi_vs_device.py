"""PPG template quality (SQI) against the E4's own beat acceptance: the evidence for PPG_SQI_MIN.

The Empatica E4 writes to ``IBI.csv`` only the beats its own (closed) algorithm accepts and drops
the rest. That is an independent, if conservative, label of which wrist-PPG beats are usable.
For each Stress-Predict subject this streams the whole PPG through :class:`PPGTrack` (the
production path), takes every committed beat that has its own waveform (finite SQI), and calls
it *accepted* when a device beat ends within 40 ms of it (after removing the median offset
between the two fiducials). It prints the SQI percentiles of accepted and dropped beats, the
AUC, and for candidate thresholds the share of accepted beats kept and of dropped beats
rejected, then a final JSON line.

Data: ``../shared/data/stress-predict/`` (Empatica E4; MIT license, Iqbal et al. 2022, Sensors
22(21):8135); absent data prints a skip line.

Usage::

    .venv/bin/python benchmarks/ppg_sqi_vs_device.py [--subjects S02 S04 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from wearemo.datasets import load_recording
from wearemo.samples import Channel
from wearemo.signals import PPG_SQI_MIN, PPGTrack

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"
DEFAULT_SUBJECTS = ["S02", "S04", "S05", "S07", "S10", "S16", "S22", "S27"]
MATCH_NS = 40_000_000
THRESHOLDS = (0.80, 0.86, 0.90, 0.95)


def _accepted(ours: np.ndarray, device: np.ndarray) -> np.ndarray:
    """Whether each of our beat times has a device beat within 40 ms after the median offset."""
    if device.size == 0 or ours.size == 0:
        return np.zeros(ours.size, dtype=bool)

    def nearest(sorted_t: np.ndarray, x: np.ndarray) -> np.ndarray:
        j = np.clip(np.searchsorted(sorted_t, x), 1, sorted_t.size - 1)
        return np.where(np.abs(sorted_t[j - 1] - x) <= np.abs(sorted_t[j] - x), j - 1, j)

    offset = float(np.median(ours[nearest(ours, device)] - device))
    shifted = device + round(offset)
    return np.abs(shifted[nearest(shifted, ours)] - ours) <= MATCH_NS


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a random accepted beat > that of a random dropped one), ties count half."""
    ranks = rankdata(np.concatenate([pos, neg]))  # Mann-Whitney U through average ranks
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--subjects", nargs="+", default=DEFAULT_SUBJECTS)
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"{a.data} is absent: nothing to measure (see shared/data/README.md)")
        print(json.dumps({"skipped": "data folder absent"}))
        sys.exit(0)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    sqi_all, acc_all = [], []
    for sid in a.subjects:
        rec = load_recording(a.data / sid, channels=[Channel.PPG, Channel.RR])
        ppg = rec.channels[Channel.PPG]
        rr = rec.channels.get(Channel.RR)
        track = PPGTrack()
        step = int(60 * (ppg.rate_hz or 64))
        for i in range(0, ppg.values.size, step):
            track.push(ppg.times_ns[i:i + step], ppg.values[i:i + step], rate_hz=ppg.rate_hz)
        track.flush()
        w = track.window(int(ppg.times_ns[0]), int(ppg.times_ns[-1]) + 1)
        rated = np.isfinite(w.beat_sqi)
        acc = _accepted(w.times_ns, rr.times_ns if rr is not None else np.zeros(0, np.int64))
        sqi_all.append(w.beat_sqi[rated])
        acc_all.append(acc[rated])
        print(f"{sid}: {int(rated.sum())} rated beats, {float(acc[rated].mean()):.1%} accepted "
              f"by the E4, median SQI accepted {np.median(w.beat_sqi[rated & acc]):.3f} / "
              f"dropped {np.median(w.beat_sqi[rated & ~acc]):.3f}", file=sys.stderr)
    sqi = np.concatenate(sqi_all)
    acc = np.concatenate(acc_all)
    pct = (5, 10, 25, 50, 75, 90)
    result = {
        "subjects": a.subjects,
        "beats": int(sqi.size),
        "accepted_fraction": round(float(acc.mean()), 3),
        "percentiles": list(pct),
        "sqi_accepted": [round(float(v), 3) for v in np.percentile(sqi[acc], pct)],
        "sqi_dropped": [round(float(v), 3) for v in np.percentile(sqi[~acc], pct)],
        "auc": round(_auc(sqi[acc], sqi[~acc]), 3),
        "thresholds": {
            f"{thr:.2f}": {
                "accepted_kept": round(float(np.mean(sqi[acc] >= thr)), 3),
                "dropped_rejected": round(float(np.mean(sqi[~acc] < thr)), 3),
            }
            for thr in THRESHOLDS
        },
        "ppg_sqi_min": PPG_SQI_MIN,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
