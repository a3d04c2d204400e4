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

The key is checked at the handshake and stays checked: each state is sent only if the key is
still valid and its grant still covers the state's subject (others are dropped), and when
keys or grants change every open stream re-checks at once. A revoked, expired or deleted key
ends the stream (WebSocket close code 4401; SSE ``event: error``), and so does a grant that no
longer covers any of the stream's subjects (4403). The end is audited with that code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request

from wearemo.api.audit import AuditEntry, AuditLog
from wearemo.api.auth import (
    WS_CLOSE_FORBIDDEN,
    WS_CLOSE_UNAUTHORIZED,
    Authenticator,
    Principal,
    PrincipalWatch,
)
from wearemo.api.deps import (
    KnownSubject,
    ReadPrincipal,
    StoreDep,
    get_resources,
    known_subject,
)
from wearemo.api.live import LiveEndedError, LiveHub, LiveSubscription
from wearemo.api.schemas import ErrorResponse, StateEstimate, ValidationResponse
from wearemo.samples import ID_PATTERN
from wearemo.store import StateStore
from wearemo.store.export import iter_states

__all__ = ["WS_TRY_AGAIN_LATER", "parse_cursor", "router"]

log = logging.getLogger(__name__)

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
    conn: HTTPConnection,
    principal: ReadPrincipal,
    subject: Annotated[
        list[str],
        Query(description="Subject ids to follow (repeat the parameter).", examples=[["s01"]]),
    ],
) -> list[str]:
    """The ``subject`` query list: 1..100 valid ids the key reaches and the store knows (else
    422 / 404, alike for unknown and not granted)."""
    if not subject or len(subject) > _MAX_SUBJECTS:
        raise _invalid(("query", "subject"), f"subject: give 1 to {_MAX_SUBJECTS} subject ids, "
                       f"got {len(subject)}")
    for i, sid in enumerate(subject):
        if not re.fullmatch(ID_PATTERN, sid):
            raise _invalid(("query", "subject", str(i)),
                           f"subject[{i}]: {sid[:200]!r} is not a subject id")
        known_subject(sid, store, conn, principal)  # 404 naming the first unreachable one
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


#: Longest WebSocket close reason, bytes (a close frame's payload is at most 125).
_MAX_REASON_BYTES = 123


def _reason(text: str) -> str:
    return text.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")


def _access_lost(principal: Principal | None, watch: PrincipalWatch,
                 subject_ids: list[str]) -> tuple[int, str] | None:
    """(close code, reason) when the stream may no longer go on, else None."""
    if principal is None:
        return WS_CLOSE_UNAUTHORIZED, watch.ended_reason
    if any(principal.reaches(s) for s in subject_ids):
        return None
    which = ", ".join(subject_ids)
    return WS_CLOSE_FORBIDDEN, (f"access to subject {which!r} was withdrawn from this key"
                                if len(subject_ids) == 1 else
                                f"access to subjects {which} was withdrawn from this key")


async def _guard(watch: PrincipalWatch, sub: LiveSubscription, subject_ids: list[str]) -> None:
    """End ``sub`` as soon as its key or grant no longer allows the stream: checked now, on
    every change notification and at the key's expiry (no polling)."""
    while True:
        lost = _access_lost(await watch.current(), watch, subject_ids)
        if lost is not None:
            sub.end(lost[1], lost[0])
            return
        await watch.changed()


async def _audit_end(audit: AuditLog, conn: HTTPConnection, principal: Principal,
                     subject_ids: list[str], code: int, reason: str) -> None:
    """Record that access control ended an open stream (who, whose data, why)."""
    route = conn.scope.get("route")
    method = "WS" if conn.scope["type"] == "websocket" else conn.scope.get("method", "GET")
    action = f"{method} {getattr(route, 'path', conn.url.path)}"
    client = conn.client.host if conn.client else None
    entries = [AuditEntry.new(principal.key_id, principal.role, action, sid, code,
                              f"stream ended: {reason}", client=client) for sid in subject_ids]
    try:
        await run_in_threadpool(audit.extend, entries)
    except Exception:  # the stream is over either way; the failure is logged
        log.exception("audit: could not record the end of %s", action)


async def _sse(
    hub: LiveHub, store: StateStore, subject_ids: list[str], cursor: dict[str, int],
    auth: Authenticator, principal: Principal, audit: AuditLog, conn: HTTPConnection,
    *, single: bool,
) -> AsyncIterator[ServerSentEvent]:
    # Subscribe before reading the store, so a state stored meanwhile is queued, not lost; the
    # cursor then drops what the replay already sent.
    with hub.subscribe(subject_ids) as sub, auth.watch(principal) as watch:
        guard = asyncio.ensure_future(_guard(watch, sub, subject_ids))
        try:
            pending = await _replay(store, subject_ids, cursor)
            while True:
                for state in pending:
                    sid = state.subject_id
                    current = await watch.current()
                    if current is None:
                        sub.end(watch.ended_reason, WS_CLOSE_UNAUTHORIZED)
                        break
                    if state.window_end_ns <= cursor.get(sid, -1) or not current.reaches(sid):
                        continue  # sent already, or no longer granted: dropped
                    cursor[sid] = state.window_end_ns
                    event_id = (str(state.window_end_ns) if single
                                else ",".join(f"{s}={n}" for s, n in cursor.items()))
                    yield ServerSentEvent(data=state.model_dump_json(), event="state",
                                          id=event_id)
                try:
                    pending = [await sub.get()]
                except LiveEndedError as exc:
                    if exc.code in (WS_CLOSE_UNAUTHORIZED, WS_CLOSE_FORBIDDEN):
                        await _audit_end(audit, conn, principal, subject_ids, exc.code, str(exc))
                    yield ServerSentEvent(data=str(exc), event="error")
                    return
        finally:
            guard.cancel()


def _sse_response(
    conn: HTTPConnection, principal: Principal, subject_ids: list[str],
    last_event_id: str | None, *, single: bool,
) -> EventSourceResponse:
    cursor = parse_cursor(last_event_id, subject_ids)
    res = get_resources(conn)
    return EventSourceResponse(
        _sse(res.live, res.store, subject_ids, cursor, res.auth, principal, res.audit, conn,
             single=single),
        ping=15,
        send_timeout=res.settings.live_send_timeout_s,
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
    principal: ReadPrincipal,
    request: Request,
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """Server-Sent Events: the subject's new states as they are stored.

    With ``Last-Event-ID`` (a window end, unix ns) the states stored after it come first.
    The stream ends (``event: error``) when the key is revoked or expires, or its grant no
    longer covers the subject.
    """
    return _sse_response(request, principal, [subject_id], last_event_id, single=True)


@router.get("/v1/events", response_class=EventSourceResponse, responses=_SSE_RESPONSES)
async def cohort_events(
    principal: ReadPrincipal,
    request: Request,
    subject_ids: Annotated[list[str], Depends(known_subjects)],
    last_event_id: LastEventId = None,
) -> EventSourceResponse:
    """Server-Sent Events: new states of several subjects (``?subject=a&subject=b``).

    States of a subject the key's grant no longer covers are dropped; the stream ends when
    none is left, or when the key is revoked or expires.
    """
    return _sse_response(request, principal, subject_ids, last_event_id, single=False)


async def _ws_stream(websocket: WebSocket, principal: Principal,
                     subject_ids: list[str]) -> None:
    res = get_resources(websocket)
    hub, send_timeout_s = res.live, res.settings.live_send_timeout_s
    await websocket.accept()
    with hub.subscribe(subject_ids) as sub, res.auth.watch(principal) as watch:

        async def send_states() -> tuple[int, str]:
            while True:
                try:
                    state = await sub.get()
                except LiveEndedError as exc:
                    return exc.code, str(exc)
                current = await watch.current()
                if current is None:
                    return WS_CLOSE_UNAUTHORIZED, watch.ended_reason
                if not current.reaches(state.subject_id):
                    continue  # withdrawn from this key: dropped (the guard ends the stream
                    # once none of its subjects is left)
                try:
                    await asyncio.wait_for(websocket.send_text(state.model_dump_json()),
                                           send_timeout_s)
                except TimeoutError:
                    return WS_TRY_AGAIN_LATER, f"client too slow: a send took over " \
                                               f"{send_timeout_s:g} s"

        async def until_disconnect() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:  # clients send nothing; anything they do send is ignored
                    await websocket.receive_text()

        guard = asyncio.ensure_future(_guard(watch, sub, subject_ids))
        tasks = [asyncio.ensure_future(send_states()), asyncio.ensure_future(until_disconnect())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, guard):
                task.cancel()
        ended = next(iter(done)).result()
        if ended is None:  # the client left: nothing to close
            return
        code, reason = ended
        if code in (WS_CLOSE_UNAUTHORIZED, WS_CLOSE_FORBIDDEN):
            await _audit_end(res.audit, websocket, principal, subject_ids, code, reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code, _reason(reason)), send_timeout_s)


@router.websocket("/v1/subjects/{subject_id}/live")
async def subject_live(
    websocket: WebSocket, subject_id: KnownSubject, principal: ReadPrincipal
) -> None:
    """WebSocket: each new state of the subject as a JSON text message.

    Closed with 4401 when the key is revoked, expires or is deleted, 4403 when its grant no
    longer covers the subject, 1013 when the client reads too slowly.
    """
    await _ws_stream(websocket, principal, [subject_id])


@router.websocket("/v1/live")
async def cohort_live(
    websocket: WebSocket,
    principal: ReadPrincipal,
    subject_ids: Annotated[list[str], Depends(known_subjects)],
) -> None:
    """WebSocket: new states of several subjects (``?subject=a&subject=b``).

    States of a subject the key's grant no longer covers are dropped; the stream is closed
    with 4403 when none is left, 4401 when the key is revoked, expires or is deleted.
    """
    await _ws_stream(websocket, principal, subject_ids)
