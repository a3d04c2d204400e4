"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from wearemo.api.deps import ModelDep, SettingsDep, StoreDep
from wearemo.api.schemas import HealthResponse, ReadyResponse

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> HealthResponse:
    """The process is up (no dependencies checked).

    Answered on the event loop itself, never in the worker-thread pool, so it answers while
    every pool thread is busy (ingest, exports, requests waiting for a subject's lock).
    """
    return HealthResponse()


@router.get(
    "/readyz",
    responses={503: {"model": ReadyResponse, "description": "The store does not answer."}},
)
def readyz(
    store: StoreDep, model: ModelDep, settings: SettingsDep, response: Response
) -> ReadyResponse:
    """The store answers a query: the service can take traffic (else HTTP 503)."""
    ok = store.ping()
    if not ok:
        response.status_code = 503
    return ReadyResponse(
        status="ready" if ok else "unavailable", store=settings.store, model_version=model.version
    )
