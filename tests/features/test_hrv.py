"""HRV formulas: Task Force definitions by hand and NeuroKit2 on the same intervals."""

from __future__ import annotations

import math

import neurokit2 as nk
import numpy as np
import pandas as pd
import pytest

from wearemo.features import hrv_time_features
from wearemo.signals import rr_clean


def _rr(seed: int, n: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 800 + 40 * np.sin(np.arange(n) / 4) + rng.normal(0, 25, n)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore:DFA_alpha2:neurokit2.misc.NeuroKitWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_force_definitions_and_neurokit(seed: int) -> None:
    rr = _rr(seed)
    t = (np.cumsum(rr) * 1e6).astype(np.int64)
    h = hrv_time_features(rr_clean(rr, t, gap_tolerance_ms=1.0))
    d = np.diff(rr)
    # Task Force 1996 definitions written out directly.
    assert h.meannn_ms == pytest.approx(rr.mean(), abs=1e-6)
    assert h.sdnn_ms == pytest.approx(math.sqrt(np.sum((rr - rr.mean()) ** 2) / (rr.size - 1)),
                                      abs=1e-6)
    assert h.rmssd_ms == pytest.approx(math.sqrt(np.sum(d**2) / d.size), abs=1e-6)
    assert h.pnn50_pct == pytest.approx(100 * np.sum(np.abs(d) > 50) / rr.size, abs=1e-6)
    assert h.hr_mean_bpm == pytest.approx(60000 / rr.mean(), abs=1e-6)
    # NeuroKit2 on the same intervals (peaks in ms at 1000 Hz): rel 1e-6.
    peaks = np.concatenate([[0], np.cumsum(rr)])
    ref = pd.concat(
        [nk.hrv_time({"RRI": rr, "RRI_Time": peaks[1:] / 1000}, sampling_rate=1000),
         nk.hrv_nonlinear({"RRI": rr, "RRI_Time": peaks[1:] / 1000}, sampling_rate=1000)],
        axis=1,
    )
    for ours, theirs in [(h.meannn_ms, "HRV_MeanNN"), (h.sdnn_ms, "HRV_SDNN"),
                         (h.rmssd_ms, "HRV_RMSSD"), (h.pnn50_pct, "HRV_pNN50"),
                         (h.sd1_ms, "HRV_SD1"), (h.sd2_ms, "HRV_SD2")]:
        assert ours == pytest.approx(float(ref[theirs].iloc[0]), rel=1e-6), theirs


def test_constructed_series_known_rmssd_sdnn() -> None:
    # Alternating 800/900 ms: every successive difference is 100 ms, so RMSSD = 100 and
    # pNN50 = 100 * (n-1)/n; SDNN = 50 * sqrt(n/(n-1)).
    n = 60
    rr = np.where(np.arange(n) % 2 == 0, 800.0, 900.0)
    h = hrv_time_features(rr_clean(rr, (np.cumsum(rr) * 1e6).astype(np.int64)))
    assert h.rmssd_ms == pytest.approx(100.0, abs=1e-9)
    assert h.sdnn_ms == pytest.approx(50 * math.sqrt(n / (n - 1)), abs=1e-9)
    assert h.pnn50_pct == pytest.approx(100 * (n - 1) / n, abs=1e-9)
    d = np.diff(rr) / math.sqrt(2)  # ±70.7 ms: SD1 = their sample standard deviation
    assert h.sd1_ms == pytest.approx(math.sqrt(np.sum((d - d.mean()) ** 2) / (d.size - 1)),
                                     abs=1e-9)


def test_gap_excluded_from_successive_differences() -> None:
    rr = np.full(30, 800.0)
    rr[15:] = 1000.0
    t = (np.cumsum(rr) * 1e6).astype(np.int64)
    t[15:] += 10 * 10**9  # beats lost between 14 and 15: the 200-ms step is not a difference
    h = hrv_time_features(rr_clean(rr, t))
    assert h.rmssd_ms == 0.0 and h.n_successive == 28


def test_too_few_beats_is_nan() -> None:
    rr = np.full(5, 800.0)
    h = hrv_time_features(rr_clean(rr, (np.cumsum(rr) * 1e6).astype(np.int64)))
    assert math.isnan(h.rmssd_ms) and math.isnan(h.hr_mean_bpm)
