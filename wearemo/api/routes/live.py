"""Live states: WebSocket and Server-Sent Events, for one subject or several.

``/v1/subjects/{subject_id}/live`` and ``/v1/live?subject=a&subject=b`` (WebSocket) send each
new state as a JSON text message (the :class:`StateEstimate` body). ``/v1/subjects/{id}/events``
and ``/v1/events?subject=...`` (SSE) send ``event: state`` with the same JSON as ``data`` and an
``id`` that lets a reconnecting client resume: a browser ``EventSource`` sends it back as
``Last-Event-ID`` and gets the states it missed from the store first, then the live ones, each
exactly once. The single-subject id is the window end (unix ns); the multi-subject id is
``<subject>=<window end ns>`` for every subject seen, comma-separated.

A client that leaves more than ``live_queue_size`` states unread is disconnected (WebSocket
close code 1013 "try again later" with the reason; SSE ``event: error`` then the end of the
stream), and a send that takes longer than ``live_send_timeout_s`` ends the connection too;
ingest never waits for a live client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from wearemo.api.deps import KnownSubject, LiveDep, SettingsDep, StoreDep, known_subject
from wearemo.api.live import LiveHub, SlowClientError
from wearemo.api.schemas import ErrorResponse, StateEstimate, ValidationResponse
from wearemo.samples import ID_PATTERN
from wearemo.store import StateStore
from wearemo.store.export import iter_states

__all__ = ["WS_TRY_AGAIN_LATER", "parse_cursor", "router"]

router = APIRouter(tags=["live"])

#: WebSocket close code for a client disconnected for reading too slowly (RFC 6455 registry).
WS_TRY_AGAIN_LATER = 1013
_MAX_SUBJECTS = 100

_SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: `event: state`, `id` (resume cursor), `data` "
        "(a StateEstimate as JSON); `event: error` with the reason before a disconnect.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    404: {"model": ErrorResponse, "description": "Unknown subject."},
    422: {"model": ValidationResponse, "description": "Bad subject list or Last-Event-ID."},
}


def _invalid(loc: tuple[str, ...], msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


def parse_cursor(value: str | None, subject_ids: list[str]) -> dict[str, int]:
    """``Last-Event-ID`` -> last window end sent per subject; 422 naming the header if bad.

    A plain integer applies to every subject; ``a=123,b=456`` gives each its own.

    Example
    -------
    >>> parse_cursor("a=5,b=7", ["a", "b"]), parse_cursor("9", ["a"])
    ({'a': 5, 'b': 7}, {'a': 9})
    """
    if value is None or not value.strip():
        return {}
    loc = ("header", "last-event-id")
    try:
        if value.strip().isdigit():
            return dict.fromkeys(subject_ids, int(value))
        out = {}
        for part in value.split(","):
            sid, _, ns = part.strip().partition("=")
            if sid not in subject_ids:
                raise _invalid(loc, f"last-event-id: subject {sid!r} is not in this stream")
            out[sid] = int(ns)
            if out[sid] < 0:
                raise ValueError(ns)
        return out
    except ValueError:
        raise _invalid(
            loc, f"last-event-id: {value[:200]!r} is neither a window end (unix ns) nor "
            "'<subject>=<unix ns>,...'"
        ) from None


def known_subjects(
    store: StoreDep,
    subject: Annotated[
        list[str],
        Query(description="Subject ids to follow (repeat the parameter).", examples=[["s01"]]),
    ],
) -> list[str]:
    """The ``subject`` query list: 1..100 valid ids the store knows (else 422 / 404)."""
    if not subject or len(subject) > _MAX_SUBJECTS:
        raise _invalid(("query", "subject"), f"subject: give 1 to {_MAX_SUBJECTS} subject ids, "
                       f"got {len(subject)}")
    for i, sid in enumerate(subject):
        if not re.fullmatch(ID_PATTERN, sid):
            raise _invalid(("query", "subject", str(i)),
                           f"subject[{i}]: {sid[:200]!r} is not a subject id")
        known_subject(sid, store)  # 404 naming the first unknown subject
    return list(dict.fromkeys(subject))


async def _replay(
    store: StateStore, subject_ids: list[str], cursor: dict[str, int]
) -> list[StateEstimate]:
    """States stored after the cursor, per subject, merged by window end."""
    def read(sid: str) -> list[StateEstimate]:
        return [st for page in iter_states(store, sid, start_ns=cursor[sid] + 1) for st in page]

    missed: list[StateEstimate] = []
    for sid in subject_ids:
        if sid in cursor:
            missed += await run_in_threadpool(read, sid)
    missed.sort(key=lambda st: (st.window_end_ns, st.subject_id))
    return missed


async def _sse(
    hub: LiveHub, store: StateStore, subject_ids: list[str], cursor: dict[str, int],
    *, single: bool,
) -> AsyncIterator[ServerSentEvent]:
    # Subscribe before reading the store, so a state stored meanwhile is queued, not lost; the
    # cursor then drops what the replay already sent.
    with hub.subscribe(subject_ids) as sub:
        pending = await _replay(store, subject_ids, cursor)
        while True:
            for state in pending:
                sid = state.subject_id
                if state.window_end_ns <= cursor.get(sid, -1):
                    continue
                cursor[sid] = state.window_end_ns
                event_id = (str(state.window_end_ns) if single
                            else ",".join(f"{s}={n}" for s, n in cursor.items()))
                yield ServerSentEvent(data=state.model_dump_json(), event="state", id=event_id)
            try:
                pending = [await sub.get()]
            except SlowClientError as exc:
                yield ServerSentEvent(data=str(exc), event="error")
                return


def _sse_response(
    hub: LiveHub, store: StateStore, subject_ids: list[str], last_event_id: str | None,
    send_timeout_s: float, *, single: bool,
) -> EventSourceResponse:
    cursor = parse_cursor(last_event_id, subject_ids)
    return EventSourceResponse(
        _sse(hub, store, subject_ids, cursor, single=single),
        ping=15,
        send_timeout=send_timeout_s,
        headers={"Cache-Control": "no-store"},
    )


LastEventId = Annotated[
    str | None,
    Header(description="Resume after this event id (sent by EventSource on reconnect)."),
]


@router.get("/v1/subjects/{subject_id}/events", response_class=EventSourceResponse,
            responses=_SSE_RESPONSES)
async def subject_events(
    subject_id: KnownSubject,
    hub: LiveDep,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """Server-Sent Events: the subject's new states as they are stored.

    With ``Last-Event-ID`` (a window end, unix ns) the states stored after it come first.
    """
    return _sse_response(hub, store, [subject_id], last_event_id,
                         settings.live_send_timeout_s, single=True)


@router.get("/v1/events", response_class=EventSourceResponse, responses=_SSE_RESPONSES)
async def cohort_events(
    hub: LiveDep,
    store: StoreDep,
    settings: SettingsDep,
    subject: Annotated[list[str], Query(description="Subject ids to follow (repeat it).")],
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """Server-Sent Events: new states of several subjects (``?subject=a&subject=b``)."""
    subject_ids = await run_in_threadpool(known_subjects, store, subject)
    return _sse_response(hub, store, subject_ids, last_event_id,
                         settings.live_send_timeout_s, single=False)


async def _ws_stream(websocket: WebSocket, hub: LiveHub, subject_ids: list[str],
                     send_timeout_s: float) -> None:
    await websocket.accept()
    with hub.subscribe(subject_ids) as sub:

        async def send_states() -> str:
            while True:
                try:
                    state = await sub.get()
                except SlowClientError as exc:
                    return str(exc)
                try:
                    await asyncio.wait_for(websocket.send_text(state.model_dump_json()),
                                           send_timeout_s)
                except TimeoutError:
                    return f"client too slow: a send took over {send_timeout_s:g} s"

        async def until_disconnect() -> str:
            with contextlib.suppress(WebSocketDisconnect):
                while True:  # clients send nothing; anything they do send is ignored
                    await websocket.receive_text()
            return ""

        tasks = [asyncio.ensure_future(send_states()), asyncio.ensure_future(until_disconnect())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        reason = next(iter(done)).result()
        if reason:  # the sender gave up on a slow client; a disconnected one needs no close
            with contextlib.suppress(Exception):
                await asyncio.wait_for(websocket.close(WS_TRY_AGAIN_LATER, reason[:120]),
                                       send_timeout_s)


@router.websocket("/v1/subjects/{subject_id}/live")
async def subject_live(
    websocket: WebSocket, subject_id: KnownSubject, hub: LiveDep, settings: SettingsDep
) -> None:
    """WebSocket: each new state of the subject as a JSON text message."""
    await _ws_stream(websocket, hub, [subject_id], settings.live_send_timeout_s)


@router.websocket("/v1/live")
async def cohort_live(
    websocket: WebSocket,
    hub: LiveDep,
    store: StoreDep,
    settings: SettingsDep,
    subject: Annotated[list[str], Query()],
) -> None:
    """WebSocket: new states of several subjects (``?subject=a&subject=b``)."""
    subject_ids = await run_in_threadpool(known_subjects, store, subject)
    await _ws_stream(websocket, hub, subject_ids, settings.live_send_timeout_s)
