"""``/v1/admin``: API keys, cohorts, pseudonymous subject ids and the audit log (scope
``admin``). Every call is recorded in the audit log by the audit middleware."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from wearemo.api.audit import AuditEntry
from wearemo.api.deps import (
    AdminPrincipal,
    AlertsDep,
    AuditLogDep,
    KeyStoreDep,
    PipelineDep,
    SettingsDep,
    StoreDep,
    SubjectId,
    audit_context,
)
from wearemo.api.keystore import CohortInfo, KeyInfo, KeyStoreError, UnknownError
from wearemo.api.schemas import (
    AUTH_ERRORS,
    AuditEntryOut,
    AuditVerifyResponse,
    CohortOut,
    CohortRequest,
    CreatedKeyOut,
    ErasureResponse,
    ErrorResponse,
    KeyOut,
    KeyRequest,
    MintRequest,
    MintResponse,
    RetentionResponse,
    SubjectsRequest,
    ValidationResponse,
)
from wearemo.samples import ID_PATTERN
from wearemo.store.retention import apply_retention

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=AUTH_ERRORS)

_KEY_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="A key's public id.")]
_COHORT = Annotated[str, Path(pattern=ID_PATTERN, description="A cohort's name.")]
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse,
                                               "description": "Unknown key or cohort."}}
_422: dict[int | str, dict[str, Any]] = {422: {"model": ValidationResponse,
                                               "description": "Invalid request (field named)."}}

def _key_out(k: KeyInfo) -> KeyOut:
    return KeyOut(key_id=k.key_id, role=k.role, name=k.name, created_ns=k.created_ns,
                  expires_ns=k.expires_ns, revoked_ns=k.revoked_ns, active=k.active(),
                  subjects=list(k.subjects), cohorts=list(k.cohorts))


def _cohort_out(c: CohortInfo) -> CohortOut:
    return CohortOut(name=c.name, created_ns=c.created_ns, subjects=list(c.subjects),
                     keys=list(c.keys))


def _invalid(field: str, exc: Exception) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", field),
                                    "msg": f"{field}: {exc}"}])


def _not_found(exc: UnknownError) -> HTTPException:
    return HTTPException(status_code=404, detail=str(exc))


@router.post("/keys", status_code=201, responses=_422)
def create_key(body: KeyRequest, keys: KeyStoreDep, _: AdminPrincipal,
               request: Request) -> CreatedKeyOut:
    """Create an API key. The response's ``secret`` is the only copy: store it now."""
    expires = None if body.expires_in_s is None else time.time_ns() + int(body.expires_in_s * 1e9)
    try:
        created = keys.create_key(body.role, subjects=body.subjects, name=body.name,
                                  expires_ns=expires)
    except KeyStoreError as exc:
        raise _invalid("subjects", exc) from None
    info = created.info
    audit_context(request).detail = f"created key {info.key_id} ({info.role})"
    return CreatedKeyOut(**_key_out(info).model_dump(), secret=created.secret)


@router.get("/keys")
def list_keys(keys: KeyStoreDep, _: AdminPrincipal) -> list[KeyOut]:
    """Every key (active, expired, revoked), oldest first; never a secret."""
    return [_key_out(k) for k in keys.list_keys()]


@router.delete("/keys/{key_id}", responses=_404)
def revoke_key(key_id: _KEY_ID, keys: KeyStoreDep, _: AdminPrincipal,
               request: Request) -> KeyOut:
    """Revoke a key: refused from the next request on, and its open streams and ingest
    WebSockets are closed (4401). Idempotent."""
    audit_context(request).detail = f"revoked key {key_id}"
    try:
        return _key_out(keys.revoke(key_id))
    except UnknownError as exc:
        raise _not_found(exc) from None


@router.post("/cohorts", status_code=201, responses=_422)
def create_cohort(body: CohortRequest, keys: KeyStoreDep, _: AdminPrincipal,
                  request: Request) -> CohortOut:
    """Create a cohort, optionally with its first subjects."""
    audit_context(request).detail = f"created cohort {body.name}"
    try:
        return _cohort_out(keys.create_cohort(body.name, subjects=body.subjects))
    except KeyStoreError as exc:
        raise _invalid("name", exc) from None


@router.get("/cohorts")
def list_cohorts(keys: KeyStoreDep, _: AdminPrincipal) -> list[CohortOut]:
    """Every cohort with its subjects and the reader keys it is granted to."""
    return [_cohort_out(c) for c in keys.list_cohorts()]


@router.post("/cohorts/{cohort}/subjects", responses=_404)
def add_cohort_subjects(cohort: _COHORT, body: SubjectsRequest, keys: KeyStoreDep,
                        _: AdminPrincipal, request: Request) -> CohortOut:
    """Add subjects to a cohort (its reader keys reach them from the next request on)."""
    audit_context(request).detail = f"cohort {cohort}: added {', '.join(body.subjects)}"[:500]
    try:
        return _cohort_out(keys.add_subjects(cohort, body.subjects))
    except UnknownError as exc:
        raise _not_found(exc) from None


@router.delete("/cohorts/{cohort}/subjects/{subject_id}", responses=_404)
def remove_cohort_subject(cohort: _COHORT, subject_id: SubjectId, keys: KeyStoreDep,
                          _: AdminPrincipal, request: Request) -> CohortOut:
    """Remove a subject from a cohort (open streams of its reader keys drop the subject)."""
    audit_context(request).detail = f"cohort {cohort}: removed {subject_id}"
    try:
        return _cohort_out(keys.remove_subject(cohort, subject_id))
    except UnknownError as exc:
        raise _not_found(exc) from None


@router.put("/cohorts/{cohort}/grants/{key_id}", responses={**_404, **_422})
def grant_cohort(cohort: _COHORT, key_id: _KEY_ID, keys: KeyStoreDep, _: AdminPrincipal,
                 request: Request) -> CohortOut:
    """Let a reader key read the cohort's subjects. Idempotent."""
    audit_context(request).detail = f"cohort {cohort}: granted to key {key_id}"
    try:
        keys.grant_cohort(cohort, key_id)
    except UnknownError as exc:
        raise _not_found(exc) from None
    except KeyStoreError as exc:
        raise RequestValidationError([{"type": "value_error", "loc": ("path", "key_id"),
                                       "msg": f"key_id: {exc}"}]) from None
    return _cohort_out(keys.cohort(cohort))


@router.delete("/cohorts/{cohort}/grants/{key_id}", responses=_404)
def ungrant_cohort(cohort: _COHORT, key_id: _KEY_ID, keys: KeyStoreDep, _: AdminPrincipal,
                   request: Request) -> CohortOut:
    """Withdraw a cohort from a reader key (its open streams drop the cohort's subjects)."""
    audit_context(request).detail = f"cohort {cohort}: withdrawn from key {key_id}"
    try:
        keys.ungrant_cohort(cohort, key_id)
        return _cohort_out(keys.cohort(cohort))
    except UnknownError as exc:
        raise _not_found(exc) from None


@router.post("/subjects", status_code=201, responses=_404)
def mint_subjects(body: MintRequest, keys: KeyStoreDep, _: AdminPrincipal,
                  request: Request) -> MintResponse:
    """Mint random pseudonymous subject ids (unlinkable: derived from nothing), optionally
    adding them to a cohort. Who an id stands for is kept outside wearemo."""
    if body.cohort is not None:
        try:
            keys.cohort(body.cohort)
        except UnknownError as exc:
            raise _not_found(exc) from None
    minted = keys.mint_subjects(body.count)
    if body.cohort is not None:
        keys.add_subjects(body.cohort, minted)
    audit_context(request).detail = (f"minted {len(minted)} subject ids"
                                      + (f" into cohort {body.cohort}" if body.cohort else ""))
    return MintResponse(subjects=minted)


@router.delete(
    "/subjects/{subject_id}",
    responses={404: {"model": ErrorResponse, "description": "Nothing is known of the subject."}},
)
def erase_subject(subject_id: SubjectId, pipeline: PipelineDep, store: StoreDep,
                  alerts: AlertsDep, keys: KeyStoreDep, _: AdminPrincipal,
                  request: Request) -> ErasureResponse:
    """Erase a subject everywhere: raw samples, batches, windows, states, calibration (in the
    configured store), its in-memory stream and baseline, alert rules, alerts and webhook
    deliveries, and its cohort memberships and key grants. A later upload under the same id
    starts from nothing. Deleted rows are overwritten and the write-ahead logs of the SQLite
    files truncated, so no copy stays on disk (``wal_truncated`` is false when another
    process's open read kept a log from being truncated for 5 s; the next erasure or
    retention run completes it). The audit log keeps the pseudonymous id of this erasure (and
    earlier accesses): it is the record that the erasure happened."""
    ctx = audit_context(request)
    ctx.touch(subject_id)
    removed = pipeline.erase(subject_id)
    alert_rows = alerts.erase_subject(subject_id)
    grants = keys.forget_subject(subject_id)
    if not any(removed.values()) and not alert_rows and not grants:
        raise HTTPException(status_code=404, detail=f"unknown subject {subject_id!r}")
    # Every log is truncated even when one is blocked (a list, not a short-circuiting all()).
    truncated = all([store.truncate_wal(), alerts.db.truncate_wal(), keys.truncate_wal()])
    ctx.detail = (f"erased: {removed}, {alert_rows} alert rows, {grants} grants"
                  + ("" if truncated else "; write-ahead log not truncated yet"))
    return ErasureResponse(subject_id=subject_id, removed=removed, alert_rows=alert_rows,
                           grants=grants, wal_truncated=truncated)


@router.post(
    "/retention",
    responses={409: {"model": ErrorResponse, "description": "No retention policy is set."}},
)
def run_retention(store: StoreDep, settings: SettingsDep, _: AdminPrincipal,
                  request: Request) -> RetentionResponse:
    """Apply the retention policy now (``WEAREMO_RETENTION_DAYS``; it also runs every
    ``WEAREMO_RETENTION_INTERVAL_S``): data older than the limit is deleted from the store."""
    if settings.retention_days is None:
        raise HTTPException(status_code=409, detail="no retention policy: set "
                            "WEAREMO_RETENTION_DAYS to delete data older than that many days")
    run = apply_retention(store, days=settings.retention_days)
    audit_context(request).detail = f"retention before {run.cutoff_ns}: {run.removed}"
    return RetentionResponse(cutoff_ns=run.cutoff_ns, removed=run.removed,
                             wal_truncated=run.wal_truncated)


@router.get("/audit")
def read_audit(
    audit: AuditLogDep,
    _: AdminPrincipal,
    # le: SQLite integers are 64-bit; a larger value overflowed in the driver (HTTP 500).
    after_seq: Annotated[int, Query(ge=0, le=2**63 - 1,
                                    description="Entries after this sequence number.")] = 0,
    subject_id: Annotated[str | None, Query(pattern=ID_PATTERN,
                                            description="Only this subject's entries.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[AuditEntryOut]:
    """Audit entries, oldest first; page with ``after_seq`` (the last ``seq`` seen)."""
    return [_entry_out(e) for e in audit.entries(after_seq=after_seq, subject_id=subject_id,
                                                 limit=limit)]


@router.get("/audit/verify")
def verify_audit(audit: AuditLogDep, _: AdminPrincipal) -> AuditVerifyResponse:
    """Recompute the audit log's keyed chain; ``ok`` is false at the first tampered entry."""
    r = audit.verify()
    return AuditVerifyResponse(ok=r.ok, entries=r.entries, head_sha256=r.head_sha256,
                               broken_seq=r.broken_seq, reason=r.reason,
                               keyed_from_seq=r.keyed_from_seq)


def _entry_out(e: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(seq=e.seq, at_ns=e.at_ns, key_id=e.key_id, role=e.role,
                         action=e.action, subject_id=e.subject_id, outcome=e.outcome,
                         detail=e.detail, prev_sha256=e.prev_sha256, sha256=e.sha256,
                         client=e.client, count=e.count, keyed=e.keyed)
