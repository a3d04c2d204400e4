"""Device time → UTC: offset, drift and reboot handling for a wearable's clock.

A wearable stamps its frames in its own clock, either an RTC in unix microseconds (trusted as
UTC) or ticks since boot (microseconds). The bridge reads the device clock now and then
(``READ_CLOCK`` on the wearemo control point) and pairs each reading with the host's receive
time. :class:`DeviceClock` fits ``host = a + b · device`` over a recent window of such pairs with
a Theil–Sen estimator (median of pairwise slopes, then median intercept), which ignores the
occasional reading delayed by a retransmission. With a short baseline it estimates the offset
only (a slope from a few seconds of jittery readings would be noise).

A ticks clock that runs backwards means the device rebooted: :meth:`DeviceClock.observe` starts
a new *epoch* (fresh observations); the previous epochs' fits are kept so frames stamped before
the reboot, but received after it, can still be converted (``epoch=``).

Example
-------
>>> clock = DeviceClock()
>>> clock.observe(5_000_000, 1_700_000_000_000_000_000, rtc=False)   # 5 s after boot
>>> clock.to_utc_ns(6_000_000)                                        # one second later
1700000001000000000
>>> clock.offset_ns
1699999995000000000
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["ClockFit", "DeviceClock"]


@dataclass(frozen=True)
class ClockFit:
    """``host_ns = ref_host_ns + intercept_ns + slope · (device_us − ref_device_us) · 1000``.

    ``slope`` is 1.0 when drift is not estimated; ``rtc`` fits map device time as UTC directly.
    """

    rtc: bool
    ref_device_us: int
    ref_host_ns: int
    intercept_ns: float
    slope: float
    drift_estimated: bool

    def to_utc_ns(self, device_time_us: int) -> int:
        """Map a device time (µs) with this fit."""
        if self.rtc:
            return device_time_us * 1000
        dx_ns = (device_time_us - self.ref_device_us) * 1000
        return self.ref_host_ns + round(self.intercept_ns + self.slope * dx_ns)


class DeviceClock:
    """Map a wearable's device time (µs; RTC or ticks since boot) to UTC unix nanoseconds.

    Parameters
    ----------
    window
        Number of most recent observations used for the fit.
    min_drift_span_s
        Drift is estimated only once the window spans at least this much device time; before
        that the mapping is offset-only.
    backwards_tolerance_us
        A reading this much older than the previous one starts a new epoch (device reboot or
        RTC re-set). Readings are normally non-decreasing.

    Example
    -------
    >>> c = DeviceClock(min_drift_span_s=10)
    >>> for k in range(0, 60, 5):   # device runs 100 ppm fast, booted at host time 1e18 ns
    ...     c.observe(round(k * 1e6 * 1.0001), 10**18 + k * 10**9, rtc=False)
    >>> round(c.drift_ppm, 3), c.to_utc_ns(round(100e6 * 1.0001)) - 10**18
    (100.0, 100000000000)
    """

    def __init__(self, *, window: int = 64, min_drift_span_s: float = 30.0,
                 backwards_tolerance_us: int = 0) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        if min_drift_span_s < 0:
            raise ValueError(f"min_drift_span_s must be >= 0, got {min_drift_span_s}")
        self.window = window
        self.min_drift_span_s = min_drift_span_s
        self.backwards_tolerance_us = backwards_tolerance_us
        self._obs: deque[tuple[int, int]] = deque(maxlen=window)
        self._rtc: bool | None = None
        self._epoch = 0
        self._fit: ClockFit | None = None
        self._past: dict[int, ClockFit] = {}

    # ------------------------------------------------------------------ observations
    def observe(self, device_time_us: int, host_time_ns: int, *, rtc: bool) -> None:
        """Add one clock reading: device time (µs) and the host's UTC time (ns) at receipt.

        A backwards jump of the device time, or a switch between RTC and ticks, starts a new
        epoch (see :meth:`reset`).

        Example
        -------
        >>> c = DeviceClock()
        >>> c.observe(9_000_000, 10**18, rtc=False)
        >>> c.observe(1_000_000, 10**18 + 10**9, rtc=False)   # rebooted
        >>> c.epoch, c.to_utc_ns(1_000_000)
        (1, 1000000001000000000)
        """
        if device_time_us < 0 or host_time_ns < 0:
            raise ValueError("device_time_us and host_time_ns must be non-negative")
        if self._obs:
            last_device_us = self._obs[-1][0]
            if rtc != self._rtc or device_time_us < last_device_us - self.backwards_tolerance_us:
                self.reset()
        self._rtc = rtc
        self._obs.append((int(device_time_us), int(host_time_ns)))
        self._fit = self._compute_fit()

    def reset(self) -> None:
        """Start a new epoch (device rebooted): forget observations, keep past epochs' fits.

        Example
        -------
        >>> c = DeviceClock()
        >>> c.observe(1, 10**18, rtc=False); c.reset(); c.epoch, c.offset_ns
        (1, None)
        """
        if self._fit is not None:
            self._past[self._epoch] = self._fit
            for old in sorted(self._past)[:-4]:  # a handful of epochs is plenty
                del self._past[old]
        if self._obs or self._fit is not None:
            self._epoch += 1
        self._obs.clear()
        self._rtc = None
        self._fit = None

    # ------------------------------------------------------------------------ mapping
    def to_utc_ns(self, device_time_us: int, *, epoch: int | None = None) -> int:
        """Convert a device time (µs) to UTC unix ns.

        Parameters
        ----------
        device_time_us
            Time stamped by the device (e.g. a frame's first sample).
        epoch
            Epoch the stamp belongs to (default: the current one).

        Raises
        ------
        LookupError
            No observation yet in a ticks epoch (its boot time is unknown), or an unknown
            epoch.

        Example
        -------
        >>> c = DeviceClock()
        >>> c.observe(1_700_000_000_000_000, 1_700_000_000_020_000_000, rtc=True)
        >>> c.to_utc_ns(1_700_000_000_000_000)   # RTC is trusted as UTC
        1700000000000000000
        """
        if epoch is None or epoch == self._epoch:
            fit = self._fit
        else:
            fit = self._past.get(epoch)
            if fit is None:
                raise LookupError(f"no clock fit for epoch {epoch} (current {self._epoch})")
        if fit is None:
            raise LookupError("no clock observation yet: read the device clock first")
        return fit.to_utc_ns(device_time_us)

    @property
    def fit(self) -> ClockFit | None:
        """The current epoch's fit (None before the first observation)."""
        return self._fit

    @property
    def epoch(self) -> int:
        """Number of epochs started so far minus one (0 until the first reboot)."""
        return self._epoch

    @property
    def rtc(self) -> bool | None:
        """Whether the current epoch's device time is RTC (None before an observation)."""
        return self._rtc

    @property
    def n_observations(self) -> int:
        """Observations in the current window."""
        return len(self._obs)

    @property
    def offset_ns(self) -> int | None:
        """UTC minus device time at the newest observation (0 for RTC; None if unknown)."""
        if self._fit is None:
            return None
        d_us = self._obs[-1][0]
        return self._fit.to_utc_ns(d_us) - d_us * 1000

    @property
    def drift_ppm(self) -> float | None:
        """Device clock rate error vs host, ppm (positive: device runs fast).

        Estimated for RTC devices too (for reporting; the RTC is still trusted). None until the
        window spans ``min_drift_span_s``.
        """
        if self._fit is None or not self._fit.drift_estimated:
            return None
        # host = slope * device  ->  device runs fast by 1/slope - 1
        return (1.0 / self._fit.slope - 1.0) * 1e6

    # ------------------------------------------------------------------------ fitting
    def _compute_fit(self) -> ClockFit:
        d = np.array([o[0] for o in self._obs], dtype=np.int64)
        h = np.array([o[1] for o in self._obs], dtype=np.int64)
        d0, h0 = int(d[0]), int(h[0])
        x = ((d - d0) * 1000).astype(np.float64)
        y = (h - h0).astype(np.float64)
        span_s = (int(d[-1]) - int(d[0])) / 1e6
        slope = 1.0
        estimated = False
        if len(d) >= 2 and span_s >= max(self.min_drift_span_s, 1e-6):
            i, j = np.triu_indices(len(d), k=1)
            dx = x[j] - x[i]
            ok = dx > 0
            if np.any(ok):
                slope = float(np.median((y[j] - y[i])[ok] / dx[ok]))
                estimated = slope > 0
                if not estimated:
                    slope = 1.0
        intercept = float(np.median(y - slope * x))
        return ClockFit(bool(self._rtc), d0, h0, intercept, slope, estimated)
