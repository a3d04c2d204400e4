"""Subjects, their latest state, their state history and their personal baseline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError

from wearemo.api.deps import CalibratableSubject, KnownSubject, PipelineDep, ReadPrincipal, StoreDep
from wearemo.api.schemas import (
    AUTH_ERRORS,
    BaselineRequest,
    BaselineResponse,
    ErrorResponse,
    StateEstimate,
    SubjectSummary,
    ValidationResponse,
    WarmupProgress,
)
from wearemo.pipeline import BaselineStatus, CalibrationError, UnknownSubjectError

__all__ = ["parse_time_ns", "router"]

router = APIRouter(prefix="/v1/subjects", tags=["subjects"], responses=AUTH_ERRORS)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SECONDS = Decimal(2**63 - 1) / 1_000_000_000

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse,
          "description": "Unknown subject, or one outside the key's grant (alike)."}
}

TimeParam = Annotated[
    str | None,
    Query(
        description="Unix seconds (e.g. 1700000000.5) or ISO-8601 (e.g. 2023-11-14T22:13:20Z; "
        "no offset means UTC).",
        examples=["1700000000", "2023-11-14T22:13:20Z"],
    ),
]


def parse_time_ns(value: str, *, name: str, source: Literal["query", "body"] = "query") -> int:
    """Parse a query time (unix seconds or ISO-8601) to unix ns; 422 naming ``name`` if bad.

    ``source`` says where the value came from, for the location of the 422.

    Example
    -------
    >>> parse_time_ns("1.5", name="start"), parse_time_ns("1970-01-01T00:00:02Z", name="end")
    (1500000000, 2000000000)
    """
    try:
        seconds = Decimal(value.strip())  # exact: a float would lose nanoseconds
    except InvalidOperation:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _request_error(
                name, f"{name}: {value!r} is neither unix seconds nor an ISO-8601 time", source
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        seconds = Decimal((dt - _EPOCH) // timedelta(microseconds=1)) / 1_000_000
    if not seconds.is_finite() or not 0 <= seconds < _MAX_SECONDS:
        raise _request_error(
            name, f"{name}: {value!r} is outside the representable time range", source
        )
    return int((seconds * 1_000_000_000).to_integral_value())


def _request_error(
    name: str, msg: str, source: Literal["query", "body"] = "query"
) -> RequestValidationError:
    loc = (source, name) if name else (source,)
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


@router.get("")
def list_subjects(store: StoreDep, principal: ReadPrincipal) -> list[str]:
    """Ids of the subjects with stored data that the key reaches, sorted."""
    return [s for s in store.subject_ids() if principal.reaches(s)]


@router.get("/{subject_id}", responses=_NOT_FOUND)
def subject_summary(subject_id: KnownSubject, store: StoreDep) -> SubjectSummary:
    """Samples per channel, batches, windows, states by label and the latest state."""
    summary = store.subject_summary(subject_id)
    if summary is None:  # erased between the check and the read
        raise HTTPException(status_code=404, detail=f"unknown subject {subject_id!r}")
    return summary


@router.get(
    "/{subject_id}/state",
    responses={404: {"model": ErrorResponse, "description": "Unknown subject or no state yet."}},
)
def latest_state(subject_id: KnownSubject, store: StoreDep) -> StateEstimate:
    """The subject's most recent state estimate."""
    state = store.latest_state(subject_id)
    if state is None:
        raise HTTPException(
            status_code=404,
            detail=f"subject {subject_id!r} has no state yet (a state needs one full window of "
            "data)",
        )
    return state


@router.get("/{subject_id}/states", responses=_NOT_FOUND)
def state_history(
    subject_id: KnownSubject,
    store: StoreDep,
    response: Response,
    start: TimeParam = None,
    end: TimeParam = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="Most states returned.")] = 1000,
) -> list[StateEstimate]:
    """States whose window ends in ``[start, end)``, oldest first.

    When ``limit`` states are returned, the ``X-Next-Start`` header gives the ``start`` (unix
    seconds) of the next page.
    """
    start_ns = None if start is None else parse_time_ns(start, name="start")
    end_ns = None if end is None else parse_time_ns(end, name="end")
    if start_ns is not None and end_ns is not None and start_ns > end_ns:
        raise _request_error("start", f"start ({start}) is after end ({end})")
    states = store.states(subject_id, start_ns=start_ns, end_ns=end_ns, limit=limit)
    if len(states) == limit:
        nxt = states[-1].window_end_ns + 1  # exact decimal seconds: a float would lose the 1 ns
        response.headers["X-Next-Start"] = f"{nxt // 1_000_000_000}.{nxt % 1_000_000_000:09d}"
    return states


_BASELINE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    422: {
        "model": ValidationResponse,
        "description": "Bad time, end not after start, or too few usable windows in the period "
        "(the message gives how many were usable and how many are needed); nothing changed.",
    },
}


def _baseline_response(status: BaselineStatus) -> BaselineResponse:
    cal = status.calibration
    return BaselineResponse(
        subject_id=status.subject_id,
        source=status.source,
        ready=status.ready,
        start_ns=None if cal is None else cal.start_ns,
        end_ns=None if cal is None else cal.end_ns,
        windows_used=None if cal is None else cal.windows_used,
        created_ns=None if cal is None else cal.created_ns,
        medians=status.medians,
        spreads=status.spreads,
        warmup=None
        if status.ready
        else WarmupProgress(
            covered_s=status.warmup_covered_s,
            needed_s=status.warmup_s,
            windows=status.warmup_windows,
            min_windows=status.min_windows,
        ),
    )


@router.get("/{subject_id}/baseline", responses=_NOT_FOUND)
def get_baseline(subject_id: KnownSubject, pipeline: PipelineDep) -> BaselineResponse:
    """The personal baseline the subject's states are expressed against now.

    ``source`` is ``warm-up`` (learned from the first valid minutes; ``warmup`` gives the
    progress until it is ready) or ``calibration`` (set by ``PUT``).
    """
    try:
        return _baseline_response(pipeline.baseline(subject_id))
    except UnknownSubjectError as exc:  # erased between the check and the read
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.put("/{subject_id}/baseline", responses=_BASELINE_ERRORS)
def set_baseline(
    subject_id: CalibratableSubject, body: BaselineRequest, pipeline: PipelineDep
) -> BaselineResponse:
    """Set the personal baseline from a labelled calibration period (e.g. an instructed rest).

    The baseline becomes the median of the subject's stored windows whose end lies in
    ``[start, end)`` and that pass the model's gate (withheld windows do not count). States
    computed from now on use it; stored states are unchanged. It replaces any earlier
    calibration and survives restarts.
    """
    start_ns = parse_time_ns(body.start, name="start", source="body")
    end_ns = parse_time_ns(body.end, name="end", source="body")
    if end_ns <= start_ns:
        raise _request_error("end", f"end ({body.end}) must be after start ({body.start})", "body")
    try:
        status = pipeline.calibrate(subject_id, start_ns, end_ns)
    except UnknownSubjectError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except CalibrationError as exc:
        raise _request_error("", str(exc), "body") from None
    return _baseline_response(status)
