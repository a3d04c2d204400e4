"""``GET /v1/subjects/{subject_id}/export``: states, features or samples as CSV or Parquet."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from wearemo.api.deps import KnownSubject, StoreDep
from wearemo.api.params import Range
from wearemo.api.schemas import ErrorResponse, ValidationResponse
from wearemo.samples import Channel
from wearemo.store.export import MEDIA_TYPES, ExportFormat, ExportKind, export_stream

__all__ = ["router"]

router = APIRouter(prefix="/v1/subjects", tags=["export"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file, streamed (columns and units: `docs/read-api.md`).",
        "content": {media: {"schema": {"type": "string", "format": "binary"}}
                    for media in MEDIA_TYPES.values()},
    },
    404: {"model": ErrorResponse, "description": "Unknown subject."},
    422: {"model": ValidationResponse, "description": "Bad parameter (named in `field`)."},
}


@router.get("/{subject_id}/export", response_class=StreamingResponse, responses=_RESPONSES)
def export(
    subject_id: KnownSubject,
    store: StoreDep,
    span: Range,
    kind: Annotated[ExportKind, Query(description="What to export.")] = "states",
    format: Annotated[ExportFormat, Query(description="File format.")] = "csv",
    channel: Annotated[
        Channel | None, Query(description="Only this channel (kind=samples; default all).")
    ] = None,
) -> StreamingResponse:
    """A subject's states, feature windows or raw samples over ``[start, end)`` as a file.

    The file is written page by page while it is sent, so a long range never sits in memory.
    States and windows are selected on their window end, samples on their own time.
    """
    chunks = export_stream(store, [subject_id], kind, format, start_ns=span.start_ns,
                           end_ns=span.end_ns, channel=channel)
    filename = f"{subject_id}-{kind}.{format}"
    return StreamingResponse(
        chunks,  # a sync iterator: Starlette pulls it in the thread pool (store reads block)
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
