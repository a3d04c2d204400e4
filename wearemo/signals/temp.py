"""Skin temperature: level and slope.

Example
-------
>>> import numpy as np
>>> t = np.arange(240) * 250_000_000
>>> lv = temp_level(33.0 + 0.5 * t / 60e9, t)
>>> round(lv.mean_degC, 3), round(lv.slope_degC_per_min, 6)
(33.249, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TempLevel", "linear_slope_per_min", "temp_level"]


@dataclass(frozen=True, slots=True)
class TempLevel:
    """Mean skin temperature (°C) and its least-squares slope (°C/min; NaN if < 2 samples)."""

    mean_degC: float  # noqa: N815 (unit-bearing name)
    slope_degC_per_min: float  # noqa: N815
    n_samples: int


def linear_slope_per_min(values: np.ndarray, times_ns: np.ndarray) -> float:
    """Ordinary least-squares slope of ``values`` against time, per minute (NaN if undefined).

    Example
    -------
    >>> linear_slope_per_min(np.array([1.0, 2.0]), np.array([0, 60 * 10**9]))
    1.0
    """
    y = np.asarray(values, dtype=np.float64)
    if y.size < 2:
        return float("nan")
    x = (np.asarray(times_ns, dtype=np.int64) - int(times_ns[0])) / 60e9
    xc = x - x.mean()
    denom = float(np.dot(xc, xc))
    if denom == 0.0:
        return float("nan")
    return float(np.dot(xc, y - y.mean()) / denom)


def temp_level(temp_degc: np.ndarray, times_ns: np.ndarray) -> TempLevel:
    """Mean and slope of skin temperature over a segment.

    Parameters
    ----------
    temp_degc
        Temperatures, °C.
    times_ns
        Their unix-ns times.

    Returns
    -------
    TempLevel

    Example
    -------
    >>> temp_level(np.array([33.0, 33.0]), np.array([0, 10**9])).slope_degC_per_min
    0.0
    """
    y = np.asarray(temp_degc, dtype=np.float64).reshape(-1)
    if y.size == 0:
        return TempLevel(float("nan"), float("nan"), 0)
    return TempLevel(float(y.mean()), linear_slope_per_min(y, times_ns), int(y.size))
