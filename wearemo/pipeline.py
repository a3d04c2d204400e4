"""Per-subject streaming orchestration: ingest checks → store raw → windows → states → store.

One :class:`Pipeline` serves every subject. The first batch of a subject creates its
:class:`~wearemo.features.SubjectStream` (ring buffers and window scheduling) and its
:class:`~wearemo.model.SubjectEstimator` (gating and personal baseline). After a restart both are
rebuilt from the store, so nothing the service said before is lost or contradicted:

* ordering marks come from ``store.last_sample_ns``;
* the personal baseline is re-learned by replaying the stored windows, in order, through
  ``SubjectEstimator.assess`` (the baseline only learns during warm-up, so the replay stops as
  soon as it is ready);
* the stream is re-filled with the stored batches of the last ``SubjectStream.history_s``
  seconds (open windows, lateness, and the beat/EDA trackers' latency and context); windows
  it re-emits that are already stored are dropped, and windows that were never stored (e.g.
  the process died between storing a batch and its windows) are produced now.

All methods are blocking (NumPy/NeuroKit2 work, SQLite I/O): the API calls them from a thread
pool. Calls for the same subject are serialized by a per-subject lock; different subjects run
in parallel.

Example
-------
>>> from wearemo.model import load_model                      # doctest: +SKIP
>>> from wearemo.store import SQLiteStore                     # doctest: +SKIP
>>> pipeline = Pipeline(SQLiteStore("out/w.sqlite3"), load_model())  # doctest: +SKIP
>>> report = pipeline.ingest(batches)                         # doctest: +SKIP
>>> report.stored, report.windows, report.states              # doctest: +SKIP
(40, 24, 24)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from threadpoolctl import ThreadpoolController

from wearemo.features import FeatureWindow, SubjectStream, WindowConfig
from wearemo.ingest import BatchResult, BatchStatus, IngestReport, OrderTracker
from wearemo.model import StateEstimate, StressModel, SubjectEstimator
from wearemo.samples import Channel, SampleBatch
from wearemo.store import BatchConflictError, StateStore

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_REPLAY_PAGE = 1000


@dataclass(slots=True)
class _Subject:
    stream: SubjectStream
    estimator: SubjectEstimator


class Pipeline:
    """Streaming pipeline for all subjects, persisting everything in ``store``.

    Parameters
    ----------
    store
        Where raw batches, windows and states go (and where state is rebuilt from).
    model
        The stress model; each subject gets ``model.for_subject(subject_id)``.
    config
        Window length, step, coverage and lateness of every subject's stream.
    inner_threads
        OpenMP/BLAS threads the feature and model code may use (``None``: library defaults).
        Subjects already run in parallel, and a model scored one window at a time gains
        nothing from a thread team: each gradient-boosting ``predict`` is a parallel region
        whose barrier stalls when the CPU is shared with other busy processes.

    Example
    -------
    >>> pipeline = Pipeline(store, model)                           # doctest: +SKIP
    >>> [r.status for r in pipeline.ingest([b1, b1]).results]       # doctest: +SKIP
    ['stored', 'duplicate']
    """

    def __init__(
        self,
        store: StateStore,
        model: StressModel,
        *,
        config: WindowConfig | None = None,
        inner_threads: int | None = 1,
    ) -> None:
        self.store = store
        self.model = model
        self.config = config if config is not None else WindowConfig()
        self.inner_threads = inner_threads
        # Created after the model is loaded, so it sees the OpenMP runtime scikit-learn loaded.
        self._threadpools = ThreadpoolController()
        self._order = OrderTracker(store.last_sample_ns)
        self._subjects: dict[str, _Subject] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._registry_lock = threading.Lock()

    # -- public -----------------------------------------------------------------------------

    def ingest(self, batches: Sequence[SampleBatch]) -> IngestReport:
        """Process batches in order; stop at the first rejected one.

        Each batch is either ``stored`` (new: raw samples persisted, pushed through features and
        model, resulting windows and states persisted), a ``duplicate`` (its batch id is
        already stored for that subject: nothing changes) or ``rejected`` (it overlaps or
        precedes data already accepted for its channel, or re-uses a batch id with different
        content). Batches before a rejection stay stored, so a client can fix the offending
        batch and re-send the whole request: the stored ones come back as duplicates.

        Parameters
        ----------
        batches
            Validated batches, any mix of subjects and channels.

        Returns
        -------
        IngestReport
            Per-batch results (up to and including a rejection) and windows/states produced.

        Example
        -------
        >>> report = pipeline.ingest(batches)  # doctest: +SKIP
        >>> report.rejected is None            # doctest: +SKIP
        True
        """
        report = IngestReport()
        for batch in batches:
            with self._lock_of(batch.subject_id), self._inner_threads():
                result = self._ingest_one(batch, report)
            report.results.append(result)
            if result.status == "rejected":
                break
        return report

    def flush(self, subject_id: str | None = None) -> IngestReport:
        """Close every pending window (end of a recording) and store windows and states.

        Parameters
        ----------
        subject_id
            Only this subject; all open subjects when ``None``.

        Example
        -------
        >>> pipeline.flush().windows  # doctest: +SKIP
        3
        """
        report = IngestReport()
        with self._registry_lock:
            subjects = [subject_id] if subject_id is not None else list(self._subjects)
        for sid in subjects:
            with self._lock_of(sid), self._inner_threads():
                sub = self._subjects.get(sid)
                if sub is not None:
                    self._emit(sub, sub.stream.flush(), report)
        return report

    def subject_lock(self, subject_id: str) -> threading.Lock:
        """The lock serializing work on one subject (for callers that read-modify-write)."""
        return self._lock_of(subject_id)

    # -- internals --------------------------------------------------------------------------

    def _inner_threads(self) -> AbstractContextManager[object]:
        # omp_set_num_threads is per calling thread: other threads keep their own setting.
        if self.inner_threads is None:
            return nullcontext()
        return self._threadpools.limit(limits=self.inner_threads)

    def _lock_of(self, subject_id: str) -> threading.Lock:
        with self._registry_lock:
            lock = self._locks.get(subject_id)
            if lock is None:
                lock = self._locks[subject_id] = threading.Lock()
            return lock

    def _ingest_one(self, batch: SampleBatch, report: IngestReport) -> BatchResult:
        def result(
            status: BatchStatus, field: str | None = None, reason: str | None = None
        ) -> BatchResult:
            return BatchResult(
                batch.batch_id, batch.subject_id, batch.channel.value, status, field, reason
            )

        # Duplicates first: a re-sent batch necessarily "overlaps" its own stored samples.
        if self.store.has_batch(batch.subject_id, batch.batch_id):
            try:
                self.store.add_batch(batch)  # no-op for the same content; raises on a conflict
            except BatchConflictError as exc:
                return result("rejected", "batch_id", str(exc))
            return result("duplicate")
        violation = self._order.check(batch)
        if violation is not None:
            return result("rejected", violation.field, violation.message)
        # Restore the subject *before* storing: the replay must not contain this batch.
        sub: _Subject | None
        try:
            sub = self._subject(batch.subject_id)
        except Exception:
            log.exception("could not restore subject %r; storing raw data only", batch.subject_id)
            sub = None
        try:
            if not self.store.add_batch(batch):
                return result("duplicate")  # stored concurrently by another process
        except BatchConflictError as exc:
            return result("rejected", "batch_id", str(exc))
        self._order.accept(batch)
        if sub is not None:
            try:
                self._emit(sub, sub.stream.push(batch), report)
            except Exception:
                # The raw batch is safely stored; rebuild this subject from the store next
                # time rather than keep a stream whose state is now uncertain.
                log.exception(
                    "pipeline failed on batch %r of %r", batch.batch_id, batch.subject_id
                )
                self._subjects.pop(batch.subject_id, None)
        return result("stored")

    def _emit(self, sub: _Subject, windows: Sequence[FeatureWindow], report: IngestReport) -> None:
        if not windows:
            return
        states: list[StateEstimate] = [sub.estimator.update(w) for w in windows]
        # States first: a stored window marks "done" for a restart (see _restore), so a crash
        # in between leaves the window unstored and it is recomputed, never a window without
        # its state.
        self.store.add_states(states)
        self.store.add_windows(windows)
        report.windows += len(windows)
        report.states += len(states)

    def _subject(self, subject_id: str) -> _Subject:
        sub = self._subjects.get(subject_id)
        if sub is None:
            sub = self._subjects[subject_id] = self._restore(subject_id)
        return sub

    def _restore(self, subject_id: str) -> _Subject:
        """A subject's stream and estimator, rebuilt from what the store holds."""
        estimator = self.model.for_subject(subject_id)
        stream = SubjectStream(subject_id, config=self.config)
        sub = _Subject(stream, estimator)
        lasts = {
            ch: t for ch in Channel if (t := self.store.last_sample_ns(subject_id, ch)) is not None
        }
        if not lasts:
            return sub
        # 1. Personal baseline: replay stored windows in order until it is learned.
        start: int | None = None
        while not estimator.baseline.ready:
            page = self.store.windows(subject_id, start_ns=start, limit=_REPLAY_PAGE)
            for w in page:
                estimator.assess(w)
                if estimator.baseline.ready:
                    break
            if len(page) < _REPLAY_PAGE:
                break
            start = page[-1].end_ns + 1
        # 2. Stream: refill with the recent raw samples.
        span_ns = int(stream.history_s * _NS)
        replay_from = max(lasts.values()) - span_ns
        stored_ends = [
            w.end_ns
            for w in self.store.windows(subject_id, start_ns=replay_from, limit=1_000_000)
        ]
        last_stored_end = max(stored_ends) if stored_ends else None
        # Re-push the stored batches as they were sent (same rates, same chunking), in order of
        # their first sample, so the stream cuts exactly the windows a live run would have.
        replay = self.store.batches(subject_id, start_ns=replay_from, limit=1_000_000)
        fresh: list[FeatureWindow] = []
        for batch in replay:
            fresh.extend(
                w
                for w in stream.push(batch)
                if last_stored_end is None or w.end_ns > last_stored_end
            )
        if fresh:
            log.info("restored %d unstored windows of %r", len(fresh), subject_id)
            report = IngestReport()
            self._emit(sub, fresh, report)
        return sub
