"""Per-(subject, channel) ordering of incoming batches.

A channel's batches must move forward in time: a batch whose ``start_ns`` is at or before the
last accepted sample of the same subject and channel overlaps data already stored (or goes back
in time) and is refused, so stored samples stay strictly increasing and are never silently
interleaved. Idempotent re-sends are recognised by batch id *before* this check (see
:mod:`wearemo.pipeline`).

Example
-------
>>> from wearemo.samples import SampleBatch
>>> tracker = OrderTracker(lambda subject, channel: None)
>>> b = SampleBatch(batch_id="b1", subject_id="s1", device_id="d1", channel="eda",
...                 start_ns=10**9, rate_hz=4.0, values=[1.0, 1.1])
>>> tracker.check(b) is None
True
>>> tracker.accept(b)
>>> print(tracker.check(b).message)  # doctest: +ELLIPSIS
batch 'b1': start_ns 1000000000 of channel 'eda' is at or before the last accepted sample ...
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from wearemo.samples import Channel, SampleBatch

__all__ = ["OrderTracker", "OrderViolation"]


@dataclass(frozen=True, slots=True)
class OrderViolation:
    """A batch that overlaps or precedes data already accepted for its channel.

    Attributes
    ----------
    field
        Always ``"start_ns"``.
    start_ns
        The batch's first sample time.
    last_accepted_ns
        Last accepted sample time of that subject's channel.
    channel
        The channel.
    message
        Human-readable explanation naming all of the above.
    """

    field: str
    start_ns: int
    last_accepted_ns: int
    channel: Channel
    message: str


class OrderTracker:
    """Remembers the last accepted sample time per ``(subject_id, channel)``.

    Parameters
    ----------
    last_sample_ns
        Where to look up a pair seen for the first time since start (the store's
        ``last_sample_ns``), so the ordering state survives restarts.

    Notes
    -----
    ``check`` then ``accept`` must run under the caller's per-subject lock; the tracker only
    guards its own dictionary.
    """

    def __init__(self, last_sample_ns: Callable[[str, Channel], int | None]) -> None:
        self._lookup = last_sample_ns
        self._last: dict[tuple[str, Channel], int | None] = {}
        self._lock = threading.Lock()

    def last_accepted_ns(self, subject_id: str, channel: Channel) -> int | None:
        """Last accepted sample time of a subject's channel (``None`` if none yet)."""
        key = (subject_id, Channel(channel))
        with self._lock:
            if key in self._last:
                return self._last[key]
        value = self._lookup(subject_id, key[1])
        with self._lock:
            return self._last.setdefault(key, value)

    def check(self, batch: SampleBatch) -> OrderViolation | None:
        """``None`` if ``batch`` starts after the last accepted sample of its channel."""
        last = self.last_accepted_ns(batch.subject_id, batch.channel)
        if last is None or batch.start_ns > last:
            return None
        return OrderViolation(
            field="start_ns",
            start_ns=batch.start_ns,
            last_accepted_ns=last,
            channel=batch.channel,
            message=(
                f"batch {batch.batch_id!r}: start_ns {batch.start_ns} of channel "
                f"{batch.channel.value!r} is at or before the last accepted sample of subject "
                f"{batch.subject_id!r} ({last}); a channel's batches must not overlap or go back "
                "in time (re-send a stored batch with its original batch_id)"
            ),
        )

    def accept(self, batch: SampleBatch) -> None:
        """Record ``batch`` as accepted (its last sample becomes the channel's high mark)."""
        key = (batch.subject_id, batch.channel)
        end = batch.end_ns
        with self._lock:
            prev = self._last.get(key)
            self._last[key] = end if prev is None else max(prev, end)

    def forget(self, subject_id: str) -> None:
        """Drop cached marks of a subject (they are re-read from the lookup on next use)."""
        with self._lock:
            for key in [k for k in self._last if k[0] == subject_id]:
                del self._last[key]
