"""wearemo's batch featuriser against the naive per-window NeuroKit2 path, on one hour of E4 data.

Data: one Stress-Predict subject from ``../shared/data/stress-predict/`` (Empatica E4; MIT
license, Iqbal et al. 2022, Sensors 22(21):8135), its first ``--minutes`` (default 60). When the
folder is absent a seeded simulated hour is used instead (``nk.ppg_simulate`` at 64 Hz,
``nk.eda_simulate`` at 4 Hz) and the output says so.

Windows: ``WindowConfig(length_s=60, step_s=0.25)`` (the WESAD protocol: 60-s windows every
0.25 s). Timed paths:

* wearemo: ``featurize_recording`` over the whole recording (every window, all channels present,
  so windows with enough device ``IBI.csv`` beats take their intervals from the device).
* naive NeuroKit2, per window: ``nk.ppg_process`` on the PPG slice, ``nk.hrv(peaks,
  sampling_rate=64)`` (all domains) and ``nk.eda_process`` on the EDA slice. It runs on a seeded
  random sample of ``--naive-sample`` windows and is extrapolated to all windows.

Agreement, on the sampled windows:

* ``identical_beats``: the naive path's own peaks fed to wearemo's HRV
  (``rr_clean`` + ``hrv_time_features``) against ``nk.hrv``'s MeanNN, SDNN, RMSSD, pNN50, SD1,
  SD2 (windows whose intervals all lie in wearemo's plausible 300-2000 ms range, else wearemo
  drops some and the inputs differ); ``max_rel_diff`` is over these.
* ``pipeline``: wearemo's ``hrv_*`` of the same window against the naive values, per beat source
  (``ppg``: wearemo's own PPG beats with Kubios correction; ``rr``: the device's intervals);
  median absolute and relative differences. These differ wherever the detectors/corrections
  differ: that is reported, not hidden.

Usage::

    .venv/bin/python benchmarks/features_vs_neurokit.py [--subject S02] [--minutes 60] \
        [--naive-sample 200] [--seed 0]

Prints progress, then one final JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import sys
import time
import warnings
from pathlib import Path

import neurokit2 as nk
import numpy as np

from wearemo.datasets import Recording, load_recording
from wearemo.features import WindowConfig, featurize_recording, hrv_time_features
from wearemo.samples import Channel, ChannelSamples
from wearemo.signals import rr_clean

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"
PPG_HZ, EDA_HZ = 64.0, 4.0
# wearemo feature -> NeuroKit2 column, where the definitions agree (see wearemo.features.hrv).
PAIRS = {
    "hrv_meannn_ms": "HRV_MeanNN",
    "hrv_sdnn_ms": "HRV_SDNN",
    "hrv_rmssd_ms": "HRV_RMSSD",
    "hrv_pnn50_pct": "HRV_pNN50",
    "hrv_sd1_ms": "HRV_SD1",
    "hrv_sd2_ms": "HRV_SD2",
}
HRV_ATTR = {
    "hrv_meannn_ms": "meannn_ms",
    "hrv_sdnn_ms": "sdnn_ms",
    "hrv_rmssd_ms": "rmssd_ms",
    "hrv_pnn50_pct": "pnn50_pct",
    "hrv_sd1_ms": "sd1_ms",
    "hrv_sd2_ms": "sd2_ms",
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _simulated(minutes: float, seed: int) -> Recording:
    """A seeded simulated recording (PPG 64 Hz, EDA 4 Hz) starting at a fixed unix time."""
    dur = round(minutes * 60)
    t0 = 1_644_227_574 * 10**9
    ppg = nk.ppg_simulate(duration=dur, sampling_rate=int(PPG_HZ), heart_rate=70,
                          random_state=seed)
    eda = nk.eda_simulate(duration=dur, sampling_rate=int(EDA_HZ), scr_number=dur // 30,
                          random_state=seed)
    chans = {}
    for ch, x, hz in ((Channel.PPG, ppg, PPG_HZ), (Channel.EDA, eda, EDA_HZ)):
        t = t0 + np.round(np.arange(x.size) * (1e9 / hz)).astype(np.int64)
        chans[ch] = ChannelSamples(t, np.asarray(x, dtype=np.float64), hz)
    return Recording("simulated", Path("."), chans)


def _naive_window(
    ppg: np.ndarray, eda: np.ndarray
) -> tuple[dict[str, float] | None, np.ndarray]:
    """The per-window NeuroKit2 path: nk.hrv's values (None if it failed) and the peaks."""
    out: dict[str, float] | None = None
    peaks = np.zeros(0, dtype=np.int64)
    try:
        _, info = nk.ppg_process(ppg, sampling_rate=int(PPG_HZ))
        peaks = np.asarray(info["PPG_Peaks"], dtype=np.int64)
        hrv = nk.hrv(peaks, sampling_rate=int(PPG_HZ))
        out = {c: float(hrv[c].iloc[0]) for c in PAIRS.values() if c in hrv}
    except Exception:  # the naive path fails on some windows; counted by the caller
        out = None
    if eda.size >= 8:
        # Timed whether it succeeds or not, as a naive user would run it.
        with contextlib.suppress(Exception):
            nk.eda_process(eda, sampling_rate=int(EDA_HZ))
    return out, peaks


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b != 0 else (0.0 if a == b else math.inf)


def _summary(rows: list[tuple[float, float]]) -> dict[str, float | int | None]:
    """Medians of both sides, median absolute/relative difference and max relative one."""
    if not rows:
        return {"n": 0, "median_wearemo": None, "median_nk": None, "median_abs": None,
                "median_rel": None, "max_rel": None}
    a = np.array(rows)
    absd = np.abs(a[:, 0] - a[:, 1])
    rel = np.array([_rel(x, y) for x, y in rows])
    return {
        "n": len(rows),
        "median_wearemo": float(np.median(a[:, 0])),
        "median_nk": float(np.median(a[:, 1])),
        "median_abs": float(np.median(absd)),
        "median_rel": float(np.median(rel)),
        "max_rel": float(np.max(rel)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--subject", default="S02")
    ap.add_argument("--minutes", type=float, default=60.0,
                    help="length of the recording to featurise (default: one hour)")
    ap.add_argument("--step", type=float, default=0.25, help="window step, s")
    ap.add_argument("--naive-sample", type=int, default=200,
                    help="windows run through the naive path (extrapolated to all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    folder = a.data / a.subject
    if folder.is_dir():
        full = load_recording(folder)
        rec = full.between(full.start_ns, full.start_ns + round(a.minutes * 60e9))
        source = f"real E4: {folder} (first {a.minutes:g} min)"
    else:
        print(f"{folder} is absent: using a SIMULATED recording (nk.ppg_simulate / "
              "nk.eda_simulate, seeded) instead of real E4 data", file=sys.stderr)
        rec = _simulated(a.minutes, a.seed)
        source = f"simulated ({a.minutes:g} min; {folder} absent)"
    span_s = (rec.end_ns - rec.start_ns) / 1e9
    print(f"data: {source}; span {span_s:.0f} s; channels "
          f"{sorted(c.value for c in rec.channels)}", file=sys.stderr)

    cfg = WindowConfig(length_s=60.0, step_s=a.step)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    windows = featurize_recording(rec, config=cfg)
    wearemo_s = time.perf_counter() - t0
    rss_wearemo = _peak_rss_mb()
    n = len(windows)
    print(f"wearemo: {n} windows in {wearemo_s:.1f} s ({1000 * wearemo_s / n:.2f} ms/window), "
          f"peak RSS {rss_wearemo:.0f} MB", file=sys.stderr)

    ppg_ch, eda_ch = rec.channels[Channel.PPG], rec.channels.get(Channel.EDA)
    rng = np.random.default_rng(a.seed)
    pick = np.sort(rng.choice(n, size=min(a.naive_sample, n), replace=False))
    naive_total = 0.0
    n_fail = 0
    identical: dict[str, list[tuple[float, float]]] = {k: [] for k in PAIRS}
    n_identical_windows = 0
    pipeline: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for k, i in enumerate(pick.tolist()):
        w = windows[i]
        p0, p1 = np.searchsorted(ppg_ch.times_ns, [w.start_ns, w.end_ns])
        ppg = ppg_ch.values[p0:p1]
        if eda_ch is not None:
            e0, e1 = np.searchsorted(eda_ch.times_ns, [w.start_ns, w.end_ns])
            eda = eda_ch.values[e0:e1]
        else:
            eda = np.zeros(0)
        t1 = time.perf_counter()
        ref, peaks = _naive_window(ppg, eda)
        naive_total += time.perf_counter() - t1
        if ref is None:
            n_fail += 1
            continue
        # Same beats in: the naive peaks through wearemo's HRV.
        peak_t = ppg_ch.times_ns[p0:p1][peaks]
        clean = rr_clean(np.diff(peak_t) / 1e6, peak_t[1:])
        if clean.n_dropped == 0 and clean.n_gaps == 0:
            n_identical_windows += 1
            h = hrv_time_features(clean)
            for name, col in PAIRS.items():
                mine = getattr(h, HRV_ATTR[name])
                if math.isfinite(mine) and math.isfinite(ref.get(col, math.nan)):
                    identical[name].append((mine, ref[col]))
        # Whole pipelines: wearemo's window vs the naive window.
        per = pipeline.setdefault(w.beat_source, {k: [] for k in PAIRS})
        for name, col in PAIRS.items():
            mine = w.features.get(name, math.nan)
            if math.isfinite(mine) and math.isfinite(ref.get(col, math.nan)):
                per[name].append((mine, ref[col]))
        if (k + 1) % 50 == 0:
            print(f"naive: {k + 1}/{pick.size} windows, {naive_total:.1f} s", file=sys.stderr)
    naive_ms = 1000 * naive_total / pick.size
    naive_s_est = naive_total / pick.size * n
    identical_stats = {k: _summary(v) for k, v in identical.items()}
    max_rel = max((s["max_rel"] or 0.0) for s in identical_stats.values())
    pipeline_stats = {
        src: {k: _summary(v) for k, v in per.items()} for src, per in sorted(pipeline.items())
    }
    sources = {}
    for w in windows:
        sources[w.beat_source] = sources.get(w.beat_source, 0) + 1

    for name in PAIRS:
        s = identical_stats[name]
        print(f"identical beats {name:15s} n={s['n']:4d} max_rel={s['max_rel']}",
              file=sys.stderr)
    for src, per in pipeline_stats.items():
        for name, s in per.items():
            print(f"pipeline[{src}] {name:15s} n={s['n']:4d} median_abs={s['median_abs']} "
                  f"median_rel={s['median_rel']}", file=sys.stderr)

    print(json.dumps({
        "windows": n,
        "speedup": round(naive_s_est / wearemo_s, 2),
        "max_rel_diff": max_rel,
        "wearemo_s": round(wearemo_s, 2),
        "naive_s_est": round(naive_s_est, 1),
        "wearemo_ms_per_window": round(1000 * wearemo_s / n, 3),
        "naive_ms_per_window": round(naive_ms, 2),
        "naive_windows_sampled": int(pick.size),
        "naive_failures": n_fail,
        "identical_beats_windows": n_identical_windows,
        "identical_beats": identical_stats,
        "pipeline": pipeline_stats,
        "beat_sources": sources,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_mb_after_wearemo": round(rss_wearemo, 1),
        "step_s": a.step,
        "data": source,
    }))


if __name__ == "__main__":
    main()
