"""Streaming trackers: beats and EDA components computed once per sample stream, not per window.

A tracker cuts its channel's stream into blocks ``[k·B, (k+1)·B)`` on the unix epoch and
processes each block exactly once, from the raw samples of ``[k·B - left, (k+1)·B + right)``,
as soon as the stream has reached ``(k+1)·B + right`` (or on :meth:`flush`). What falls inside
the block (beats, tonic/phasic samples, SCRs) is committed and never recomputed. The result
therefore depends only on the samples, never on how they were chunked into batches: a live
stream and a re-run over the same recording commit identical beats. Windows then read the
committed events (:meth:`PPGTrack.window`, :meth:`EDATrack.window`), so sliding a 60-s window by
0.25 s costs a lookup instead of a new detection. The price is latency: an event is committed at
most ``B + right`` after it happened.

Runs of samples are split at time gaps longer than 2.5 sample periods and at invalid samples
(non-finite; for EDA also negative); nothing is detected or interpolated across a split, and a
beat interval that spans one is never reported. Blocks with no sample in reach (a gap in the
stream) are stepped over in one move, so a gap of days or years costs what a block does.

Example
-------
>>> import neurokit2 as nk
>>> ppg = nk.ppg_simulate(duration=120, sampling_rate=64, heart_rate=75, random_state=2)
>>> track = PPGTrack()
>>> track.push(np.arange(ppg.size, dtype=np.int64) * 15_625_000, ppg, rate_hz=64.0)
>>> track.flush()
>>> w = track.window(30 * 10**9, 90 * 10**9)
>>> round(60_000 / float(np.nanmean(w.rr_ms)))
75
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from wearemo.signals.beats import beat_quality, beat_times_correct
from wearemo.signals.eda import SCR_MIN_AMPLITUDE_US, eda_decompose
from wearemo.signals.ppg import PpgFiducial, PpgMethod, ppg_fiducials
from wearemo.signals.quality import ppg_template_sqi

__all__ = ["BeatWindow", "EDATrack", "EDAWindow", "PPGTrack"]

_NS = 1_000_000_000
# Two detections of one beat by neighbouring blocks are closer than any plausible interval.
_REFRACTORY_NS = 250_000_000
# Runs shorter than this are not searched for beats (the detectors need a few cycles).
_MIN_PPG_RUN_S = 4.0


def _gap_ns(rate_hz: float) -> float:
    """Spacing above which two samples are a gap: 2.5 periods at the declared rate, 100 ms for
    timestamped data (NaN rate)."""
    return 2.5 * _NS / rate_hz if math.isfinite(rate_hz) and rate_hz > 0 else 100_000_000.0


def _i64(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=np.int64)


class _BlockTrack:
    """Epoch-aligned block scheduling over one channel's raw samples (see the module docstring)."""

    def __init__(self, *, block_s: float, left_s: float, right_s: float) -> None:
        if not (block_s > 0 and left_s >= 0 and right_s >= 0):
            raise ValueError(
                f"block_s must be > 0 and left_s, right_s >= 0; got {block_s}, {left_s}, "
                f"{right_s}"
            )
        self.block_ns = round(block_s * _NS)
        self.left_ns = round(left_s * _NS)
        self.right_ns = round(right_s * _NS)
        self._t = _i64()
        self._x = np.zeros(0)
        self._next: int | None = None
        self._last_ns: int | None = None
        # Times of the first sample after each break (time gap, invalid samples or a change of
        # sampling rate), sorted.
        self._breaks = _i64()
        # Where the declared rate changes: first sample time and rate (NaN: timestamped data).
        self._rate_t = _i64()
        self._rate_hz = np.zeros(0)

    # -- public -------------------------------------------------------------------------------

    @property
    def through_ns(self) -> int | None:
        """Everything before this time is committed (None before any sample)."""
        return self._next

    @property
    def latency_s(self) -> float:
        """Longest delay between a sample and the commit of what it belongs to, s."""
        return (self.block_ns + self.right_ns) / _NS

    def push(self, times_ns: np.ndarray, values: np.ndarray, *, rate_hz: float | None) -> None:
        """Append samples (strictly after those already pushed) and process completed blocks.

        Raises
        ------
        ValueError
            Samples not strictly increasing or not after the last one pushed.
        """
        t = np.asarray(times_ns, dtype=np.int64).reshape(-1)
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if t.shape != x.shape:
            raise ValueError(f"{t.size} times but {x.size} values")
        if t.size == 0:
            return
        if np.any(np.diff(t) <= 0) or (self._last_ns is not None and t[0] <= self._last_ns):
            raise ValueError("samples must be strictly increasing and after those pushed")
        rate = float(rate_hz) if rate_hz is not None else math.nan
        changed = bool(self._rate_hz.size) and not (
            math.isclose(rate, self._rate_hz[-1], rel_tol=1e-9)
            or (math.isnan(rate) and math.isnan(self._rate_hz[-1]))
        )
        if changed or not self._rate_hz.size:
            # A batch at another rate than the one before starts a new run: the signal
            # processing assumes one rate per run.
            self._rate_t = np.append(self._rate_t, t[0])
            self._rate_hz = np.append(self._rate_hz, rate)
        self._mark_breaks(t, x, force_first=changed)
        self._t = np.concatenate([self._t, t])
        self._x = np.concatenate([self._x, x])
        self._last_ns = int(t[-1])
        if self._next is None:
            self._next = int(t[0]) // self.block_ns * self.block_ns
        while True:
            self._skip_idle()
            if self._last_ns < self._next + self.block_ns + self.right_ns:
                break
            self._process_next()

    def flush(self) -> None:
        """Process every block that holds a sample, with whatever right context exists."""
        while self._next is not None and self._last_ns is not None:
            self._skip_idle()
            if self._next > self._last_ns:
                break
            self._process_next()

    def trim(self, before_ns: int) -> None:
        """Forget what no window starting at or after ``before_ns`` can need."""
        if self._next is None:
            return
        keep = min(before_ns, self._next) - self.left_ns
        i = int(np.searchsorted(self._t, keep, side="left"))
        if i:
            self._t, self._x = self._t[i:], self._x[i:]
        j = int(np.searchsorted(self._breaks, keep - self.block_ns, side="left"))
        if j:
            self._breaks = self._breaks[j:]
        k = int(np.searchsorted(self._rate_t, keep, side="right")) - 1
        if k > 0:
            self._rate_t, self._rate_hz = self._rate_t[k:], self._rate_hz[k:]
        self._trim_events(before_ns)

    # -- internals ----------------------------------------------------------------------------

    def _rate_at(self, t_ns: int) -> float:
        """Declared rate in force at ``t_ns`` (NaN for timestamped data)."""
        k = int(np.searchsorted(self._rate_t, t_ns, side="right")) - 1
        return float(self._rate_hz[max(k, 0)]) if self._rate_hz.size else math.nan

    @staticmethod
    def _period_of(rate: float, t: np.ndarray) -> float:
        """Sample period, ns: from the declared rate, else the run's median spacing."""
        if math.isfinite(rate) and rate > 0:
            return _NS / rate
        if t.size >= 2:
            return float(np.median(np.diff(t)))
        return float(_NS)

    def _valid(self, x: np.ndarray) -> np.ndarray:
        return np.isfinite(x)

    def _mark_breaks(self, t: np.ndarray, x: np.ndarray, *, force_first: bool) -> None:
        prev_t = self._t[-1:] if self._t.size else _i64()
        prev_x = self._x[-1:] if self._x.size else np.zeros(0)
        tt, xx = np.concatenate([prev_t, t]), np.concatenate([prev_x, x])
        ok = self._valid(xx)
        # Gaps: over 2.5 periods at the declared rate; for timestamped data a fixed 100 ms (a
        # spacing estimated per batch would make the marks depend on the chunking).
        rate = self._rate_at(int(t[0]))
        gap = np.diff(tt) > _gap_ns(rate)
        # A break sits at a valid sample whose predecessor is missing, far, or invalid.
        brk = ok[1:] & (gap | ~ok[:-1])
        if force_first and prev_t.size:
            brk[0] = bool(ok[1])
        new = tt[1:][brk]
        if not prev_t.size and ok[0]:
            new = np.concatenate([tt[:1], new])
        if new.size:
            self._breaks = np.concatenate([self._breaks, new])

    def _runs(self, t: np.ndarray, x: np.ndarray) -> list[tuple[int, int, float]]:
        """Maximal runs of valid samples at one rate without gaps: ``(i0, i1, rate_hz)``."""
        if t.size == 0:
            return []
        ok = self._valid(x)
        inner = self._rate_t[(self._rate_t > t[0]) & (self._rate_t <= t[-1])]
        pieces = np.concatenate([[0], np.searchsorted(t, inner), [t.size]]).astype(np.int64)
        runs: list[tuple[int, int, float]] = []
        for p0, p1 in itertools.pairwise(pieces):
            if p1 <= p0:
                continue
            declared = self._rate_at(int(t[p0]))
            tp = t[p0:p1]
            cut = np.flatnonzero(np.diff(tp) > _gap_ns(declared)) + 1
            edges = np.concatenate([[0], cut, [tp.size]]) + p0
            for a, b in itertools.pairwise(edges):
                seg = ok[a:b]
                if not seg.any():
                    continue
                # Split the gap-free segment further at invalid samples.
                d = np.diff(np.concatenate([[False], seg, [False]]).astype(np.int8))
                starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
                for s0, e0 in zip(starts, ends, strict=True):
                    i0, i1 = int(a + s0), int(a + e0)
                    rate = _NS / self._period_of(declared, t[i0:i1])
                    runs.append((i0, i1, rate))
        return runs

    def _skip_idle(self) -> None:
        """Step over blocks that would commit nothing: no sample in their input range (a gap).

        Samples up to the newest pushed are final (later ones come after it), so which blocks
        are idle depends on the data alone, never on the chunking; without this a gap would cost
        one empty block per ``block_s`` (a clock jump of years: forever).
        """
        if self._next is None or self._next < self._idle_from():
            return
        i = int(np.searchsorted(self._t, self._next - self.left_ns, side="left"))
        if i >= self._t.size:
            return
        # The first block whose input [bs - left, bs + block + right) reaches the next sample.
        reach = int(self._t[i]) - self.block_ns - self.right_ns
        first = (reach // self.block_ns + 1) * self.block_ns
        if first > self._next:
            self._next = first

    def _idle_from(self) -> int:
        """Blocks starting before this may do work without a sample in reach."""
        return -(2**63)

    def _process_next(self) -> None:
        assert self._next is not None
        bs = self._next
        be = bs + self.block_ns
        i0, i1 = np.searchsorted(self._t, [bs - self.left_ns, be + self.right_ns], side="left")
        self._process(bs, be, self._t[i0:i1], self._x[i0:i1])
        self._next = be

    def _breaks_between(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """For each pair, whether a break lies in ``(a, b]``."""
        return np.searchsorted(self._breaks, b, side="right") > np.searchsorted(
            self._breaks, a, side="right"
        )

    def _process(self, bs: int, be: int, t: np.ndarray, x: np.ndarray) -> None:
        raise NotImplementedError

    def _trim_events(self, before_ns: int) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class BeatWindow:
    """The committed beats of one window and their quality.

    Attributes
    ----------
    times_ns
        Corrected beat times inside the window (unix ns, microsecond precision).
    rr_ms
        ``len(times_ns) - 1`` intervals between them, ms; NaN for an interval that spans a
        break in the signal (gap or invalid samples) or ends at a beat whose waveform failed the
        template test (``sqi_min``).
    n_detected
        Beats the detector found in the window (before correction).
    n_corrected
        Beats the Kubios correction changed in the window: ``max(#kept beats that were moved or
        inserted, #detected beats it removed)``.
    sqi
        Mean template-matching quality of the window's detected beats (NaN when none could be
        rated).
    plausibility
        Fraction of the window spanned by plausible detected intervals
        (:func:`~wearemo.signals.beats.beat_quality`).
    n_low_sqi
        Beats whose template correlation is below ``sqi_min`` (their intervals are NaN).
    beat_sqi
        Template correlation of each beat in ``times_ns`` (NaN for beats the correction
        inserted or moved, which have no waveform of their own).
    """

    times_ns: np.ndarray
    rr_ms: np.ndarray
    n_detected: int
    n_corrected: int
    sqi: float
    plausibility: float
    n_low_sqi: int = 0
    beat_sqi: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def corrected_fraction(self) -> float:
        """``n_corrected / n_detected`` (0 when nothing was detected)."""
        return self.n_corrected / self.n_detected if self.n_detected else 0.0


class PPGTrack(_BlockTrack):
    """Beats of a PPG stream, detected, refined and corrected once per block.

    Each block's runs go through :func:`~wearemo.signals.ppg.ppg_fiducials` (clean, detect,
    sub-sample refinement) and :func:`~wearemo.signals.quality.ppg_template_sqi`; the new beats,
    preceded by the last ``context_s`` of committed beats, go through the Kubios correction
    (:func:`~wearemo.signals.beats.beat_times_correct`) split at signal breaks, and the
    corrected beats inside the block are committed.

    Parameters
    ----------
    block_s, left_s, right_s
        Block length and the raw-signal context before and after it (``right_s`` adds latency).
    context_s
        Committed beats fed to the correction ahead of a block's beats (its thresholds need a
        few dozen beats; this costs no latency).
    method, fiducial
        Passed to :func:`~wearemo.signals.ppg.ppg_fiducials`.

    Example
    -------
    >>> PPGTrack().window(0, 60 * 10**9).n_detected
    0
    """

    def __init__(
        self,
        *,
        block_s: float = 10.0,
        left_s: float = 5.0,
        right_s: float = 5.0,
        context_s: float = 30.0,
        method: PpgMethod = "elgendi",
        fiducial: PpgFiducial = "foot",
    ) -> None:
        super().__init__(block_s=block_s, left_s=left_s, right_s=right_s)
        self.context_ns = round(context_s * _NS)
        self.method: PpgMethod = method
        self.fiducial: PpgFiducial = fiducial
        self._beat_t = _i64()  # committed, corrected
        self._beat_changed = np.zeros(0, dtype=bool)
        self._beat_sqi = np.zeros(0)
        self._det_t = _i64()  # detected in committed blocks
        self._det_kept = np.zeros(0, dtype=bool)

    def window(self, start_ns: int, end_ns: int, *, sqi_min: float = 0.0) -> BeatWindow:
        """Committed beats in ``[start_ns, end_ns)`` (call once the track is through ``end_ns``).

        An interval touching a detected beat whose template correlation is below ``sqi_min`` is
        NaN, like the beats a device drops from its own interval stream (beats inserted by the
        correction have no waveform and are kept).
        """
        a, b = np.searchsorted(self._beat_t, [start_ns, end_ns], side="left")
        t = self._beat_t[a:b]
        rr = np.diff(t) / 1e6
        low = self._beat_sqi[a:b] < sqi_min  # NaN compares False: inserted beats pass
        if rr.size:
            rr[self._breaks_between(t[:-1], t[1:])] = np.nan
            rr[low[1:] | low[:-1]] = np.nan
        c, d = np.searchsorted(self._det_t, [start_ns, end_ns], side="left")
        det = self._det_t[c:d]
        n_changed = max(int(self._beat_changed[a:b].sum()), int((~self._det_kept[c:d]).sum()))
        rated = self._beat_sqi[a:b]
        sqi = rated[np.isfinite(rated)]
        plaus = beat_quality(det / 1e6, (end_ns - start_ns) / 1e6, 1000.0) if det.size else 0.0
        return BeatWindow(
            times_ns=t,
            rr_ms=rr,
            n_detected=int(det.size),
            n_corrected=n_changed,
            sqi=float(sqi.mean()) if sqi.size else float("nan"),
            plausibility=plaus,
            n_low_sqi=int(low.sum()),
            beat_sqi=self._beat_sqi[a:b],
        )

    def _process(self, bs: int, be: int, t: np.ndarray, x: np.ndarray) -> None:
        found_t: list[np.ndarray] = []
        found_q: list[np.ndarray] = []
        for i0, i1, rate in self._runs(t, x):
            if i1 - i0 < _MIN_PPG_RUN_S * rate:
                continue
            det = ppg_fiducials(x[i0:i1], rate_hz=rate, method=self.method,
                                fiducial=self.fiducial)
            if det.positions.size == 0:
                continue
            run_t = t[i0:i1].astype(np.float64)
            # Microsecond beat times, so the correction round-trips untouched beats exactly.
            bt = np.round(np.interp(det.positions, np.arange(i1 - i0), run_t) / 1e3)
            found_t.append(bt.astype(np.int64) * 1000)
            found_q.append(ppg_template_sqi(det.clean, det.positions, rate_hz=rate))
        new_t = np.concatenate(found_t) if found_t else _i64()
        new_q = np.concatenate(found_q) if found_q else np.zeros(0)
        last = int(self._beat_t[-1]) if self._beat_t.size else None
        lo = bs if last is None else max(bs, last + _REFRACTORY_NS)
        sel = new_t >= lo
        new_t, new_q = new_t[sel], new_q[sel]
        in_block = new_t < be
        det_t, det_q = new_t[in_block], new_q[in_block]
        ctx = self._beat_t[np.searchsorted(self._beat_t, bs - self.context_ns):]
        fixed = self._correct(np.concatenate([ctx, new_t]))
        keep = (fixed >= lo) & (fixed < be)
        fixed = fixed[keep]
        known = np.isin(fixed, det_t)
        sqi = np.full(fixed.size, np.nan)
        sqi[known] = det_q[np.searchsorted(det_t, fixed[known])]
        self._beat_t = np.concatenate([self._beat_t, fixed])
        self._beat_changed = np.concatenate([self._beat_changed, ~known])
        self._beat_sqi = np.concatenate([self._beat_sqi, sqi])
        self._det_t = np.concatenate([self._det_t, det_t])
        self._det_kept = np.concatenate([self._det_kept, np.isin(det_t, fixed)])

    def _idle_from(self) -> int:
        # A block within context_s of the last committed beat re-corrects those beats even
        # without samples of its own: only later blocks are skipped.
        if not self._beat_t.size:
            return -(2**63)
        return int(self._beat_t[-1]) + self.context_ns + 1

    def _correct(self, beats_ns: np.ndarray) -> np.ndarray:
        """Kubios correction, separately on each stretch of beats not broken by a gap."""
        if beats_ns.size < 2:
            return beats_ns
        broken = self._breaks_between(beats_ns[:-1], beats_ns[1:])
        parts = np.split(beats_ns, np.flatnonzero(broken) + 1)
        out = []
        for p in parts:
            origin = int(p[0])
            out.append(beat_times_correct((p - origin) // 1000) * 1000 + origin)
        return np.concatenate(out)

    def _trim_events(self, before_ns: int) -> None:
        keep = min(before_ns, self._next or before_ns) - self.context_ns
        a = int(np.searchsorted(self._beat_t, keep, side="left"))
        if a:
            self._beat_t = self._beat_t[a:]
            self._beat_changed = self._beat_changed[a:]
            self._beat_sqi = self._beat_sqi[a:]
        c = int(np.searchsorted(self._det_t, keep, side="left"))
        if c:
            self._det_t = self._det_t[c:]
            self._det_kept = self._det_kept[c:]


@dataclass(frozen=True, slots=True)
class EDAWindow:
    """The committed EDA components of one window.

    Attributes
    ----------
    times_ns
        Sample times inside the window.
    tonic_us, phasic_us
        Skin conductance level and phasic component per sample, µS; NaN at invalid samples
        (tonic, phasic) and in runs too short to decompose (phasic).
    scr_peak_ns
        Times of the SCR peaks inside the window.
    scr_amplitudes_us, scr_rise_times_s
        Their amplitudes (phasic peak minus onset) and rise times.
    """

    times_ns: np.ndarray
    tonic_us: np.ndarray
    phasic_us: np.ndarray
    scr_peak_ns: np.ndarray
    scr_amplitudes_us: np.ndarray
    scr_rise_times_s: np.ndarray

    @property
    def valid_fraction(self) -> float:
        """Fraction of the window's samples that are valid (finite, non-negative)."""
        n = self.tonic_us.size
        return float(np.isfinite(self.tonic_us).sum() / n) if n else 0.0

    @property
    def decomposed_fraction(self) -> float:
        """Fraction of the window's samples with a phasic component."""
        n = self.phasic_us.size
        return float(np.isfinite(self.phasic_us).sum() / n) if n else 0.0


class EDATrack(_BlockTrack):
    """Tonic/phasic EDA and SCRs of a stream, decomposed once per block.

    Each block's runs of valid samples (finite and non-negative: skin conductance cannot be
    negative, a negative value is a sensor fault) go through
    :func:`~wearemo.signals.eda.eda_decompose`; the samples and SCR peaks inside the block are
    committed.

    Example
    -------
    >>> EDATrack().window(0, 60 * 10**9).valid_fraction
    0.0
    """

    def __init__(
        self,
        *,
        block_s: float = 10.0,
        left_s: float = 15.0,
        right_s: float = 5.0,
        scr_min_amplitude_us: float = SCR_MIN_AMPLITUDE_US,
    ) -> None:
        super().__init__(block_s=block_s, left_s=left_s, right_s=right_s)
        self.scr_min_amplitude_us = scr_min_amplitude_us
        self._ct = _i64()
        self._tonic = np.zeros(0)
        self._phasic = np.zeros(0)
        self._scr_t = _i64()
        self._scr_amp = np.zeros(0)
        self._scr_rise = np.zeros(0)

    def window(self, start_ns: int, end_ns: int) -> EDAWindow:
        """Committed components in ``[start_ns, end_ns)``."""
        a, b = np.searchsorted(self._ct, [start_ns, end_ns], side="left")
        c, d = np.searchsorted(self._scr_t, [start_ns, end_ns], side="left")
        return EDAWindow(
            times_ns=self._ct[a:b],
            tonic_us=self._tonic[a:b],
            phasic_us=self._phasic[a:b],
            scr_peak_ns=self._scr_t[c:d],
            scr_amplitudes_us=self._scr_amp[c:d],
            scr_rise_times_s=self._scr_rise[c:d],
        )

    def _valid(self, x: np.ndarray) -> np.ndarray:
        return np.isfinite(x) & (x >= 0.0)

    def _process(self, bs: int, be: int, t: np.ndarray, x: np.ndarray) -> None:
        core = (t >= bs) & (t < be)
        tonic = np.full(t.size, np.nan)
        phasic = np.full(t.size, np.nan)
        scr_t, scr_amp, scr_rise = [], [], []
        for i0, i1, rate in self._runs(t, x):
            comp = eda_decompose(x[i0:i1], rate_hz=rate,
                                 scr_min_amplitude_us=self.scr_min_amplitude_us)
            tonic[i0:i1] = comp.tonic_us
            if comp.decomposed:
                phasic[i0:i1] = comp.phasic_us
                pk_t = t[i0:i1][comp.scr_peaks]
                inside = (pk_t >= bs) & (pk_t < be)
                scr_t.append(pk_t[inside])
                scr_amp.append(comp.scr_amplitudes_us[inside])
                scr_rise.append(comp.scr_rise_times_s[inside])
        self._ct = np.concatenate([self._ct, t[core]])
        self._tonic = np.concatenate([self._tonic, tonic[core]])
        self._phasic = np.concatenate([self._phasic, phasic[core]])
        if scr_t:
            self._scr_t = np.concatenate([self._scr_t, *scr_t])
            self._scr_amp = np.concatenate([self._scr_amp, *scr_amp])
            self._scr_rise = np.concatenate([self._scr_rise, *scr_rise])

    def _trim_events(self, before_ns: int) -> None:
        a = int(np.searchsorted(self._ct, before_ns, side="left"))
        if a:
            self._ct, self._tonic, self._phasic = self._ct[a:], self._tonic[a:], self._phasic[a:]
        c = int(np.searchsorted(self._scr_t, before_ns, side="left"))
        if c:
            self._scr_t = self._scr_t[c:]
            self._scr_amp = self._scr_amp[c:]
            self._scr_rise = self._scr_rise[c:]
