"""Subjects, their latest state and their state history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError

from wearemo.api.deps import KnownSubject, StoreDep
from wearemo.api.schemas import ErrorResponse, StateEstimate, SubjectSummary

__all__ = ["parse_time_ns", "router"]

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_SECONDS = Decimal(2**63 - 1) / 1_000_000_000

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown subject."}
}

TimeParam = Annotated[
    str | None,
    Query(
        description="Unix seconds (e.g. 1700000000.5) or ISO-8601 (e.g. 2023-11-14T22:13:20Z; "
        "no offset means UTC).",
        examples=["1700000000", "2023-11-14T22:13:20Z"],
    ),
]


def parse_time_ns(value: str, *, name: str) -> int:
    """Parse a query time (unix seconds or ISO-8601) to unix ns; 422 naming ``name`` if bad.

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
            raise _query_error(
                name, f"{name}: {value!r} is neither unix seconds nor an ISO-8601 time"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        seconds = Decimal((dt - _EPOCH) // timedelta(microseconds=1)) / 1_000_000
    if not seconds.is_finite() or not 0 <= seconds < _MAX_SECONDS:
        raise _query_error(name, f"{name}: {value!r} is outside the representable time range")
    return int((seconds * 1_000_000_000).to_integral_value())


def _query_error(name: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": msg}])


@router.get("")
def list_subjects(store: StoreDep) -> list[str]:
    """Ids of all subjects with stored data, sorted."""
    return store.subject_ids()


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
        raise _query_error("start", f"start ({start}) is after end ({end})")
    states = store.states(subject_id, start_ns=start_ns, end_ns=end_ns, limit=limit)
    if len(states) == limit:
        nxt = states[-1].window_end_ns + 1  # exact decimal seconds: a float would lose the 1 ns
        response.headers["X-Next-Start"] = f"{nxt // 1_000_000_000}.{nxt % 1_000_000_000:09d}"
    return states
