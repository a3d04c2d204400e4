"""Request and response bodies of the HTTP API.

Example
-------
>>> IngestResponse(stored=1, duplicates=0, windows=0, states=0,
...                results=[BatchOutcome(batch_id="b1", status="stored")]).stored
1
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from wearemo.model.state import StateEstimate
from wearemo.samples import SampleBatch
from wearemo.store.base import SubjectSummary

__all__ = [
    "BatchOutcome",
    "ConflictDetail",
    "ConflictResponse",
    "ErrorResponse",
    "HealthResponse",
    "IngestRequest",
    "IngestResponse",
    "ReadyResponse",
    "StateEstimate",
    "SubjectSummary",
    "ValidationIssue",
    "ValidationResponse",
]


class IngestRequest(BaseModel):
    """``POST /v1/ingest`` body: batches processed in order (at most
    ``max_batches_per_request``)."""

    model_config = ConfigDict(extra="forbid")

    batches: list[SampleBatch] = Field(min_length=1)


class BatchOutcome(BaseModel):
    """What happened to one batch of an accepted request."""

    batch_id: str
    status: Literal["stored", "duplicate"]


class IngestResponse(BaseModel):
    """``POST /v1/ingest`` result: counts, and one outcome per batch in request order."""

    stored: int = Field(description="Batches newly stored.")
    duplicates: int = Field(description="Batches whose batch_id was already stored (skipped).")
    windows: int = Field(description="Feature windows closed by this request.")
    states: int = Field(description="State estimates produced by this request.")
    results: list[BatchOutcome]


class ConflictDetail(BaseModel):
    """Why a batch was refused with HTTP 409; earlier batches of the request stay stored."""

    field: str = Field(examples=["batches.3.start_ns"])
    message: str
    batch_id: str
    stored_before: list[str] = Field(
        description="Batch ids earlier in this request that were newly stored."
    )
    duplicates_before: list[str] = Field(
        description="Batch ids earlier in this request that were already stored."
    )


class ConflictResponse(BaseModel):
    """HTTP 409 body."""

    detail: ConflictDetail


class ErrorResponse(BaseModel):
    """Body of 404 / 413 / 503 errors."""

    detail: str


class ValidationIssue(BaseModel):
    """One problem with the request (HTTP 422)."""

    type: str
    loc: list[str | int]
    field: str = Field(
        description="Dotted path of the offending field inside the body or query, "
        "e.g. 'batches.0.values.17'.",
        examples=["batches.0.values.17"],
    )
    msg: str = Field(examples=["values[17]: not a finite number (NaN or infinity)"])


class ValidationResponse(BaseModel):
    """HTTP 422 body."""

    detail: list[ValidationIssue]


class HealthResponse(BaseModel):
    """``GET /healthz``: the process answers."""

    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """``GET /readyz``: the store answers."""

    status: Literal["ready", "unavailable"]
    store: str
    model_version: str
