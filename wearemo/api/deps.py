"""Dependencies: the resources built in the lifespan, handed out as ``Annotated`` aliases, and
authentication: every non-public endpoint declares its scope through :func:`authenticate`
(``Security(authenticate, scopes=[...])``, shown in OpenAPI as the ``bearer`` and ``apiKey``
security schemes).

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. No key: 401 with
``WWW-Authenticate``; a malformed, unknown, expired or revoked key: 401; a valid key whose role
lacks the endpoint's scope: 403. A subject in the path that the key may not reach is answered
exactly like a subject that does not exist (404, ``unknown subject '<id>'``), so a key learns
nothing about subjects outside its grant.

Example
-------
>>> from fastapi import FastAPI
>>> app = FastAPI()
>>> @app.get("/n")
... def n(store: StoreDep) -> list[str]:
...     return store.subject_ids()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypedDict

from fastapi import Depends, HTTPException, Path, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from starlette.requests import HTTPConnection

from wearemo.alerts import AlertEngine
from wearemo.api.audit import STATE_KEY, AuditContext, AuditLog
from wearemo.api.auth import SCOPES, Authenticator, Principal
from wearemo.api.keystore import KeyStore
from wearemo.api.limits import RateLimiter
from wearemo.api.live import LiveHub
from wearemo.model import StressModel
from wearemo.pipeline import Pipeline
from wearemo.samples import ID_PATTERN
from wearemo.settings import Settings
from wearemo.store import StateStore

__all__ = [
    "AdminPrincipal",
    "AlertableSubject",
    "AlertsDep",
    "AppState",
    "AuditLogDep",
    "AuthDep",
    "CalibratableSubject",
    "IngestPrincipal",
    "KeyStoreDep",
    "KnownSubject",
    "LimiterDep",
    "LiveDep",
    "ModelDep",
    "PipelineDep",
    "ReadPrincipal",
    "Resources",
    "SettingsDep",
    "StoreDep",
    "SubjectId",
    "audit_context",
    "authenticate",
    "get_live",
    "get_pipeline",
    "get_resources",
    "get_settings",
    "get_store",
]


@dataclass(frozen=True, slots=True)
class Resources:
    """Everything a request may need, built once per app in the lifespan."""

    settings: Settings
    store: StateStore
    model: StressModel
    pipeline: Pipeline
    limiter: RateLimiter
    live: LiveHub
    keys: KeyStore
    audit: AuditLog
    auth: Authenticator


class AppState(TypedDict):
    """What the lifespan yields (Starlette copies it into each ``request.state``)."""

    resources: Resources
    alerts: AlertEngine


def get_resources(request: HTTPConnection) -> Resources:
    """The app's :class:`Resources` (for HTTP requests and WebSockets alike)."""
    resources: Resources = request.state.resources
    return resources


def get_settings(request: HTTPConnection) -> Settings:
    """The app's settings."""
    return get_resources(request).settings


def get_store(request: HTTPConnection) -> StateStore:
    """The app's store."""
    return get_resources(request).store


def get_model(request: HTTPConnection) -> StressModel:
    """The app's model."""
    return get_resources(request).model


def get_pipeline(request: HTTPConnection) -> Pipeline:
    """The app's streaming pipeline."""
    return get_resources(request).pipeline


def get_limiter(request: HTTPConnection) -> RateLimiter:
    """The app's per-client rate limiter."""
    return get_resources(request).limiter


def get_live(request: HTTPConnection) -> LiveHub:
    """The app's live state fan-out."""
    return get_resources(request).live


def get_alerts(request: HTTPConnection) -> AlertEngine:
    """The app's alert engine (rules, alerts, deliveries)."""
    engine: AlertEngine = request.state.alerts
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
StoreDep = Annotated[StateStore, Depends(get_store)]
ModelDep = Annotated[StressModel, Depends(get_model)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
LiveDep = Annotated[LiveHub, Depends(get_live)]
AlertsDep = Annotated[AlertEngine, Depends(get_alerts)]

#: A subject id in the path: validated against the pseudonymous-id pattern (else 422).
SubjectId = Annotated[
    str,
    Path(
        pattern=ID_PATTERN,
        description="Pseudonymous subject id (letters, digits, '._:-'; at most 128 characters).",
        examples=["s01"],
    ),
]


def get_keys(request: HTTPConnection) -> KeyStore:
    """The app's key store."""
    return get_resources(request).keys


def get_auth(request: HTTPConnection) -> Authenticator:
    """The app's authenticator (checks keys, keeps open connections' principals current)."""
    return get_resources(request).auth


def get_audit(request: HTTPConnection) -> AuditLog:
    """The app's audit log."""
    return get_resources(request).audit


KeyStoreDep = Annotated[KeyStore, Depends(get_keys)]
AuditLogDep = Annotated[AuditLog, Depends(get_audit)]
AuthDep = Annotated[Authenticator, Depends(get_auth)]

_SCOPE_HELP = "; ".join(f"`{k}`: {v}" for k, v in SCOPES.items())
_bearer = HTTPBearer(
    auto_error=False, scheme_name="bearer", bearerFormat="wmo_<key_id>_<secret>",
    description=f"An API key as `Authorization: Bearer <key>`. Scopes: {_SCOPE_HELP}",
)
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey",
    description="The same API key in an `X-API-Key` header (for clients that cannot set "
    "`Authorization`).",
)
_CHALLENGE = 'Bearer realm="wearemo"'


def audit_context(request: HTTPConnection) -> AuditContext:
    """The request's audit context (created on first use); written by the audit middleware."""
    ctx = getattr(request.state, STATE_KEY, None)
    if not isinstance(ctx, AuditContext):
        ctx = AuditContext()
        setattr(request.state, STATE_KEY, ctx)
    return ctx


def authenticate(
    security_scopes: SecurityScopes,
    request: HTTPConnection,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_header)],
) -> Principal:
    """The caller's :class:`Principal`, checked against the scopes the endpoint declares.

    Raises
    ------
    HTTPException
        401 (with ``WWW-Authenticate``) without a key or with a bad one; 403 when the key's
        role lacks a declared scope.

    Example
    -------
    >>> from fastapi import FastAPI
    >>> app = FastAPI()
    >>> @app.get("/mine")
    ... def mine(who: Annotated[Principal, Security(authenticate, scopes=["subjects:read"])]
    ...          ) -> str:
    ...     return who.key_id
    """
    ctx = audit_context(request)  # every attempt is audited, refused ones too
    subject = request.path_params.get("subject_id")
    if isinstance(subject, str):  # so an unauthenticated attempt still names whose data
        ctx.touch(subject)
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        ctx.refusal = "missing API key"
        raise HTTPException(
            status_code=401,
            detail="missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    principal = get_resources(request).auth.authenticate(key)
    if principal is None:
        ctx.refusal = "invalid API key"
        raise HTTPException(
            status_code=401,
            detail="invalid API key (malformed, unknown, expired or revoked)",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    ctx.key_id, ctx.role = principal.key_id, principal.role
    request.state.key_id = principal.key_id  # the access log line names the key (observe.py)
    missing = [s for s in security_scopes.scopes if not principal.may(s)]
    if missing:
        ctx.refusal = "scope not held"
        raise HTTPException(
            status_code=403,
            detail=f"key {principal.key_id} ({principal.role}) lacks the scope "
            f"{', '.join(repr(m) for m in missing)} this endpoint needs",
        )
    return principal


#: The caller, required to hold ``subjects:read`` / ``ingest:write`` / ``admin``.
ReadPrincipal = Annotated[Principal, Security(authenticate, scopes=["subjects:read"])]
IngestPrincipal = Annotated[Principal, Security(authenticate, scopes=["ingest:write"])]
AdminPrincipal = Annotated[Principal, Security(authenticate, scopes=["admin"])]


def known_subject(
    subject_id: SubjectId,
    store: StoreDep,
    request: HTTPConnection,
    principal: Annotated[Principal, Security(authenticate)],
) -> str:
    """The path's subject id if the caller's key reaches it and the store knows it.

    The scope comes from where it is used (:data:`KnownSubject`: ``subjects:read``,
    :data:`CalibratableSubject`: ``baseline:write``). A subject outside the key's grant gets
    the same 404 as one that does not exist.
    """
    ctx = audit_context(request)
    ctx.touch(subject_id)
    if not principal.reaches(subject_id):
        ctx.refusal = "subject not in the key's grant"  # the client sees a plain 404
    if ctx.refusal is not None or not store.has_subject(subject_id):
        raise HTTPException(status_code=404, detail=f"unknown subject {subject_id!r}")
    return subject_id


#: A subject id the key may read and the store knows (404 otherwise, alike for both).
KnownSubject = Annotated[str, Security(known_subject, scopes=["subjects:read"])]
#: The same, for endpoints that change the subject's baseline (``baseline:write``).
CalibratableSubject = Annotated[str, Security(known_subject, scopes=["baseline:write"])]
#: The same, for endpoints that change the subject's alert rules (``alerts:write``).
AlertableSubject = Annotated[str, Security(known_subject, scopes=["alerts:write"])]
