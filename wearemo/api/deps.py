"""Dependencies: the resources built in the lifespan, handed out as ``Annotated`` aliases.

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

from fastapi import Depends, HTTPException, Path
from starlette.requests import HTTPConnection

from wearemo.alerts import AlertEngine
from wearemo.api.limits import RateLimiter
from wearemo.api.live import LiveHub
from wearemo.model import StressModel
from wearemo.pipeline import Pipeline
from wearemo.samples import ID_PATTERN
from wearemo.settings import Settings
from wearemo.store import StateStore

__all__ = [
    "AlertsDep",
    "AppState",
    "KnownSubject",
    "LimiterDep",
    "LiveDep",
    "ModelDep",
    "PipelineDep",
    "Resources",
    "SettingsDep",
    "StoreDep",
    "SubjectId",
    "get_live",
    "get_pipeline",
    "get_resources",
    "get_settings",
    "get_store",
    "rate_limit_key",
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


def rate_limit_key(request: HTTPConnection) -> str:
    """Whom a rate limit is counted against: the remote address.

    Once authentication is on, the API key's id is the better key (several devices behind
    one NAT address, or one key spread over many addresses).

    Example
    -------
    >>> from starlette.requests import Request
    >>> rate_limit_key(Request({"type": "http", "client": ("10.0.0.7", 5123)}))
    'addr:10.0.0.7'
    """
    client = request.client
    return f"addr:{client.host if client is not None else 'unknown'}"
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


def known_subject(subject_id: SubjectId, store: StoreDep) -> str:
    """The path's subject id if the store knows it, else HTTP 404."""
    if not store.has_subject(subject_id):
        raise HTTPException(status_code=404, detail=f"unknown subject {subject_id!r}")
    return subject_id


#: A subject id that exists in the store (404 otherwise).
KnownSubject = Annotated[str, Depends(known_subject)]
