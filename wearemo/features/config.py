"""Window parameters and epoch-aligned window ends.

Example
-------
>>> cfg = WindowConfig(length_s=60, step_s=5)
>>> first_window_end(1_644_227_574_300_000_000, cfg) % cfg.step_ns
0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wearemo.signals.quality import PPG_SQI_MIN

__all__ = ["WindowConfig", "first_window_end"]


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """How windows are cut.

    Attributes
    ----------
    length_s
        Window length; windows are ``[end - length, end)``.
    step_s
        Step between window ends; ends sit on multiples of the step on the unix epoch, so a live
        stream and a re-run cut identical windows.
    min_coverage
        Coverage a source needs to be used (device RR over PPG beats) and below which the model
        should withhold; windows below it are still emitted.
    lateness_s
        How long to wait for a lagging channel: a window is emitted once any channel's newest
        usable data is more than this past its end.
    ppg_sqi_min
        PPG beats whose template correlation is below this are not used for HRV (intervals
        touching them are dropped, not interpolated); 0 uses every beat. Default
        :data:`~wearemo.signals.quality.PPG_SQI_MIN`.
    """

    length_s: float = 60.0
    step_s: float = 5.0
    min_coverage: float = 0.8
    lateness_s: float = 30.0
    ppg_sqi_min: float = PPG_SQI_MIN

    def __post_init__(self) -> None:
        for name in ("length_s", "step_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"WindowConfig.{name} must be a positive number, got {v}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(
                f"WindowConfig.min_coverage must be in [0, 1], got {self.min_coverage}"
            )
        if not (math.isfinite(self.lateness_s) and self.lateness_s >= 0):
            raise ValueError(f"WindowConfig.lateness_s must be >= 0, got {self.lateness_s}")

    @property
    def length_ns(self) -> int:
        """Window length, ns."""
        return round(self.length_s * 1e9)

    @property
    def step_ns(self) -> int:
        """Step, ns."""
        return round(self.step_s * 1e9)

    @property
    def lateness_ns(self) -> int:
        """Lateness, ns."""
        return round(self.lateness_s * 1e9)


def first_window_end(first_sample_ns: int, config: WindowConfig) -> int:
    """The first aligned end ``T`` with ``T - length >= first_sample_ns``.

    Example
    -------
    >>> first_window_end(2 * 10**9, WindowConfig(length_s=60, step_s=5)) // 10**9
    65
    """
    need = first_sample_ns + config.length_ns
    step = config.step_ns
    return -(-need // step) * step
