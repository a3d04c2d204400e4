"""Per-subject streaming orchestration: ingest checks → store raw → windows → states → store.

One :class:`Pipeline` serves every subject. The first batch of a subject creates its
:class:`~wearemo.features.SubjectStream` (ring buffers and window scheduling) and its
:class:`~wearemo.model.SubjectEstimator` (gating and personal baseline). After a restart both are
rebuilt from the store, so nothing the service said before is lost or contradicted:

* ordering marks come from ``store.last_sample_ns``;
* the personal baseline is rebuilt from the stored calibration period when the subject has one
  (:meth:`Pipeline.calibrate`, the same stored windows through the same gate), else re-learned
  by replaying the stored windows, in order, through ``SubjectEstimator.assess`` (the baseline
  only learns during warm-up, so the replay stops as soon as it is ready);
* the stream is re-filled with the stored batches of the last ``SubjectStream.history_s``
  seconds (open windows, lateness, and the beat/EDA trackers' latency and context); windows
  it re-emits that are already stored are dropped, and windows that were never stored (e.g.
  the process died between storing a batch and its windows) are produced now.

All methods are blocking (NumPy/NeuroKit2 work, SQLite I/O): the API calls them from a thread
pool. Calls for the same subject are serialized by a per-subject lock; different subjects run
in parallel. Processing is cut into slices (a few windows at a time): background workers move
to the next subject after about ``_SLICE_S`` of work on one, and :meth:`Pipeline.erase` and
:meth:`Pipeline.close` stop a subject's processing between two slices instead of waiting for
its backlog.

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
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

from threadpoolctl import ThreadpoolController

from wearemo.features import FeatureWindow, SubjectStream, WindowConfig
from wearemo.ingest import BatchResult, BatchStatus, IngestReport, OrderTracker
from wearemo.metrics import (
    INGEST_BATCHES,
    INGEST_SAMPLES,
    PIPELINE_BATCH_SECONDS,
    STATES,
    STORE_WRITE_ERRORS,
)
from wearemo.model import StateEstimate, StressModel, SubjectEstimator
from wearemo.samples import SampleBatch
from wearemo.store import BatchConflictError, StateStore
from wearemo.store.base import (
    Calibration,
    ProcessingCursor,
    StoreBackpressureError,
    batch_digest,
)

__all__ = [
    "BaselineStatus",
    "CalibrationError",
    "Pipeline",
    "PipelineBusyError",
    "ProcessingLag",
    "ProcessingMode",
    "StateListener",
    "UnknownSubjectError",
]

#: Called with each subject's new states right after they are stored (live streams, alerts).
StateListener = Callable[[Sequence[StateEstimate]], None]

log = logging.getLogger(__name__)

#: ``inline``: an ingest call returns after its batches are processed (windows and states in
#: the report); ``background``: it returns once they are durably stored, and worker threads
#: process them from the store's queue.
ProcessingMode = Literal["inline", "background"]

_NS = 1_000_000_000
_REPLAY_PAGE = 1000
_MAX_WINDOWS = 1_000_000
#: Most batches one turn reads from a subject's queue.
_TURN_BATCHES = 500
#: A background worker gives the next subject its turn after about this much work on one
#: (checked between windows), so a subject with a large backlog cannot starve the others.
_SLICE_S = 0.25
#: Windows computed, scored and stored at a time; cancellation and the slice are checked
#: between them.
_EMIT_CHUNK = 16


class _ErasingError(Exception):
    """The subject is being erased: its processing stops where it is."""


@dataclass(slots=True)
class _Turn:
    """When one processing turn ends: after ``slice_s`` (``None``: when the queue is done) or,
    if ``stoppable``, when the pipeline closes. A turn always makes one step (a batch added or
    a chunk of windows) first, so a slow start (restoring a subject, a loaded store) cannot
    starve it."""

    slice_s: float | None
    stoppable: bool
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0

    def over(self, stopping: bool) -> bool:
        if self.stoppable and stopping:
            return True
        return (self.slice_s is not None and self.steps > 0
                and time.perf_counter() - self.started > self.slice_s)


class UnknownSubjectError(LookupError):
    """The store holds no data of the subject."""


class CalibrationError(ValueError):
    """A calibration period that cannot set the baseline; the message says why."""


class PipelineBusyError(RuntimeError):
    """Background processing lags too far behind: new data is refused until it catches up.

    Attributes
    ----------
    pending_samples
        Samples stored but not processed yet.
    max_pending_samples
        The bound that was exceeded.
    retry_after_s
        Estimated seconds until the lag is back under the bound.
    """

    def __init__(self, pending_samples: int, max_pending_samples: int, retry_after_s: int):
        self.pending_samples = pending_samples
        self.max_pending_samples = max_pending_samples
        self.retry_after_s = retry_after_s
        super().__init__(
            f"processing lags behind: {pending_samples} samples accepted but not processed "
            f"(limit {max_pending_samples}, max_pending_samples); retry in {retry_after_s} s"
        )


@dataclass(frozen=True, slots=True)
class ProcessingLag:
    """How far processing (features, model, states) lags behind durable acceptance.

    Attributes
    ----------
    mode
        The pipeline's :data:`ProcessingMode`.
    pending_batches, pending_samples
        Stored but not yet processed.
    pending_subjects
        Subjects with pending batches.
    max_pending_samples
        Above this, background ingest is refused (:class:`PipelineBusyError`).
    processed_batches, processed_samples
        Processed since this pipeline started.
    processing_samples_per_s
        Samples processed per second of processing work (the pipeline's real capacity);
        ``None`` before anything was processed.
    """

    mode: ProcessingMode
    pending_batches: int
    pending_samples: int
    pending_subjects: int
    max_pending_samples: int
    processed_batches: int
    processed_samples: int
    processing_samples_per_s: float | None


@dataclass(frozen=True, slots=True)
class BaselineStatus:
    """A subject's personal baseline as the pipeline uses it now.

    Attributes
    ----------
    subject_id
        The subject.
    source
        ``"warm-up"`` (learned from the first valid minutes) or ``"calibration"`` (from a
        labelled calibration period, see :meth:`Pipeline.calibrate`).
    ready
        Whether states are estimated against it (``False`` while the warm-up is in progress).
    medians, spreads
        Per feature: the baseline median (feature units) and robust spread (units of the
        ``rel_`` deviation); empty until ready.
    calibration
        The calibration period in use (``None`` for the warm-up).
    warmup_covered_s, warmup_s
        Seconds of warm-up covered so far (up to the latest stored window) and needed.
    warmup_windows, min_windows
        Valid windows collected during the warm-up so far and the fewest the baseline needs.
    """

    subject_id: str
    source: Literal["warm-up", "calibration"]
    ready: bool
    medians: dict[str, float]
    spreads: dict[str, float]
    calibration: Calibration | None
    warmup_covered_s: float
    warmup_s: float
    warmup_windows: int
    min_windows: int


@dataclass(slots=True)
class _Subject:
    stream: SubjectStream
    estimator: SubjectEstimator
    #: The stored cursor: batches through it are fully processed (every window they complete
    #: is stored).
    cursor: ProcessingCursor
    #: The last batch added to the stream; ahead of ``cursor`` while a turn that ended early
    #: left some of its windows to compute (that batch's samples: ``fed_samples``).
    fed: ProcessingCursor
    fed_samples: int = 0


class Pipeline:
    """Streaming pipeline for all subjects, persisting everything in ``store``.

    Parameters
    ----------
    store
        Where raw batches, windows and states go (and where state is rebuilt from).
    model
        The stress model; each subject gets ``model.for_subject(subject_id, extra=extra)``.
    extra
        Further models scored on the same windows (an affect and/or a valence model).
    config
        Window length, step, coverage and lateness of every subject's stream.
    inner_threads
        OpenMP/BLAS threads the feature and model code may use (``None``: library defaults).
        Subjects already run in parallel, and a model scored one window at a time gains
        nothing from a thread team: each gradient-boosting ``predict`` is a parallel region
        whose barrier stalls when the CPU is shared with other busy processes.
    mode
        ``"inline"`` (default): :meth:`ingest` processes what it stores before it returns, so
        its report counts the windows and states. ``"background"``: :meth:`ingest` returns
        once the batches are durably stored (one transaction per call) and ``workers``
        threads process them from the store's queue; call :meth:`start` first.
    workers
        Background processing threads (subjects are spread over them; one subject is
        processed by one thread at a time).
    max_pending_samples
        Background mode: while more samples than this are stored but unprocessed,
        :meth:`ingest` raises :class:`PipelineBusyError` and stores nothing.
    slice_s
        Background mode: a worker moves on to the next subject waiting after about this long
        on one (checked every 16 windows and every batch), so a subject with a large backlog
        cannot starve the others. 0 gives every subject one step per turn.

    Notes
    -----
    Whatever the mode, processing reads batches back from the store after a per-subject
    cursor (:class:`~wearemo.store.base.ProcessingCursor`), so a crash between acceptance and
    processing loses nothing: :meth:`start` queues every subject with unprocessed batches.

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
        extra: Sequence[StressModel] = (),
        mode: ProcessingMode = "inline",
        workers: int = 1,
        max_pending_samples: int = 5_000_000,
        slice_s: float = _SLICE_S,
    ) -> None:
        if mode not in ("inline", "background"):
            raise ValueError(f"unknown mode {mode!r}; options: 'inline', 'background'")
        if workers < 1 or max_pending_samples < 1:
            raise ValueError("workers and max_pending_samples must be >= 1")
        if not (math.isfinite(slice_s) and slice_s >= 0):
            raise ValueError(f"slice_s must be a number >= 0, got {slice_s}")
        if model.target != "stress":
            raise ValueError(f"the pipeline's main model must have target 'stress', model "
                             f"{model.version} has {model.target!r}")
        model.for_subject("check", extra=extra)  # incompatible models fail here, at start
        self.store = store
        self.model = model
        self.extra = tuple(extra)
        self.config = config if config is not None else WindowConfig()
        self.inner_threads = inner_threads
        # Created after the model is loaded, so it sees the OpenMP runtime scikit-learn loaded.
        self._threadpools = ThreadpoolController()
        self._order = OrderTracker(store.last_sample_ns)
        self._subjects: dict[str, _Subject] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._registry_lock = threading.Lock()
        self._listeners: list[StateListener] = []
        self.mode: ProcessingMode = mode
        self.workers = workers
        self.max_pending_samples = max_pending_samples
        self.slice_s = slice_s
        # Durable queue bookkeeping (the queue itself is the store): pending counts per
        # subject, the subjects waiting for a worker, and processing statistics.
        self._work = threading.Condition()
        self._pending: dict[str, list[int]] = {}
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        # Subjects an erase waits for: their processing stops at the next check.
        self._erasing: dict[str, int] = {}
        self._processed = [0, 0]  # batches, samples
        self._busy_s = 0.0

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
        if not batches:
            return report
        started = time.perf_counter()
        if self.mode == "background":
            self._check_lag()
        subjects = sorted({b.subject_id for b in batches})
        with ExitStack() as held:
            for sid in subjects:  # sorted: two requests never wait on each other's locks
                held.enter_context(self._lock_of(sid))
            new = self._classify(batches, report)
            try:
                flags: list[bool] | None = self.store.add_batches(new)
            except BatchConflictError:
                flags = None
            except StoreBackpressureError:
                if len(new) < 2:
                    for sid in subjects:
                        self._order.forget(sid)
                    raise
                # A store that buffers (InfluxDB's outbox) may take part of the request: go
                # batch by batch so the ones that fit are stored before the 503.
                flags = None
            except BaseException as exc:
                if isinstance(exc, Exception):
                    STORE_WRITE_ERRORS.labels(operation="add_batch").inc()
                for sid in subjects:
                    self._order.forget(sid)  # tentative marks of batches that were not stored
                raise
            if flags is None:
                for sid in subjects:
                    self._order.forget(sid)
        if flags is None:
            # Another process stored one of these ids meanwhile, or the store's buffer took
            # only part: redo them one by one.
            return self._ingest_each(batches)
        stored = {(b.subject_id, b.batch_id) for b, ok in zip(new, flags, strict=True) if ok}
        report.results = [
            r if r.status != "stored" or (r.subject_id, r.batch_id) in stored
            else BatchResult(r.batch_id, r.subject_id, r.channel, "duplicate")
            for r in report.results
        ]
        touched = self._note_pending([b for b, ok in zip(new, flags, strict=True) if ok])
        for sid, n_new in touched.items():
            # Inline: this request's batches, after at most one turn of backlog a crash left
            # (the workers take the rest), so one request's work is bounded by its own data.
            if self.mode != "inline" or self._process(
                sid, report, limit=n_new + _TURN_BATCHES, stoppable=True
            ):
                self._enqueue(sid)
        seconds = time.perf_counter() - started
        for batch, result in zip(batches, report.results, strict=False):
            _count_batch(batch, result.status, seconds)
        return report

    def _classify(self, batches: Sequence[SampleBatch], report: IngestReport) -> list[SampleBatch]:
        """Results of a request's batches in order, up to the first rejection; the new ones.

        Runs under the request's subject locks. Order marks of new batches are recorded
        tentatively (the caller forgets them if the write fails).
        """
        new: list[SampleBatch] = []
        mine: dict[tuple[str, str], SampleBatch] = {}

        def result(
            batch: SampleBatch, status: BatchStatus, field: str | None = None,
            reason: str | None = None,
        ) -> BatchResult:
            return BatchResult(
                batch.batch_id, batch.subject_id, batch.channel.value, status, field, reason
            )

        for batch in batches:
            key = (batch.subject_id, batch.batch_id)
            if key in mine:  # the same id twice in one request
                same = batch_digest(mine[key]) == batch_digest(batch)
                res = (result(batch, "duplicate") if same else result(
                    batch, "rejected", "batch_id",
                    f"batch_id {batch.batch_id!r} of subject {batch.subject_id!r} appears "
                    "twice in this request with different content"))
            elif self.store.has_batch(*key):
                # Duplicates first: a re-sent batch necessarily "overlaps" its stored samples.
                try:
                    self.store.add_batch(batch)  # no-op for the same content; raises otherwise
                    res = result(batch, "duplicate")
                except BatchConflictError as exc:
                    res = result(batch, "rejected", "batch_id", str(exc))
            elif (violation := self._order.check(batch)) is not None:
                res = result(batch, "rejected", violation.field, violation.message)
            else:
                self._order.accept(batch)
                mine[key] = batch
                new.append(batch)
                res = result(batch, "stored")
            report.results.append(res)
            if res.status == "rejected":
                break
        return new

    def _ingest_each(self, batches: Sequence[SampleBatch]) -> IngestReport:
        # The slow path after a cross-process race: one request per batch, same semantics.
        report = IngestReport()
        for batch in batches:
            one = self.ingest([batch])
            report.results.extend(one.results)
            report.windows += one.windows
            report.states += one.states
            if one.results and one.results[-1].status == "rejected":
                break
        return report

    def start(self) -> None:
        """Queue every subject with unprocessed stored batches and start the workers.

        In ``inline`` mode the workers only catch up on batches a crash left unprocessed; in
        ``background`` mode they do all processing. Idempotent.

        Example
        -------
        >>> pipeline.start()  # doctest: +SKIP
        >>> pipeline.lag().pending_samples  # doctest: +SKIP
        0
        """
        with self._work:
            if self._threads:
                return
            self._stopping = False
        counts = self.store.pending_counts()
        with self._work:
            for sid, (n, k) in counts.items():
                self._pending[sid] = [n, k]
        for sid in counts:
            log.info("subject %r: %d stored batches to process", sid, counts[sid][0])
            self._enqueue(sid)
        with self._work:
            self._threads = [
                threading.Thread(target=self._worker, name=f"wearemo-process-{i}", daemon=True)
                for i in range(self.workers)
            ]
            for t in self._threads:
                t.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the workers (and inline processing) at their next slice boundary, a few windows
        at most; unprocessed batches stay queued in the store (the next :meth:`start`
        processes them).

        Example
        -------
        >>> pipeline.close()  # doctest: +SKIP
        """
        with self._work:
            self._stopping = True
            self._work.notify_all()
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout=timeout_s)

    def drain(self) -> IngestReport:
        """Process every pending batch on the calling thread; windows and states produced.

        Example
        -------
        >>> pipeline.drain().states  # doctest: +SKIP
        12
        """
        report = IngestReport()
        while True:
            with self._work:
                todo = [sid for sid, (n, _) in self._pending.items() if n > 0]
            if not todo:
                return report
            for sid in todo:
                self._process(sid, report, limit=None)

    def lag(self) -> ProcessingLag:
        """How far processing lags behind acceptance.

        Example
        -------
        >>> pipeline.lag().pending_batches  # doctest: +SKIP
        0
        """
        with self._work:
            pending = [p for p in self._pending.values() if p[0] > 0]
            busy, (batches, samples) = self._busy_s, self._processed
        return ProcessingLag(
            mode=self.mode,
            pending_batches=sum(p[0] for p in pending),
            pending_samples=sum(p[1] for p in pending),
            pending_subjects=len(pending),
            max_pending_samples=self.max_pending_samples,
            processed_batches=batches,
            processed_samples=samples,
            processing_samples_per_s=samples / busy if busy > 0 and samples else None,
        )

    def subscribe(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener`` with every batch of new states once they are stored.

        Listeners run on the ingesting thread under the subject's lock, so they must be quick
        and must not block (hand the states to a queue or an event loop); an exception in one
        is logged and never fails the ingest. States reach listeners in window order per
        subject, only after the store holds them (a listener never announces a state a reader
        could not then fetch).

        Returns
        -------
        Callable[[], None]
            Removes the listener.

        Example
        -------
        >>> seen = []
        >>> unsubscribe = pipeline.subscribe(seen.extend)  # doctest: +SKIP
        >>> unsubscribe()                                  # doctest: +SKIP
        """
        with self._registry_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._registry_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

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
        # Pending batches first (background mode, or left by a crash): flushing closes windows
        # after the last accepted sample, not the last processed one.
        if subject_id is None:
            report = self.drain()
        else:
            report = IngestReport()
            self._process(subject_id, report, limit=None)
        with self._registry_lock:
            subjects = [subject_id] if subject_id is not None else list(self._subjects)
        for sid in subjects:
            with self._lock_of(sid), self._inner_threads():
                sub = self._subjects.get(sid)
                if sub is not None:
                    self._emit(sub, sub.stream.flush(), report)
        return report

    def calibrate(self, subject_id: str, start_ns: int, end_ns: int) -> BaselineStatus:
        """Set a subject's personal baseline from a labelled calibration period.

        The baseline becomes the median of the subject's stored feature windows whose end lies
        in ``[start_ns, end_ns)`` and that pass the model's gate (windows withheld for missing
        channels, poor signal or motion do not count). States computed from then on use it;
        states already stored stay as they were. The period is stored and replaces any earlier
        calibration, and a restart rebuilds the same baseline from it. On an error nothing
        changes.

        Parameters
        ----------
        subject_id
            A subject with stored data.
        start_ns, end_ns
            The period (unix ns, on window end times); its data must already be ingested.

        Returns
        -------
        BaselineStatus
            The new baseline, with the stored :class:`~wearemo.store.base.Calibration`.

        Raises
        ------
        UnknownSubjectError
            The store has no data of the subject.
        CalibrationError
            ``end_ns <= start_ns``, a model without personal baseline, or fewer usable windows
            in the period than the baseline needs (the message gives both numbers).

        Example
        -------
        >>> rest = pipeline.calibrate("s1", t0, t0 + 300 * 10**9)  # doctest: +SKIP
        >>> rest.source, rest.calibration.windows_used               # doctest: +SKIP
        ('calibration', 49)
        """
        if end_ns <= start_ns:
            raise CalibrationError(f"end ({end_ns} ns) must be after start ({start_ns} ns)")
        with self._lock_of(subject_id), self._inner_threads():
            if not self.store.has_subject(subject_id):
                raise UnknownSubjectError(f"unknown subject {subject_id!r}")
            sub = self._subject(subject_id)
            if not sub.estimator.baseline.config.personal:
                raise CalibrationError(
                    f"model {self.model.version} uses no personal baseline; nothing to calibrate"
                )
            windows = self.store.windows(
                subject_id, start_ns=start_ns, end_ns=end_ns, limit=_MAX_WINDOWS
            )
            try:
                # Raises before touching the baseline when too few windows are usable.
                used = sub.estimator.calibrate(windows)
            except ValueError as exc:
                raise CalibrationError(
                    f"{exc} ({len(windows)} windows of this subject end in the period; windows "
                    "withheld for missing channels, poor signal or motion do not count)"
                ) from exc
            record = Calibration(
                subject_id=subject_id, start_ns=start_ns, end_ns=end_ns,
                windows_through_ns=windows[-1].end_ns if windows else start_ns,
                windows_used=used,
                created_ns=time.time_ns(),
            )
            try:
                self.store.set_calibration(record)
            except Exception:
                # The baseline in memory is no longer the stored one: rebuild it next time.
                self._subjects.pop(subject_id, None)
                raise
            return self._status(sub, record)

    def erase(self, subject_id: str) -> dict[str, int]:
        """Erase a subject: everything stored of it and everything this pipeline holds.

        Processing of the subject stops at its next check (between windows) instead of
        finishing its backlog; then, under the subject's lock, its stored data, stream,
        baseline, ordering marks and pending queue are dropped, so a later upload with the
        same id starts from nothing (new warm-up, old batch ids accepted again).

        Returns
        -------
        dict[str, int]
            Records removed per kind (the store's ``erase_subject`` counts).

        Example
        -------
        >>> pipeline.erase("s01")["batches"]  # doctest: +SKIP
        72
        """
        with self._work:  # processing of the subject stops at its next check
            self._erasing[subject_id] = self._erasing.get(subject_id, 0) + 1
        try:
            with self._lock_of(subject_id):
                counts = self.store.erase_subject(subject_id)
                self._subjects.pop(subject_id, None)
                with self._work:
                    self._pending.pop(subject_id, None)
                self._order.forget(subject_id)
        finally:
            with self._work:
                self._erasing[subject_id] -= 1
                if not self._erasing[subject_id]:
                    del self._erasing[subject_id]
        return counts

    def baseline(self, subject_id: str) -> BaselineStatus:
        """The personal baseline a subject's states are estimated against now.

        Raises :class:`UnknownSubjectError` when the store has no data of the subject.

        Example
        -------
        >>> b = pipeline.baseline("s1")                        # doctest: +SKIP
        >>> b.source, b.ready, round(b.medians["hr_mean_bpm"])  # doctest: +SKIP
        ('warm-up', True, 71)
        """
        with self._lock_of(subject_id), self._inner_threads():
            if not self.store.has_subject(subject_id):
                raise UnknownSubjectError(f"unknown subject {subject_id!r}")
            sub = self._subject(subject_id)
            calibrated = sub.estimator.baseline.source == "calibration"
            return self._status(sub, self.store.calibration(subject_id) if calibrated else None)

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

    def _note_pending(self, stored: Sequence[SampleBatch]) -> dict[str, int]:
        """Count newly stored batches as pending; per subject (in order), how many."""
        touched: dict[str, int] = {}
        with self._work:
            for b in stored:
                p = self._pending.setdefault(b.subject_id, [0, 0])
                p[0] += 1
                p[1] += b.n_samples
                touched[b.subject_id] = touched.get(b.subject_id, 0) + 1
        return touched

    def _check_lag(self) -> None:
        lag = self.lag()
        if lag.pending_samples <= self.max_pending_samples:
            return
        rate = lag.processing_samples_per_s or 10_000.0
        excess = lag.pending_samples - self.max_pending_samples // 2
        retry = min(60, max(1, math.ceil(excess / rate / max(1, self.workers))))
        raise PipelineBusyError(lag.pending_samples, self.max_pending_samples, retry)

    def _enqueue(self, subject_id: str) -> None:
        with self._work:
            if subject_id not in self._queued:
                self._queued.add(subject_id)
                self._ready.append(subject_id)
                self._work.notify()

    def _worker(self) -> None:
        while True:
            with self._work:
                while not self._ready and not self._stopping:
                    self._work.wait()
                if self._stopping:
                    return
                sid = self._ready.popleft()
                self._queued.discard(sid)
            try:
                more = self._process(sid, None, limit=_TURN_BATCHES, slice_s=self.slice_s,
                                     stoppable=True)
            except Exception:
                log.exception("processing of subject %r failed; retrying later", sid)
                time.sleep(1.0)
                more = True
            if more:
                self._enqueue(sid)

    def _process(
        self,
        subject_id: str,
        report: IngestReport | None,
        *,
        limit: int | None,
        slice_s: float | None = None,
        stoppable: bool = False,
    ) -> bool:
        """Push a subject's pending batches through features and model; ``True`` if more wait.

        The one processing path of both modes. Windows are computed, scored and stored a few
        at a time (``_EMIT_CHUNK``); between them the turn ends once ``slice_s`` has passed
        (or, if ``stoppable``, the pipeline is closing) and stops at once when the subject is
        being erased. A turn that ends early leaves the rest queued: the windows its last
        batch still completes come first in the next turn. The cursor moves over a batch only
        once every window it completes is stored, so a crash re-processes the batches after
        it (windows and states are keyed by end time: the re-run replaces them with the same
        values).
        """
        t0 = time.perf_counter()
        turn = _Turn(slice_s, stoppable, started=t0)
        report = report if report is not None else IngestReport()
        with self._lock_of(subject_id), self._inner_threads():
            if subject_id in self._erasing:
                return False  # the erase waiting for this lock removes everything anyway
            try:
                sub: _Subject | None = self._subject(subject_id)
            except Exception:
                log.exception("could not restore subject %r; its raw data stays stored but is "
                              "not processed", subject_id)
                sub = None
            cursor = sub.cursor if sub is not None else self.store.processing_cursor(subject_id)
            fed = sub.fed if sub is not None else cursor
            page = self.store.pending_batches(
                subject_id, after_seq=fed.seq, limit=(limit or _MAX_WINDOWS) + 1
            )
            more = limit is not None and len(page) > limit
            page = page[:limit] if limit is not None else page
            # Batches taken from the page, and batches (with their samples) done: every window
            # they complete stored. Lag counts a batch until it is done.
            taken, done, samples = 0, 0, 0
            try:
                finished = True
                if sub is not None and fed.seq != cursor.seq:
                    # An earlier turn ended inside its last batch: its windows come first.
                    step = self._advance(sub, None, report, turn)
                    finished = step is True
                    if step is None:
                        sub = None
                    elif step:
                        cursor = fed
                        done, samples = 1, sub.fed_samples
                for item in page:
                    if not finished or turn.over(self._stopping):
                        finished = False
                        break
                    end_ns = item.batch.end_ns
                    fed = ProcessingCursor(subject_id=subject_id, seq=item.seq,
                                           end_ns=end_ns if fed.end_ns is None
                                           else max(fed.end_ns, end_ns))
                    taken += 1
                    n = item.batch.n_samples
                    step = None if sub is None else self._advance(sub, item.batch, report, turn)
                    if step is None:
                        # Not restored, or the stream failed on it: the batch is skipped (one
                        # per turn; its raw data stays stored).
                        cursor, sub = fed, None
                        done, samples = done + 1, samples + n
                        break
                    finished = step
                    if finished:
                        cursor = fed
                        done, samples = done + 1, samples + n
                    else:
                        assert sub is not None
                        sub.fed_samples = n
            except _ErasingError:
                self._subjects.pop(subject_id, None)
                return False
            except BaseException:
                # The stream may be ahead of what is stored: rebuild it from the store.
                self._subjects.pop(subject_id, None)
                raise
            if sub is not None:
                sub.fed = fed
            stored = sub.cursor if sub is not None else self.store.processing_cursor(subject_id)
            if cursor.seq != stored.seq:
                self.store.set_processing_cursor(cursor)
                if sub is not None:
                    sub.cursor = cursor
            more = more or taken < len(page) or not finished
        with self._work:
            p = self._pending.get(subject_id)
            if p is not None:
                p[0] = max(0, p[0] - done)
                p[1] = max(0, p[1] - samples)
                if not more and (p[0] == 0 or not page):  # the store's queue is the truth
                    del self._pending[subject_id]
            self._processed[0] += done
            self._processed[1] += samples
            self._busy_s += time.perf_counter() - t0
        return more

    def _advance(self, sub: _Subject, batch: SampleBatch | None, report: IngestReport,
                 turn: _Turn) -> bool | None:
        """Add ``batch`` (if any), then compute, score and store the windows due, a chunk at a
        time. ``True``: none left due; ``False``: the turn ended first (slice over, or
        closing); ``None``: the stream failed on the batch (logged; the subject is dropped
        and rebuilt from the store next time, the batch's raw data stays stored).

        Raises :class:`_ErasingError` when the subject is being erased; store errors propagate.
        """
        sid = sub.estimator.subject_id
        try:
            if batch is not None:
                sub.stream.add(batch)
                turn.steps += 1
        except Exception:
            self._stream_failed(sid, batch)
            return None
        while True:
            if sid in self._erasing:  # a dict lookup: no lock needed, seen next chunk
                raise _ErasingError(sid)
            if turn.over(self._stopping):
                return False
            try:
                windows = sub.stream.emit(limit=_EMIT_CHUNK)
            except Exception:
                self._stream_failed(sid, batch)
                return None
            if not windows:
                return True
            self._emit(sub, windows, report)
            turn.steps += 1

    def _stream_failed(self, subject_id: str, batch: SampleBatch | None) -> None:
        # Skip the batch (its raw data stays stored) and rebuild the subject from the store
        # next time rather than keep a stream in an uncertain state.
        log.exception("pipeline failed on batch %r of %r; skipped",
                      None if batch is None else batch.batch_id, subject_id)
        self._subjects.pop(subject_id, None)

    def _emit(self, sub: _Subject, windows: Sequence[FeatureWindow], report: IngestReport) -> None:
        if not windows:
            return
        states: list[StateEstimate] = sub.estimator.update_many(windows)
        # States first: a stored window marks "done" for a restart (see _restore), so a crash
        # in between leaves the window unstored and it is recomputed, never a window without
        # its state.
        with _counting_errors("add_states"):
            self.store.add_states(states)
        with _counting_errors("add_windows"):
            self.store.add_windows(windows)
        for state in states:
            STATES.labels(label=state.state).inc()
        report.windows += len(windows)
        report.states += len(states)
        for listener in list(self._listeners):
            try:
                listener(states)
            except Exception:
                log.exception("state listener %r failed", listener)

    def _status(self, sub: _Subject, calibration: Calibration | None) -> BaselineStatus:
        b = sub.estimator.baseline
        latest = self.store.latest_state(sub.estimator.subject_id)
        return BaselineStatus(
            subject_id=sub.estimator.subject_id,
            source="calibration" if b.source == "calibration" else "warm-up",
            ready=b.ready,
            medians=b.medians,
            spreads=b.spreads,
            calibration=calibration,
            warmup_covered_s=0.0 if latest is None else b.progress_s(latest.window_end_ns),
            warmup_s=b.config.warmup_s,
            warmup_windows=b.n_windows,
            min_windows=b.config.min_windows,
        )

    def _restore_calibration(self, estimator: SubjectEstimator) -> bool:
        """Rebuild the baseline from the stored calibration period; ``False`` if none works."""
        cal = self.store.calibration(estimator.subject_id)
        if cal is None:
            return False
        end_ns = min(cal.end_ns, cal.windows_through_ns + 1)  # windows stored later don't count
        windows = self.store.windows(
            estimator.subject_id, start_ns=cal.start_ns, end_ns=end_ns, limit=_MAX_WINDOWS
        )
        try:
            estimator.calibrate(windows)
        except ValueError as exc:  # e.g. a newer model with a stricter gate
            log.warning(
                "stored calibration of %r no longer gives a baseline (%s); using the warm-up",
                estimator.subject_id, exc,
            )
            return False
        return True

    def _subject(self, subject_id: str) -> _Subject:
        sub = self._subjects.get(subject_id)
        if sub is None:
            sub = self._subjects[subject_id] = self._restore(subject_id)
        return sub

    def _restore(self, subject_id: str) -> _Subject:
        """A subject's stream and estimator, rebuilt from what the store holds."""
        estimator = self.model.for_subject(subject_id, extra=self.extra)
        stream = SubjectStream(subject_id, config=self.config)
        cursor = self.store.processing_cursor(subject_id)
        sub = _Subject(stream, estimator, cursor, cursor)
        if cursor.end_ns is None:
            return sub  # nothing processed yet: a fresh stream
        # 1. Personal baseline: from the calibration period, else replay the stored windows in
        #    order until the warm-up has learned it.
        self._restore_calibration(estimator)
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
        replay_from = cursor.end_ns - span_ns
        stored_ends = [
            w.end_ns
            for w in self.store.windows(subject_id, start_ns=replay_from, limit=1_000_000)
        ]
        last_stored_end = max(stored_ends) if stored_ends else None
        # Re-push the stored batches as they were sent (same rates, same chunking), in order of
        # their first sample, so the stream cuts exactly the windows a live run would have.
        # Only processed batches: the pending ones are pushed after this, in arrival order.
        replay = self.store.batches(
            subject_id, start_ns=replay_from, limit=1_000_000, through_seq=cursor.seq
        )
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


def _count_batch(batch: SampleBatch, status: BatchStatus, seconds: float) -> None:
    channel = batch.channel.value
    INGEST_BATCHES.labels(channel=channel, outcome=status).inc()
    INGEST_SAMPLES.labels(channel=channel, outcome=status).inc(len(batch.values))
    if status == "stored":
        PIPELINE_BATCH_SECONDS.observe(seconds)


@contextmanager
def _counting_errors(operation: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        STORE_WRITE_ERRORS.labels(operation=operation).inc()
        raise
