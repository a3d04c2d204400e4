"""Beat-to-beat intervals from a device (BLE 0x2A37 RR, E4 ``IBI.csv``): plausibility and gaps.

Example
-------
>>> import numpy as np
>>> t = np.array([0, 800, 1600, 4000, 4810]) * 10**6
>>> c = rr_clean(np.array([800.0, 800.0, 800.0, 810.0, 810.0]), t)
>>> c.successive.tolist(), c.n_gaps
([True, True, False, True], 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RR_MAX_MS", "RR_MIN_MS", "CleanRR", "rr_clean"]

#: Physiologically plausible interval range (200–30 bpm), ms.
RR_MIN_MS = 300.0
RR_MAX_MS = 2000.0


@dataclass(frozen=True, slots=True)
class CleanRR:
    """Plausible beat intervals with their adjacency.

    Attributes
    ----------
    rr_ms
        Kept intervals, ms.
    times_ns
        Unix-ns time of the beat closing each kept interval.
    successive
        ``len(rr_ms) - 1`` booleans: True where intervals ``i`` and ``i + 1`` are adjacent beats
        (no dropped interval and no gap between them). Successive differences (RMSSD, pNN50,
        SD1) use only these pairs, so nothing is interpolated across a gap.
    n_dropped
        Intervals removed as implausible.
    n_gaps
        Breaks in adjacency (dropped intervals or missing beats).
    """

    rr_ms: np.ndarray
    times_ns: np.ndarray
    successive: np.ndarray
    n_dropped: int
    n_gaps: int

    @property
    def n_intervals(self) -> int:
        """Number of kept intervals."""
        return int(self.rr_ms.shape[0])


def rr_clean(
    rr_ms: np.ndarray,
    times_ns: np.ndarray,
    *,
    min_ms: float = RR_MIN_MS,
    max_ms: float = RR_MAX_MS,
    gap_tolerance_ms: float = 50.0,
) -> CleanRR:
    """Drop implausible intervals and mark which neighbours are truly successive.

    Interval ``i + 1`` follows interval ``i`` when its closing beat comes ``rr[i + 1]`` after the
    closing beat of ``i`` (within ``gap_tolerance_ms``, which absorbs timestamp rounding; E4
    stamps beats at 1/64 s) and neither was dropped. Nothing is interpolated: a gap only breaks
    the chain of successive differences.

    Parameters
    ----------
    rr_ms
        Intervals, ms.
    times_ns
        Unix-ns time of the closing beat of each interval (strictly increasing).
    min_ms, max_ms
        Plausible range (default 300–2000 ms, i.e. 200–30 bpm).
    gap_tolerance_ms
        Allowed mismatch between beat-time difference and interval.

    Returns
    -------
    CleanRR

    References
    ----------
    Task Force of the ESC and NASPE (1996). Heart rate variability: standards of measurement,
    physiological interpretation and clinical use. Circulation 93(5):1043-1065 (NN intervals:
    normal-to-normal beats only; artefacts excluded, not interpolated, for time-domain measures).

    Example
    -------
    >>> c = rr_clean(np.array([800.0, 150.0, 820.0]), np.array([800, 950, 1770]) * 10**6)
    >>> c.rr_ms.tolist(), c.n_dropped
    ([800.0, 820.0], 1)
    """
    rr = np.asarray(rr_ms, dtype=np.float64).reshape(-1)
    t = np.asarray(times_ns, dtype=np.int64).reshape(-1)
    if rr.shape != t.shape:
        raise ValueError(f"rr_clean: {rr.size} intervals but {t.size} times")
    if rr.size == 0:
        empty = np.empty(0)
        return CleanRR(empty, t[:0], np.zeros(0, dtype=bool), 0, 0)
    ok = np.isfinite(rr) & (rr >= min_ms) & (rr <= max_ms)
    # Adjacency on the raw sequence, then a pair of kept intervals is successive only if the
    # raw intervals were neighbours (no dropped interval between) and the times agree.
    dt_ms = np.diff(t) / 1e6
    adjacent = np.abs(dt_ms - rr[1:]) <= gap_tolerance_ms
    idx = np.flatnonzero(ok)
    succ = (np.diff(idx) == 1) & adjacent[idx[:-1]] if idx.size > 1 else np.zeros(0, dtype=bool)
    return CleanRR(
        rr[idx], t[idx], succ, n_dropped=int(rr.size - idx.size), n_gaps=int(np.sum(~succ))
    )
