"""Ingest: ``POST /v1/ingest`` (JSON or msgpack), ``/v1/ingest/ws`` and the processing lag.

Every form takes the same :class:`~wearemo.api.schemas.IngestRequest` (see
:mod:`wearemo.api.wire`), is checked against the same per-client rate limits and answers with
the same per-batch results, so a client can switch forms without changing its logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import Message

from wearemo.api.audit import AuditContext, AuditEntry, AuditLog
from wearemo.api.auth import WS_CLOSE_UNAUTHORIZED, Principal, PrincipalWatch
from wearemo.api.deps import (
    IngestPrincipal,
    LimiterDep,
    PipelineDep,
    SettingsDep,
    audit_context,
    get_resources,
)
from wearemo.api.errors import validation_issues
from wearemo.api.limits import RateLimiter, retry_after
from wearemo.api.schemas import (
    AUTH_ERRORS,
    INGEST_EXAMPLE,
    BatchOutcome,
    ConflictDetail,
    ConflictResponse,
    ErrorResponse,
    IngestRequest,
    IngestResponse,
    ProcessingLagResponse,
    ValidationResponse,
)
from wearemo.api.wire import JSON, MSGPACK, UnsupportedMediaTypeError, parse_ingest_body
from wearemo.ingest import IngestReport, TimeBounds
from wearemo.pipeline import Pipeline, PipelineBusyError
from wearemo.settings import Settings

__all__ = ["WS_CLOSE_RATE_ABUSE", "WS_CLOSE_TOO_BIG", "document_bodies", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["ingest"], responses=AUTH_ERRORS)

#: WebSocket close codes (RFC 6455): a message over ``max_request_bytes``, and a client that
#: keeps sending while refused for its rate (``_WS_MAX_REFUSALS`` answers in a row).
WS_CLOSE_TOO_BIG = 1009
WS_CLOSE_RATE_ABUSE = 1008
_WS_MAX_REFUSALS = 20


class _RefusedError(Exception):
    """An ingest request answered with an error status (HTTP or per WebSocket message)."""

    def __init__(self, status: int, detail: Any, retry_after_s: str | None = None) -> None:
        self.status, self.detail, self.retry_after_s = status, detail, retry_after_s


def _authorize(body: IngestRequest, principal: Principal, ctx: AuditContext) -> None:
    """Refuse (403) a request with any batch outside the key's grant, before anything is
    stored; record whose data the request concerns for the audit log."""
    for b in body.batches:
        ctx.touch(b.subject_id)
    ctx.detail = f"{len(body.batches)} batches"
    for i, b in enumerate(body.batches):
        if not principal.reaches(b.subject_id):
            ctx.refusal = "subject not in the key's grant"
            raise _RefusedError(
                403, f"batches.{i}.subject_id: key {principal.key_id} ({principal.role}) may "
                f"not write subject {b.subject_id!r}; nothing of this request was stored")


def _time_bounds(settings: Settings) -> TimeBounds:
    return TimeBounds(max_ahead_s=settings.ingest_max_ahead_s,
                      max_age_days=settings.ingest_max_age_days)


def _check_times(body: IngestRequest, bounds: TimeBounds) -> None:
    """Refuse the whole request (422, nothing stored) when a batch has a sample outside the
    timestamp bounds around the server clock; every such batch is named, so a client (the
    bridge's uplink) can set those aside and re-send the others."""
    issues = []
    for v in bounds.check(body.batches, now_ns=time.time_ns()):
        loc: tuple[str | int, ...] = ("body", "batches", v.index, v.field)
        if v.field == "timestamps_ns":
            loc = (*loc, v.sample)
        issues.append({"type": "timestamp_out_of_bounds", "loc": loc, "msg": v.message})
    if issues:
        raise RequestValidationError(issues)


def _rate_key(principal: Principal) -> str:
    # Per key, not per address: several devices share a NAT address, one key may roam.
    return f"key:{principal.key_id}"


def _accept(
    body: IngestRequest, client: str, pipeline: Pipeline, limiter: RateLimiter
) -> IngestResponse:
    """Rate-limit, then store (and in inline mode process) one validated request."""
    samples = sum(b.n_samples for b in body.batches)
    wait = limiter.acquire(client, samples=samples)
    if wait is not None:
        raise _RefusedError(429, f"rate limit: too many requests or samples from this client "
                       f"({samples} samples in this one); retry after {wait:.2f} s",
                       retry_after(wait))
    try:
        report = pipeline.ingest(body.batches)
    except PipelineBusyError as exc:
        raise _RefusedError(503, str(exc), str(exc.retry_after_s)) from None
    return _response(report)


def _response(report: IngestReport) -> IngestResponse:
    rejected, index = report.rejected, report.rejected_index
    if rejected is not None and index is not None:
        earlier = report.results[:index]
        raise _RefusedError(409, ConflictDetail(
            field=f"batches.{index}.{rejected.field}",
            message=rejected.reason or "rejected",
            batch_id=rejected.batch_id,
            stored_before=[r.batch_id for r in earlier if r.status == "stored"],
            duplicates_before=[r.batch_id for r in earlier if r.status == "duplicate"],
        ).model_dump())
    return IngestResponse(
        stored=report.stored,
        duplicates=report.duplicates,
        windows=report.windows,
        states=report.states,
        results=[
            BatchOutcome(
                batch_id=r.batch_id, status="stored" if r.status == "stored" else "duplicate"
            )
            for r in report.results
        ],
    )


@router.post(
    "/v1/ingest",
    responses={
        409: {
            "model": ConflictResponse,
            "description": "A batch overlaps earlier data of its channel or re-uses a batch id "
            "with different content; batches before it stay stored.",
        },
        413: {"model": ErrorResponse, "description": "Request body too large."},
        415: {"model": ErrorResponse, "description": "Content-Type neither JSON nor msgpack."},
        422: {"model": ValidationResponse, "description": "Invalid batch (the field is named), "
              "or samples too far ahead of the server clock or older than the ingest horizon "
              "(type timestamp_out_of_bounds); nothing of the request was stored."},
        429: {"model": ErrorResponse, "description": "Over this client's rate limit; retry "
              "after Retry-After seconds (nothing of the request was stored)."},
        503: {"model": ErrorResponse, "description": "Background processing lags too far "
              "behind; retry after Retry-After seconds (nothing of the request was stored)."},
    },
)
async def ingest(
    request: Request, pipeline: PipelineDep, settings: SettingsDep, limiter: LimiterDep,
    principal: IngestPrincipal,
) -> IngestResponse:
    """Store sample batches and run them through the per-subject streaming pipeline.

    Every batch's subject must be within the key's grant: a request with one foreign subject
    is refused whole with HTTP 403 naming the first such batch, and nothing of it is stored.
    The body is JSON (``application/json``) or msgpack (``application/msgpack``, where
    ``values`` and ``timestamps_ns`` may be raw little-endian arrays; see docs/ingest.md).
    Batches are processed in order. A batch whose ``batch_id`` is already stored for its subject
    is reported as ``duplicate`` and not stored again, so retrying a whole request is safe. A
    batch that starts at or before the last stored sample of its channel stops the request with
    HTTP 409; the batches before it stay stored. A batch with a sample more than
    ``WEAREMO_INGEST_MAX_AHEAD_S`` ahead of the server clock, or older than
    ``WEAREMO_INGEST_MAX_AGE_DAYS``, is invalid: HTTP 422 naming every such batch, and nothing
    of the request is stored (like any invalid batch). With ``WEAREMO_PROCESSING=background`` the
    answer comes once the batches are durably stored (``windows`` and ``states`` are 0; the
    states follow shortly, see ``GET /v1/ingest/lag``).
    """
    raw = await request.body()
    try:
        body = parse_ingest_body(raw, request.headers.get("content-type"),
                                 max_batches=settings.max_batches_per_request)
    except UnsupportedMediaTypeError as exc:
        raise HTTPException(status_code=415, detail=str(exc)) from None
    _check_times(body, _time_bounds(settings))
    try:
        _authorize(body, principal, audit_context(request))
        # Store and features are blocking work: off the event loop.
        return await run_in_threadpool(_accept, body, _rate_key(principal), pipeline, limiter)
    except _RefusedError as exc:
        headers = {"Retry-After": exc.retry_after_s} if exc.retry_after_s else None
        raise HTTPException(status_code=exc.status, detail=exc.detail, headers=headers) from None


@router.get("/v1/ingest/lag")
def ingest_lag(pipeline: PipelineDep, _: IngestPrincipal) -> ProcessingLagResponse:
    """How far processing (windows, states) lags behind the accepted data (any key that may
    upload: it tells a client when to slow down)."""
    lag = pipeline.lag()
    return ProcessingLagResponse(
        mode=lag.mode,
        pending_batches=lag.pending_batches,
        pending_samples=lag.pending_samples,
        pending_subjects=lag.pending_subjects,
        max_pending_samples=lag.max_pending_samples,
        processed_batches=lag.processed_batches,
        processed_samples=lag.processed_samples,
        processing_samples_per_s=lag.processing_samples_per_s,
    )


@router.websocket("/v1/ingest/ws")
async def ingest_ws(websocket: WebSocket, principal: IngestPrincipal) -> None:
    """Continuous ingest: each message one ingest request, each answered in order.

    A text message is JSON, a binary message msgpack (the bodies of ``POST /v1/ingest``).
    Each is answered with one JSON text message ``{"seq", "status", ...}``: ``seq`` counts
    the connection's messages from 1, ``status`` is the HTTP status the same body would get,
    and the rest is that response's body (200: ``stored``, ``results`` ... ; errors:
    ``detail``; 429/503 add ``retry_after_s``). Errors do not close the connection; a message
    over ``max_request_bytes`` closes it with 1009, and 20 rate refusals in a row with 1008.
    The key is checked at the handshake and again for each message, and each message's
    subjects against the key's current grant (403 answer, nothing stored); each message is
    audited. Once the key is revoked, expires or is deleted, the connection is closed with
    4401 and the reason (at once when idle; a message already sent is answered 401 first,
    and nothing of it is stored).
    """
    resources = get_resources(websocket)
    settings, pipeline, limiter = resources.settings, resources.pipeline, resources.limiter
    client = _rate_key(principal)
    address = websocket.client.host if websocket.client else None
    await websocket.accept()
    seq = refusals = 0
    with resources.auth.watch(principal) as watch:
        lost = asyncio.ensure_future(_until_invalid(watch))
        receiving: asyncio.Future[Message] | None = None
        try:
            while True:
                receiving = asyncio.ensure_future(websocket.receive())
                await asyncio.wait({receiving, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():  # the key ended while the client was idle
                    await _close_revoked(websocket, resources.audit, principal, address,
                                         watch.ended_reason, seq)
                    return
                message = receiving.result()
                if message["type"] == "websocket.disconnect":
                    return
                data: bytes | str | None = message.get("bytes")
                kind = MSGPACK
                if data is None:
                    data, kind = message.get("text") or "", JSON
                seq += 1
                size = len(data) if isinstance(data, bytes) else len(data.encode())
                if size > settings.max_request_bytes:
                    await websocket.close(
                        code=WS_CLOSE_TOO_BIG,
                        reason=f"message {seq}: {size} bytes; limit {settings.max_request_bytes}",
                    )
                    return
                # Fresh: a revocation by another process (the CLI) refuses this very message.
                current = await watch.current(fresh=True)
                if current is None:
                    answer: dict[str, Any] = {"status": 401, "detail": (
                        f"{watch.ended_reason}: message {seq} refused, nothing stored")}
                    await websocket.send_text(json.dumps({"seq": seq, **answer}))
                    await _close_revoked(websocket, resources.audit, principal, address,
                                         watch.ended_reason, seq)
                    return
                principal = current
                ctx = AuditContext(key_id=principal.key_id, role=principal.role)
                answer = await _ws_answer(data, kind, client, settings, pipeline, limiter,
                                          principal, ctx)
                await run_in_threadpool(resources.audit.record, ctx, "WS /v1/ingest/ws",
                                        answer["status"], client=address)
                refusals = refusals + 1 if answer["status"] == 429 else 0
                await websocket.send_text(json.dumps({"seq": seq, **answer}))
                if refusals >= _WS_MAX_REFUSALS:
                    await websocket.close(code=WS_CLOSE_RATE_ABUSE,
                                          reason="rate limit exceeded repeatedly")
                    return
        except WebSocketDisconnect:
            return
        finally:
            lost.cancel()
            if receiving is not None:
                receiving.cancel()


async def _until_invalid(watch: PrincipalWatch) -> None:
    """Return once the watched principal is no longer valid (on a change or at expiry)."""
    while await watch.current() is not None:
        await watch.changed()


async def _close_revoked(websocket: WebSocket, audit: AuditLog, principal: Principal,
                         address: str | None, reason: str, seq: int) -> None:
    """Audit, then close an ingest socket whose key is no longer valid (4401, the reason)."""
    entry = AuditEntry.new(principal.key_id, principal.role, "WS /v1/ingest/ws", None,
                           WS_CLOSE_UNAUTHORIZED,
                           f"connection closed after {seq} messages: {reason}", client=address)
    try:
        await run_in_threadpool(audit.append, entry)
    except Exception:  # closing matters more than the record; the failure is logged
        log.exception("audit: could not record the end of an ingest socket")
    with contextlib.suppress(Exception):
        await websocket.close(code=WS_CLOSE_UNAUTHORIZED, reason=reason[:120])


async def _ws_answer(data: bytes | str, kind: str, client: str, settings: Settings,
                     pipeline: Pipeline, limiter: RateLimiter, principal: Principal,
                     ctx: AuditContext) -> dict[str, Any]:
    try:
        body = parse_ingest_body(data, kind, max_batches=settings.max_batches_per_request)
        _check_times(body, _time_bounds(settings))
        _authorize(body, principal, ctx)
        response = await run_in_threadpool(_accept, body, client, pipeline, limiter)
    except RequestValidationError as exc:
        return {"status": 422, "detail": validation_issues(exc.errors())}
    except _RefusedError as exc:
        out: dict[str, Any] = {"status": exc.status, "detail": exc.detail}
        if exc.retry_after_s:
            out["retry_after_s"] = int(exc.retry_after_s)
        return out
    return {"status": 200, **response.model_dump()}


def document_bodies(app: FastAPI) -> None:
    """Publish the ingest request body (JSON and msgpack) in the app's OpenAPI schema.

    The route reads the raw body itself (to accept both forms), so FastAPI cannot infer it.

    Example
    -------
    >>> from wearemo.api import create_app
    >>> from wearemo.settings import Settings
    >>> spec = create_app(Settings(data_dir="/tmp/wearemo-doc")).openapi()
    >>> sorted(spec["paths"]["/v1/ingest"]["post"]["requestBody"]["content"])
    ['application/json', 'application/msgpack']
    """
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = default()
        schema = IngestRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        defs = schema.pop("$defs", {})
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for name, sub in defs.items():
            components.setdefault(name, sub)
        components.setdefault("IngestRequest", schema)
        ref = {"$ref": "#/components/schemas/IngestRequest"}
        spec["paths"]["/v1/ingest"]["post"]["requestBody"] = {
            "required": True,
            "description": "JSON, or msgpack with the same fields where values and "
            "timestamps_ns may also be raw little-endian bin arrays (docs/ingest.md).",
            "content": {
                JSON: {"schema": ref, "example": INGEST_EXAMPLE},
                # the same data as msgpack (the plain form: lists, not bin arrays)
                MSGPACK: {"schema": ref, "example": INGEST_EXAMPLE},
            },
        }
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
