"""``GET /metrics``: Prometheus text format (see ``docs/operations.md``)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from wearemo.api.deps import AlertsDep
from wearemo.metrics import ALERT_QUEUE_DEPTH, WEBHOOK_OUTBOX_DEPTH, render

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def prometheus_metrics(alerts: AlertsDep) -> Response:
    """Ingest, pipeline, store, HTTP and webhook metrics for Prometheus to scrape."""
    # Depths are read at scrape time: one cheap query instead of bookkeeping on every change.
    WEBHOOK_OUTBOX_DEPTH.set(alerts.db.pending_count())
    ALERT_QUEUE_DEPTH.set(alerts.queue_depth())
    body, content_type = render()
    return Response(content=body, media_type=content_type)
