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
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
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
from wearemo.samples import Channel, SampleBatch
from wearemo.store import BatchConflictError, StateStore
from wearemo.store.base import Calibration

__all__ = [
    "BaselineStatus",
    "CalibrationError",
    "Pipeline",
    "StateListener",
    "UnknownSubjectError",
]

#: Called with each subject's new states right after they are stored (live streams, alerts).
StateListener = Callable[[Sequence[StateEstimate]], None]

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_REPLAY_PAGE = 1000
_MAX_WINDOWS = 1_000_000


class UnknownSubjectError(LookupError):
    """The store holds no data of the subject."""


class CalibrationError(ValueError):
    """A calibration period that cannot set the baseline; the message says why."""


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
    ) -> None:
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
            started = time.perf_counter()
            with self._lock_of(batch.subject_id), self._inner_threads():
                result = self._ingest_one(batch, report)
            _count_batch(batch, result.status, time.perf_counter() - started)
            report.results.append(result)
            if result.status == "rejected":
                break
        return report

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
        report = IngestReport()
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
        except Exception:
            STORE_WRITE_ERRORS.labels(operation="add_batch").inc()
            raise
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
        sub = _Subject(stream, estimator)
        lasts = {
            ch: t for ch in Channel if (t := self.store.last_sample_ns(subject_id, ch)) is not None
        }
        if not lasts:
            return sub
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
