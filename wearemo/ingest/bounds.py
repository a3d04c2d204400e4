"""Timestamp bounds at acceptance: samples must lie near the server's clock.

A wearable whose clock resets (to 1970, or to its firmware's build date) or runs years ahead,
or a client that sends ``start_ns = 9e18``, would otherwise store data no reader expects and,
worse, move its channel's ordering mark far into the future, so every correct batch after it
is refused as "going back in time". :class:`TimeBounds` refuses, before anything is stored, a
batch with a sample later than the server clock plus ``max_ahead_s`` or earlier than the clock
minus ``max_age_days``. Batch tools reading recordings from disk do not use it: their data is
as old as the recording.

Example
-------
>>> from wearemo.samples import SampleBatch
>>> now = 1_800_000_000 * 10**9
>>> b = SampleBatch(batch_id="b1", subject_id="s1", device_id="d1", channel="eda",
...                 start_ns=now + 3600 * 10**9, rate_hz=4.0, values=[1.0, 1.1])
>>> [v] = TimeBounds(max_ahead_s=300).check([b], now_ns=now)
>>> v.index, v.field
(0, 'start_ns')
>>> print(v.message)  # doctest: +ELLIPSIS
start_ns: batch 'b1' (subject 's1', channel 'eda') starts at 2027-01-15T09:00:00Z, 3600 s ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from wearemo.samples import SampleBatch

__all__ = ["BoundViolation", "TimeBounds"]

_NS = 1_000_000_000
_DAY_NS = 86_400 * _NS


def _utc(t_ns: int) -> str:
    """``t_ns`` as ISO 8601 UTC to the second (int64 ns reach 2262: always in range)."""
    dt = datetime.fromtimestamp(t_ns // _NS, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class BoundViolation:
    """A batch with samples outside the accepted time span.

    Attributes
    ----------
    index
        Position of the batch in the request.
    batch_id, subject_id, channel
        Which batch.
    field
        The ``SampleBatch`` field at fault: ``"start_ns"``, ``"timestamps_ns"`` (with
        ``sample`` the first offending index) or ``"rate_hz"`` (regular samples that run past
        the bound).
    sample
        Index of the first sample out of bounds.
    bound_ns
        The bound it crosses (unix ns).
    message
        Names the batch, channel, the sample time, the bound and the setting behind it.
    """

    index: int
    batch_id: str
    subject_id: str
    channel: str
    field: str
    sample: int
    bound_ns: int
    message: str


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """How far from the server clock a sample may lie.

    Attributes
    ----------
    max_ahead_s
        Latest accepted sample: the clock plus this (``None``: no bound). The default, 300 s,
        covers clock skew between a phone or gateway and the server (NTP keeps both within a
        second; an unsynchronised phone drifts seconds a day) and is the skew Kerberos
        tolerates. It is kept small because a channel's batches must move forward in time: a
        sample accepted ``x`` seconds in the future makes every correct batch of that channel
        over the next ``x`` seconds a 409.
    max_age_days
        Earliest accepted sample: the clock minus this many days (``None``: no bound). The
        default, 3650 days, lets any store-and-forward backlog and re-uploads of recordings of
        past years through, and refuses clocks reset to their epoch (1970, 1980, 2000).
    setting_ahead, setting_age
        Names of the settings, quoted in the messages.

    Example
    -------
    >>> TimeBounds().max_ahead_s
    300.0
    """

    max_ahead_s: float | None = 300.0
    max_age_days: float | None = 3650.0
    setting_ahead: str = "WEAREMO_INGEST_MAX_AHEAD_S"
    setting_age: str = "WEAREMO_INGEST_MAX_AGE_DAYS"

    def __post_init__(self) -> None:
        for name in ("max_ahead_s", "max_age_days"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"TimeBounds.{name} must be a number >= 0 or None, got {v}")

    def span_ns(self, now_ns: int) -> tuple[int | None, int | None]:
        """The accepted ``[earliest, latest]`` sample times at ``now_ns`` (None: open).

        Example
        -------
        >>> TimeBounds(max_ahead_s=60, max_age_days=None).span_ns(0)
        (None, 60000000000)
        """
        lo = None if self.max_age_days is None else now_ns - round(self.max_age_days * _DAY_NS)
        hi = None if self.max_ahead_s is None else now_ns + round(self.max_ahead_s * _NS)
        return lo, hi

    def check(self, batches: Sequence[SampleBatch], *, now_ns: int) -> list[BoundViolation]:
        """Every batch of ``batches`` with a sample outside the span, in request order.

        Only a batch's first and last sample are compared (samples strictly increase), so
        the check costs O(1) per regular batch.

        Parameters
        ----------
        batches
            Validated batches.
        now_ns
            The server clock (``time.time_ns()``).

        Returns
        -------
        list of BoundViolation
            Empty when every sample is within bounds.

        Example
        -------
        >>> TimeBounds().check([], now_ns=0)
        []
        """
        lo, hi = self.span_ns(now_ns)
        out: list[BoundViolation] = []
        for i, b in enumerate(batches):
            v = self._violation(i, b, lo, hi, now_ns)
            if v is not None:
                out.append(v)
        return out

    def _violation(self, i: int, b: SampleBatch, lo: int | None, hi: int | None,
                   now_ns: int) -> BoundViolation | None:
        who = f"batch {b.batch_id!r} (subject {b.subject_id!r}, channel {b.channel.value!r})"
        clock = f"the server clock ({_utc(now_ns)})"
        if lo is not None and b.start_ns < lo:
            age_s = (now_ns - b.start_ns) // _NS
            return BoundViolation(
                i, b.batch_id, b.subject_id, b.channel.value, "start_ns", 0, lo,
                f"start_ns: {who} starts at {_utc(b.start_ns)}, {age_s} s before {clock}; "
                f"samples older than {self.max_age_days:g} days ({_utc(lo)}, "
                f"{self.setting_age}) are refused: is the device clock reset? Nothing of "
                "this request was stored",
            )
        if hi is None:
            return None
        last = b.end_ns
        if last <= hi:
            return None
        if b.start_ns > hi:
            field, k, t = "start_ns", 0, b.start_ns
        elif b.timestamps_ns is not None:
            k = int(np.searchsorted(b.times_ns(), hi, side="right"))
            field, t = "timestamps_ns", int(b.timestamps_ns[k])
        else:
            k = int(np.searchsorted(b.times_ns(), hi, side="right"))
            field, t = "rate_hz", last
        where = "starts at" if field == "start_ns" else f"has sample {k} at"
        if field == "rate_hz":
            where = f"runs to ({b.n_samples} samples at {b.rate_hz:g} Hz)"
        label = f"timestamps_ns[{k}]" if field == "timestamps_ns" else field
        return BoundViolation(
            i, b.batch_id, b.subject_id, b.channel.value, field, k, hi,
            f"{label}: {who} {where} {_utc(t)}, {(t - now_ns) // _NS} s ahead of {clock}; "
            f"samples more than {self.max_ahead_s:g} s ahead ({_utc(hi)}, "
            f"{self.setting_ahead}) are refused: is the device clock set wrong? Nothing of "
            "this request was stored",
        )
