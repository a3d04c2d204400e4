"""Request and response bodies of the HTTP API.

Example
-------
>>> IngestResponse(stored=1, duplicates=0, windows=0, states=0,
...                results=[BatchOutcome(batch_id="b1", status="stored")]).stored
1
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from wearemo.model.state import StateEstimate
from wearemo.samples import Channel, Identifier, SampleBatch
from wearemo.store.base import SubjectSummary

__all__ = [
    "AUTH_ERRORS",
    "INGEST_EXAMPLE",
    "AuditEntryOut",
    "AuditVerifyResponse",
    "BaselineRequest",
    "BaselineResponse",
    "BatchOutcome",
    "CohortOut",
    "CohortRequest",
    "ConflictDetail",
    "ConflictResponse",
    "CreatedKeyOut",
    "ErasureResponse",
    "ErrorResponse",
    "FeatureWindowOut",
    "HealthResponse",
    "IngestRequest",
    "IngestResponse",
    "KeyOut",
    "KeyRequest",
    "MintRequest",
    "MintResponse",
    "OmhDataPoint",
    "ProcessingLagResponse",
    "ReadyResponse",
    "RetentionResponse",
    "SampleSeries",
    "StateEstimate",
    "SubjectSummary",
    "SubjectsRequest",
    "ValidationIssue",
    "ValidationResponse",
    "WarmupProgress",
]


#: Request examples shown in /docs and published in the OpenAPI schema; each is valid and
#: accepted by the API (tests/api/test_docs.py posts them). Times are multiples of 100 ms:
#: larger unix-ns integers than 2**53 survive a browser's JSON (Swagger UI) only when they
#: are multiples of 256.
_T0_NS = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
INGEST_EXAMPLE: dict[str, Any] = {"batches": [
    {"batch_id": "e4-a01:eda:1700000000", "subject_id": "s01", "device_id": "e4-a01",
     "channel": "eda", "start_ns": _T0_NS, "rate_hz": 4.0,
     "values": [3.02, 3.05, 3.11, 3.08, 3.04, 3.01, 2.99, 3.0]},
    {"batch_id": "h10-7:rr:1700000000", "subject_id": "s01", "device_id": "h10-7",
     "channel": "rr", "start_ns": _T0_NS + 400_000_000,
     "timestamps_ns": [_T0_NS + 400_000_000, _T0_NS + 1_200_000_000, _T0_NS + 2_000_000_000,
                       _T0_NS + 2_900_000_000],
     "values": [812.0, 800.0, 800.0, 900.0]},
]}


class IngestRequest(BaseModel):
    """``POST /v1/ingest`` body: batches processed in order (at most
    ``max_batches_per_request``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [INGEST_EXAMPLE]})

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


class ProcessingLagResponse(BaseModel):
    """``GET /v1/ingest/lag``: how far processing lags behind the accepted data."""

    mode: Literal["inline", "background"] = Field(
        description="'inline': ingest answers after processing; 'background': after durable "
        "storage, workers process from the store's queue.")
    pending_batches: int = Field(description="Batches stored but not yet processed.")
    pending_samples: int = Field(description="Samples stored but not yet processed.")
    pending_subjects: int = Field(description="Subjects with unprocessed batches.")
    max_pending_samples: int = Field(
        description="Above this, ingest answers 503 with Retry-After (background mode).")
    processed_batches: int = Field(description="Batches processed since the service started.")
    processed_samples: int = Field(description="Samples processed since the service started.")
    processing_samples_per_s: float | None = Field(
        description="Samples processed per second of processing work: the service's "
        "sustainable capacity (null before anything was processed).")


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


def _time_text(value: object) -> object:
    # Numbers become their shortest exact decimal text, parsed like the query times; bool is
    # an int to Python but never a time.
    if isinstance(value, bool):
        raise ValueError("expected unix seconds or ISO-8601 text, got a boolean")
    if isinstance(value, int | float):
        return repr(value)
    return value


#: A time in a JSON body: unix seconds (number or text) or ISO-8601 text, as the query times.
BodyTime = Annotated[
    str,
    BeforeValidator(_time_text),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string"}],
            "description": "Unix seconds (e.g. 1700000000.5) or ISO-8601 (e.g. "
            "2023-11-14T22:13:20Z; no offset means UTC).",
            "examples": [1700000000, "2023-11-14T22:13:20Z"],
        }
    ),
]


class BaselineRequest(BaseModel):
    """``PUT /v1/subjects/{subject_id}/baseline`` body: the calibration period, on window ends.

    The subject's data over the period must already be ingested; its stored windows that pass
    the model's gate form the baseline.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"start": "2023-11-14T22:13:20Z", "end": "2023-11-14T22:18:20Z"}]})

    start: BodyTime
    end: BodyTime


class WarmupProgress(BaseModel):
    """How far the warm-up baseline is (reported while it is not ready)."""

    covered_s: float = Field(description="Seconds of valid data covered so far.")
    needed_s: float = Field(description="Seconds the warm-up spans.")
    windows: int = Field(description="Valid windows collected so far.")
    min_windows: int = Field(description="Fewest valid windows the baseline needs.")


class BaselineResponse(BaseModel):
    """A subject's personal baseline: what its states are expressed against."""

    subject_id: str
    source: Literal["warm-up", "calibration"] = Field(
        description="'warm-up': learned from the first valid minutes; 'calibration': from the "
        "labelled calibration period below."
    )
    ready: bool = Field(description="False while the warm-up is in progress (states withheld).")
    start_ns: int | None = Field(None, description="Calibration period start (unix ns).")
    end_ns: int | None = Field(None, description="Calibration period end (unix ns, exclusive).")
    windows_used: int | None = Field(
        None, description="Windows of the calibration period that passed the gate."
    )
    created_ns: int | None = Field(None, description="When the calibration was made (unix ns).")
    medians: dict[str, float] = Field(
        description="Baseline median of each feature, in the feature's unit; empty until ready."
    )
    spreads: dict[str, float] = Field(
        description="Robust spread (1.4826 x MAD) of each feature in the units of its deviation "
        "(log units for HRV and skin conductance level); empty until ready."
    )
    warmup: WarmupProgress | None = Field(
        None, description="Warm-up progress, while the baseline is not ready."
    )


class FeatureWindowOut(BaseModel):
    """One stored feature window (``GET /v1/subjects/{subject_id}/features``).

    Feature names carry their unit (``hr_mean_bpm``, ``hrv_sdnn_ms``; see ``docs/features.md``);
    a feature that could not be computed is ``null`` or absent, never a made-up number.
    """

    subject_id: str
    start_ns: int = Field(description="Window start, unix ns.")
    end_ns: int = Field(description="Window end, unix ns (windows are stamped here).")
    features: dict[str, float | None]
    sample_counts: dict[str, int] = Field(description="Channel -> samples inside the window.")
    coverage: dict[str, float] = Field(description="Channel -> fraction of the window covered.")
    quality: dict[str, float] = Field(description="Signal quality indices (0..1).")
    motion: bool = Field(description="Accelerometer activity high enough to gate the window.")
    beat_source: str = Field(description="'rr' (device), 'ppg' (derived) or 'none'.")
    n_beats: int = Field(description="Beat intervals used for HRV.")
    methods: dict[str, str] = Field(description="Stage -> method name, and library versions.")
    reasons: dict[str, str] = Field(description="Feature group -> why its features are absent.")


class SampleSeries(BaseModel):
    """Raw samples of one channel (``GET /v1/subjects/{subject_id}/samples``), time-ordered."""

    subject_id: str
    channel: Channel
    unit: str = Field(description="Unit of the values (the channel's canonical unit).")
    times_ns: list[int] = Field(description="Sample times, unix ns, strictly increasing.")
    values: list[float] | list[list[float]] = Field(
        description="One value per time; [x, y, z] triples for 'acc'."
    )


class OmhDataPoint(BaseModel):
    """An Open mHealth data point (``omh:data-point:1.0``): a header and a body that follows
    the schema the header's ``schema_id`` names (``omh:heart-rate:2.0``,
    ``omh:rr-interval:1.0``)."""

    header: dict[str, Any]
    body: dict[str, Any]


#: The 401 / 403 answers of every endpoint that needs a key (for the OpenAPI description).
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse,
          "description": "No API key (with `WWW-Authenticate`), or a malformed, unknown, expired "
          "or revoked one."},
    403: {"model": ErrorResponse, "description": "The key's role lacks this endpoint's scope "
          "(or, for ingest, a batch's subject is outside the key's grant: nothing stored)."},
}


class KeyRequest(BaseModel):
    """``POST /v1/admin/keys`` body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"role": "device", "subjects": ["s01"], "name": "wristband of s01",
         "expires_in_s": 31_536_000}]})

    role: Literal["device", "reader", "admin"]
    subjects: list[Identifier] = Field(
        default_factory=list, max_length=10_000,
        description="Subjects a device key may write and read (device keys only).")
    name: str = Field("", max_length=200, description="A label for people.")
    expires_in_s: float | None = Field(
        None, gt=0, le=100 * 365 * 86400, description="Lifetime in seconds; none: no expiry.")


class KeyOut(BaseModel):
    """A key as listed: never its secret."""

    key_id: str
    role: Literal["device", "reader", "admin"]
    name: str
    created_ns: int
    expires_ns: int | None
    revoked_ns: int | None
    active: bool
    subjects: list[str] = Field(description="Subjects granted directly (device keys).")
    cohorts: list[str] = Field(description="Cohorts granted (reader keys).")


class CreatedKeyOut(KeyOut):
    """A new key with its secret: shown this once, only a hash is stored."""

    secret: str = Field(description="The whole key to send as `Authorization: Bearer <key>`.")


class CohortRequest(BaseModel):
    """``POST /v1/admin/cohorts`` body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "trial-1", "subjects": ["s01", "s02"]}]})

    name: Identifier
    subjects: list[Identifier] = Field(default_factory=list, max_length=100_000)


class SubjectsRequest(BaseModel):
    """Subjects to add to a cohort."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"subjects": ["s03"]}]})

    subjects: list[Identifier] = Field(min_length=1, max_length=100_000)


class CohortOut(BaseModel):
    """A cohort, its subjects and the reader keys it is granted to."""

    name: str
    created_ns: int
    subjects: list[str]
    keys: list[str]


class MintRequest(BaseModel):
    """``POST /v1/admin/subjects`` body: how many pseudonymous ids to mint."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"count": 10, "cohort": "trial-1"}]})

    count: int = Field(1, ge=1, le=10_000)
    cohort: Identifier | None = Field(None, description="Add the new ids to this cohort.")


class MintResponse(BaseModel):
    """Newly minted pseudonymous subject ids (random, derived from nothing)."""

    subjects: list[str]


class AuditEntryOut(BaseModel):
    """One audit log entry."""

    seq: int
    at_ns: int
    key_id: str | None
    role: str | None
    action: str = Field(examples=["GET /v1/subjects/{subject_id}/states"])
    subject_id: str | None
    outcome: int = Field(description="HTTP status of the answer (0: a CLI action; 4401/4403: "
                         "an open stream ended by a revocation or a withdrawn grant).")
    detail: str
    prev_sha256: str
    sha256: str = Field(description="The entry's chain value: HMAC-SHA256 under the audit key "
                        "(`keyed`), or plain SHA-256 for entries older than the keyed chain.")
    client: str | None = Field(default=None, description="The caller's network address.")
    count: int = Field(default=1, description="Requests the entry stands for: refused ones are "
                       "aggregated per reason, key, client and route and interval.")
    keyed: bool = True


class AuditVerifyResponse(BaseModel):
    """Result of checking the audit log's hash chain."""

    ok: bool
    entries: int
    head_sha256: str = Field(description="Hash of the newest valid entry: keep it elsewhere to "
                             "detect entries cut off the end later.")
    broken_seq: int | None
    reason: str | None
    keyed_from_seq: int | None = Field(default=None, description="First entry of the keyed "
                                       "chain; older entries were sealed by it.")


class ErasureResponse(BaseModel):
    """What ``DELETE /v1/admin/subjects/{subject_id}`` removed."""

    subject_id: str
    removed: dict[str, int] = Field(
        description="Store records removed per kind (samples, batches, windows, states, "
        "calibrations, ...).")
    alert_rows: int = Field(description="Alert rules, alerts and webhook deliveries removed.")
    grants: int = Field(description="Cohort memberships and key grants removed.")
    wal_truncated: bool = Field(
        description="Whether the write-ahead logs of the SQLite files were emptied, so no "
        "copy of the erased rows stays on disk; false when another process's open read "
        "blocked it (the next erasure or retention run completes it).")


class RetentionResponse(BaseModel):
    """What a retention run removed (``POST /v1/admin/retention``)."""

    cutoff_ns: int = Field(description="Data older than this (unix ns) was removed.")
    removed: dict[str, int] = Field(description="Store records removed per kind.")
    wal_truncated: bool = Field(
        description="Whether the store's write-ahead log was emptied afterwards (see "
        "ErasureResponse).")
