"""``POST /v1/ingest``: sample batches in, windows and states out (into the store)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from wearemo.api.deps import IngestPrincipal, PipelineDep, SettingsDep, audit_context
from wearemo.api.schemas import (
    AUTH_ERRORS,
    BatchOutcome,
    ConflictDetail,
    ConflictResponse,
    ErrorResponse,
    IngestRequest,
    IngestResponse,
    ValidationResponse,
)

__all__ = ["router"]

router = APIRouter(tags=["ingest"], responses=AUTH_ERRORS)


@router.post(
    "/v1/ingest",
    responses={
        409: {
            "model": ConflictResponse,
            "description": "A batch overlaps earlier data of its channel or re-uses a batch id "
            "with different content; batches before it stay stored.",
        },
        413: {"model": ErrorResponse, "description": "Request body too large."},
        422: {"model": ValidationResponse, "description": "Invalid batch (the field is named)."},
    },
)
def ingest(
    body: IngestRequest,
    pipeline: PipelineDep,
    settings: SettingsDep,
    principal: IngestPrincipal,
    request: Request,
) -> IngestResponse:
    """Store sample batches and run them through the per-subject streaming pipeline.

    Every batch's subject must be within the key's grant: a request with one foreign subject
    is refused whole with HTTP 403 naming the first such batch, and nothing of it is stored.
    Batches are processed in order. A batch whose ``batch_id`` is already stored for its subject
    is reported as ``duplicate`` and not stored again, so retrying a whole request is safe. A
    batch that starts at or before the last stored sample of its channel stops the request with
    HTTP 409; the batches before it stay stored.
    """
    # A plain sync handler: FastAPI runs it in the thread pool, off the event loop.
    n = len(body.batches)
    if n > settings.max_batches_per_request:
        raise RequestValidationError(
            [
                {
                    "type": "too_long",
                    "loc": ("body", "batches"),
                    "msg": f"batches: {n} batches in one request; at most "
                    f"{settings.max_batches_per_request} are accepted (split the upload)",
                }
            ]
        )
    ctx = audit_context(request)
    for b in body.batches:
        ctx.touch(b.subject_id)
    ctx.detail = f"{n} batches"
    for i, b in enumerate(body.batches):  # before anything is stored
        if not principal.reaches(b.subject_id):
            raise HTTPException(
                status_code=403,
                detail=f"batches.{i}.subject_id: key {principal.key_id} ({principal.role}) may "
                f"not write subject {b.subject_id!r}; nothing of this request was stored",
            )
    report = pipeline.ingest(body.batches)
    rejected, index = report.rejected, report.rejected_index
    if rejected is not None and index is not None:
        earlier = report.results[:index]
        raise HTTPException(
            status_code=409,
            detail=ConflictDetail(
                field=f"batches.{index}.{rejected.field}",
                message=rejected.reason or "rejected",
                batch_id=rejected.batch_id,
                stored_before=[r.batch_id for r in earlier if r.status == "stored"],
                duplicates_before=[r.batch_id for r in earlier if r.status == "duplicate"],
            ).model_dump(),
        )
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
