"""Live state fan-out: the pipeline's new states to WebSocket and Server-Sent Events clients.

:class:`LiveHub` subscribes once to ``Pipeline.subscribe``. The pipeline calls it on an
ingest worker thread right after states are stored; the hub only
hands them to the event loop (``call_soon_threadsafe``), so ingest never waits for a client.
On the loop each state goes into the bounded queue of every :class:`LiveSubscription` of its
subject. A client that lets its queue fill up (it reads slower than states arrive) is cut off:
its subscription is marked overflowed and its queue is drained, so the endpoint serving it ends
the connection with a close reason (:data:`SLOW_CLIENT_REASON`) instead of buffering without
bound or holding the ingest back. A subscription can also be ended from outside
(:meth:`LiveSubscription.end`), e.g. when the key of the connection it serves is revoked.

Example
-------
>>> import asyncio
>>> async def demo() -> str:
...     hub = LiveHub(queue_size=2)
...     hub.bind(asyncio.get_running_loop())
...     with hub.subscribe(["s1"]) as sub:
...         hub.publish([StateEstimate(subject_id="s1", window_start_ns=0, window_end_ns=5,
...                                    state="withheld", reason="warm-up", model_version="m")])
...         await asyncio.sleep(0)  # the hand-over runs on the loop
...         return (await sub.get()).reason
>>> asyncio.run(demo())
'warm-up'
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType

from wearemo.model.state import StateEstimate

__all__ = ["SLOW_CLIENT_REASON", "LiveEndedError", "LiveHub", "LiveSubscription",
           "SlowClientError"]

log = logging.getLogger(__name__)

#: Close reason sent to a client whose queue overflowed (fits a WebSocket close frame).
SLOW_CLIENT_REASON = "client too slow: {n} states queued unread; reconnect to resume"


class LiveEndedError(RuntimeError):
    """The subscription was ended; ``code`` is the WebSocket close code to end it with."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


class SlowClientError(LiveEndedError):
    """The subscription's queue overflowed; the client must be disconnected (WebSocket close
    code 1013, "try again later")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 1013)


class LiveSubscription:
    """One client's view of the live states of a set of subjects, with a bounded queue.

    Created by :meth:`LiveHub.subscribe`; use it as a context manager so it is always removed.
    """

    def __init__(self, hub: LiveHub, subject_ids: frozenset[str], queue_size: int) -> None:
        self.subject_ids = subject_ids
        self.queue_size = queue_size
        self.overflowed = False
        self._ended: LiveEndedError | None = None
        self._hub = hub
        self._queue: asyncio.Queue[StateEstimate | None] = asyncio.Queue()  # bounded by offer()

    def offer(self, states: Sequence[StateEstimate]) -> None:
        """Queue one delivery's states (event loop only); on overflow, mark the client slow.

        A client is slow when ``queue_size`` states were still unread as new ones arrived: a
        delivery (one processing turn, which may score many windows at once) is never cut
        by its own size, so memory stays bounded by ``queue_size`` plus one delivery.
        """
        if self._ended is not None or not states:
            return
        if self._queue.qsize() >= self.queue_size:
            self.overflowed = True
            # The client is being cut off and will replay from the store when it reconnects.
            self._end(SlowClientError(SLOW_CLIENT_REASON.format(n=self.queue_size)))
            return
        for state in states:
            self._queue.put_nowait(state)

    def end(self, reason: str, code: int) -> None:
        """End the subscription (event loop only): :meth:`get` raises
        :class:`LiveEndedError` with ``reason`` and ``code``; later states are dropped."""
        if self._ended is None:
            self._end(LiveEndedError(reason, code))

    def _end(self, error: LiveEndedError) -> None:
        self._ended = error
        # Drop what is queued; the sentinel wakes a reader blocked in get().
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def get(self) -> StateEstimate:
        """The next state, oldest first; :class:`LiveEndedError` once the subscription ended
        (:class:`SlowClientError` when its queue overflowed)."""
        state = await self._queue.get()
        if self._ended is not None:
            raise self._ended
        if state is None:  # only _end() queues the sentinel, so this cannot happen
            raise LiveEndedError("live subscription ended", 1011)
        return state

    def close(self) -> None:
        """Stop receiving states."""
        self._hub._remove(self)

    def __enter__(self) -> LiveSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LiveHub:
    """Fans new states out to live subscribers; never blocks the thread that publishes.

    Parameters
    ----------
    queue_size
        States a client may have queued unread before it is disconnected.

    Example
    -------
    >>> hub = LiveHub(queue_size=64)
    >>> hub.subscribers
    0
    """

    def __init__(self, *, queue_size: int = 256) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_subject: dict[str, set[LiveSubscription]] = {}
        self._lock = threading.Lock()  # guards _by_subject against publish on worker threads

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` (the server's event loop; call from the lifespan)."""
        self._loop = loop

    @property
    def subscribers(self) -> int:
        """Live subscriptions now open."""
        with self._lock:
            return len({s for subs in self._by_subject.values() for s in subs})

    def subscribe(self, subject_ids: Iterable[str]) -> LiveSubscription:
        """Start receiving the states of ``subject_ids`` (call on the event loop).

        Example
        -------
        >>> hub = LiveHub()
        >>> with hub.subscribe(["a", "b"]) as sub:  # doctest: +SKIP
        ...     state = await sub.get()
        """
        sub = LiveSubscription(self, frozenset(subject_ids), self.queue_size)
        with self._lock:
            for sid in sub.subject_ids:
                self._by_subject.setdefault(sid, set()).add(sub)
        return sub

    def publish(self, states: Sequence[StateEstimate]) -> None:
        """Pipeline listener: hand newly stored states to the event loop (any thread).

        Returns at once; states with no subscriber are not even handed over.
        """
        loop = self._loop
        if loop is None or not states:
            return
        with self._lock:
            wanted = [s for s in states if s.subject_id in self._by_subject]
        if wanted:
            try:
                loop.call_soon_threadsafe(self._deliver, wanted)
            except RuntimeError:  # loop closed: the server is shutting down
                log.debug("live hub: event loop closed, %d states not delivered", len(wanted))

    def _deliver(self, states: list[StateEstimate]) -> None:
        per_sub: dict[LiveSubscription, list[StateEstimate]] = {}
        with self._lock:
            for state in states:
                for sub in self._by_subject.get(state.subject_id, ()):
                    per_sub.setdefault(sub, []).append(state)
        for sub, mine in per_sub.items():
            sub.offer(mine)

    def _remove(self, sub: LiveSubscription) -> None:
        with self._lock:
            for sid in sub.subject_ids:
                subs = self._by_subject.get(sid)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._by_subject[sid]
