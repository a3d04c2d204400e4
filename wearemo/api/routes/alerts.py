"""Alert rules of subjects and cohorts, fired alerts, webhook deliveries and the self-care
suggestion.

The logic lives in :mod:`wearemo.alerts`; these handlers only validate, look up and shape.
Rule URLs are refused (422 on ``url``) when they point at a non-public address that is not
allow-listed, and shown with their credentials redacted to every key but an admin's. See
``docs/alerts.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, Security
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from wearemo.alerts import (
    AlertEngine,
    DestinationRefusedError,
    RuleRecord,
    RuleSpec,
    Suggestion,
    redact_url,
    suggest,
)
from wearemo.api.auth import Principal
from wearemo.api.deps import (
    AlertableCohort,
    AlertableSubject,
    AlertsDep,
    EnrolledSubject,
    KnownSubject,
    ReadableCohort,
    StoreDep,
    authenticate,
)
from wearemo.api.schemas import ErrorResponse, ValidationResponse

__all__ = ["cohort_router", "router"]

router = APIRouter(prefix="/v1/subjects", tags=["alerts"])
#: Rules of a cohort: they apply to every current and future member.
cohort_router = APIRouter(prefix="/v1/cohorts", tags=["alerts"])

# The caller, for showing rule URLs in full (admin) or redacted; the same scopes as the
# subject / cohort dependency of each route, so the key is checked once per request.
_Reader = Annotated[Principal, Security(authenticate, scopes=["subjects:read"])]
_Writer = Annotated[Principal, Security(authenticate, scopes=["alerts:write"])]

_NS = 1_000_000_000
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown subject, cohort or rule."}
}
_BAD_RULE: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    422: {"model": ValidationResponse,
          "description": "Invalid rule (the field is named, e.g. a non-http(s) url, or one "
          "pointing at a non-public address that is not allow-listed); nothing changed."},
}

RuleId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Rule id.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most items returned, newest first.")]


class RuleOut(BaseModel):
    """A rule as stored (never its secret) with where it is in its episode.

    ``url`` is shown in full to admin keys only; other keys see its user info and query
    values as ``***``.
    """

    id: str
    subject_id: str | None = Field(description="The subject of a subject's rule.")
    cohort: str | None = Field(default=None, description="The cohort of a cohort's rule.")
    kind: Literal["stress_sustained", "no_data"]
    url: str
    threshold: float
    duration_s: float
    clear_below: float
    max_gap_s: float
    cooldown_s: float
    enabled: bool
    created_ns: int
    updated_ns: int
    status: dict[str, Any] | None = Field(
        description="A subject rule's track: phase (idle, pending, firing), the current run "
        "and the reason of the last reset (null for a cohort rule: see members).")
    members: dict[str, dict[str, Any]] | None = Field(
        default=None, description="A cohort rule's track for each current member.")


class RuleCreated(RuleOut):
    """``POST`` answer: the rule and, this once, its webhook secret."""

    secret: str = Field(description="HMAC key of the Wearemo-Signature header; shown only now.")


class AlertOut(BaseModel):
    """A fired alert; ``resolved_ns`` is set once its episode ended."""

    id: str
    rule_id: str
    subject_id: str
    kind: str
    fired_ns: int = Field(description="Window end (stress) or wall time (no data) of firing.")
    created_ns: int
    reason: str
    detail: dict[str, Any]
    resolved_ns: int | None
    resolved_reason: str | None


class AttemptOut(BaseModel):
    """One try of a delivery."""

    attempt: int
    started_ns: int
    duration_ms: float
    status_code: int | None
    error: str | None
    next_retry_ns: int | None


class DeliveryOut(BaseModel):
    """A webhook delivery: its status, every attempt and the next retry."""

    id: str
    alert_id: str
    rule_id: str
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_ns: int | None
    created_ns: int
    finished_ns: int | None
    last_status_code: int | None
    last_error: str | None
    history: list[AttemptOut]


def _url(url: str, principal: Principal) -> str:
    # A rule URL may carry the receiver's credentials (user info, a token in the query): in
    # full for admins only, not for the device and reader keys that may read the rule.
    return url if principal.role == "admin" else redact_url(url)


def _out(rule: RuleRecord, principal: Principal, alerts: AlertEngine) -> dict[str, Any]:
    s = rule.spec
    return {
        "id": rule.id, "subject_id": rule.subject_id, "cohort": rule.cohort, "kind": s.kind,
        "url": _url(str(s.url), principal),
        "threshold": s.threshold, "duration_s": s.duration, "clear_below": s.clear_level,
        "max_gap_s": s.max_gap_s, "cooldown_s": s.cooldown_s, "enabled": s.enabled,
        "created_ns": rule.created_ns, "updated_ns": rule.updated_ns,
        "status": rule.track if rule.cohort is None else None,
        "members": None if rule.cohort is None else alerts.member_status(rule),
    }


def _refused(exc: DestinationRefusedError) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", "url"),
                                    "msg": f"url: {exc}"}])


def _own_rule(alerts: AlertEngine, subject_id: str, rule_id: str) -> RuleRecord:
    rule = alerts.db.rule(rule_id)
    if rule is None or rule.subject_id != subject_id:
        raise HTTPException(status_code=404,
                            detail=f"subject {subject_id!r} has no rule {rule_id!r}")
    return rule


def _cohort_rule(alerts: AlertEngine, cohort: str, rule_id: str) -> RuleRecord:
    rule = alerts.db.rule(rule_id)
    if rule is None or rule.cohort != cohort:
        raise HTTPException(status_code=404, detail=f"cohort {cohort!r} has no rule {rule_id!r}")
    return rule


@router.post("/{subject_id}/alerts/rules", status_code=201, responses=_BAD_RULE)
def create_rule(
    subject_id: AlertableSubject, spec: RuleSpec, alerts: AlertsDep, principal: _Writer
) -> RuleCreated:
    """Add an alert rule; the answer carries the webhook secret, the only time it is shown.

    The subject may have no data yet (it is enrolled: in a cohort or granted to a device key).
    """
    try:
        rule, secret = alerts.create_rule(subject_id, spec)
    except DestinationRefusedError as exc:
        raise _refused(exc) from None
    return RuleCreated(**_out(rule, principal, alerts), secret=secret)


@router.get("/{subject_id}/alerts/rules", responses=_NOT_FOUND)
def list_rules(
    subject_id: EnrolledSubject, alerts: AlertsDep, principal: _Reader
) -> list[RuleOut]:
    """The subject's own rules, oldest first (its cohorts' rules: ``/v1/cohorts/…``)."""
    return [RuleOut(**_out(r, principal, alerts)) for r in alerts.db.rules(subject_id)]


@router.get("/{subject_id}/alerts/rules/{rule_id}", responses=_NOT_FOUND)
def get_rule(
    subject_id: EnrolledSubject, rule_id: RuleId, alerts: AlertsDep, principal: _Reader
) -> RuleOut:
    """One rule and its current status."""
    return RuleOut(**_out(_own_rule(alerts, subject_id, rule_id), principal, alerts))


@router.put("/{subject_id}/alerts/rules/{rule_id}", responses=_BAD_RULE)
def replace_rule(
    subject_id: AlertableSubject, rule_id: RuleId, spec: RuleSpec, alerts: AlertsDep,
    principal: _Writer,
) -> RuleOut:
    """Replace a rule's settings; its episode starts afresh. Omit ``secret`` to keep it."""
    _own_rule(alerts, subject_id, rule_id)
    return _replace(alerts, rule_id, spec, principal)


def _replace(alerts: AlertEngine, rule_id: str, spec: RuleSpec, principal: Principal) -> RuleOut:
    try:
        rule = alerts.replace_rule(rule_id, spec)
    except DestinationRefusedError as exc:
        raise _refused(exc) from None
    if rule is None:  # deleted meanwhile
        raise HTTPException(status_code=404, detail=f"no rule {rule_id!r}")
    return RuleOut(**_out(rule, principal, alerts))


@router.delete("/{subject_id}/alerts/rules/{rule_id}", status_code=204, responses=_NOT_FOUND)
def delete_rule(subject_id: AlertableSubject, rule_id: RuleId, alerts: AlertsDep) -> Response:
    """Delete a rule; its undelivered webhooks are dropped, its fired alerts kept."""
    _own_rule(alerts, subject_id, rule_id)
    alerts.delete_rule(rule_id)
    return Response(status_code=204)


@router.get("/{subject_id}/alerts", responses=_NOT_FOUND)
def list_alerts(
    subject_id: EnrolledSubject, alerts: AlertsDep, limit: Limit = 100
) -> list[AlertOut]:
    """Alerts fired for the subject (by its own rules and its cohorts'), newest first."""
    return [AlertOut(**_fields(a)) for a in alerts.db.alerts(subject_id, limit=limit)]


@router.get("/{subject_id}/alerts/deliveries", responses=_NOT_FOUND)
def list_deliveries(
    subject_id: EnrolledSubject, alerts: AlertsDep, principal: _Reader, limit: Limit = 100
) -> list[DeliveryOut]:
    """Webhook deliveries for the subject's alerts with every attempt, newest first."""
    out = []
    for d in alerts.db.deliveries(subject_id, limit=limit):
        fields = _fields(d)
        fields["url"] = _url(d.url, principal)
        fields["history"] = [AttemptOut(**_fields(a)) for a in d.history]
        out.append(DeliveryOut(**fields))
    return out


@cohort_router.post("/{cohort}/alerts/rules", status_code=201, responses=_BAD_RULE)
def create_cohort_rule(
    cohort: AlertableCohort, spec: RuleSpec, alerts: AlertsDep, principal: _Writer
) -> RuleCreated:
    """Add a rule for every current and future member of the cohort; the answer carries the
    webhook secret, the only time it is shown. Its alerts are listed per member
    (``/v1/subjects/{id}/alerts``)."""
    try:
        rule, secret = alerts.create_cohort_rule(cohort, spec)
    except DestinationRefusedError as exc:
        raise _refused(exc) from None
    return RuleCreated(**_out(rule, principal, alerts), secret=secret)


@cohort_router.get("/{cohort}/alerts/rules", responses=_NOT_FOUND)
def list_cohort_rules(
    cohort: ReadableCohort, alerts: AlertsDep, principal: _Reader
) -> list[RuleOut]:
    """The cohort's rules, oldest first, with each member's status."""
    return [RuleOut(**_out(r, principal, alerts)) for r in alerts.db.cohort_rules([cohort])]


@cohort_router.get("/{cohort}/alerts/rules/{rule_id}", responses=_NOT_FOUND)
def get_cohort_rule(
    cohort: ReadableCohort, rule_id: RuleId, alerts: AlertsDep, principal: _Reader
) -> RuleOut:
    """One cohort rule and each member's status."""
    return RuleOut(**_out(_cohort_rule(alerts, cohort, rule_id), principal, alerts))


@cohort_router.put("/{cohort}/alerts/rules/{rule_id}", responses=_BAD_RULE)
def replace_cohort_rule(
    cohort: AlertableCohort, rule_id: RuleId, spec: RuleSpec, alerts: AlertsDep,
    principal: _Writer,
) -> RuleOut:
    """Replace a cohort rule's settings; every member's episode starts afresh."""
    _cohort_rule(alerts, cohort, rule_id)
    return _replace(alerts, rule_id, spec, principal)


@cohort_router.delete("/{cohort}/alerts/rules/{rule_id}", status_code=204,
                      responses=_NOT_FOUND)
def delete_cohort_rule(cohort: AlertableCohort, rule_id: RuleId, alerts: AlertsDep) -> Response:
    """Delete a cohort rule; its undelivered webhooks are dropped, its fired alerts kept."""
    _cohort_rule(alerts, cohort, rule_id)
    alerts.delete_rule(rule_id)
    return Response(status_code=204)


@router.get("/{subject_id}/suggestion", responses=_NOT_FOUND)
def suggestion(subject_id: KnownSubject, store: StoreDep, alerts: AlertsDep) -> Suggestion:
    """A self-care action to offer now (paced breathing) when stress has persisted, else
    ``none`` with the reason.

    Uses the first enabled ``stress_sustained`` rule of the subject (or else of its cohorts)
    for threshold and duration, or the defaults (p_stress > 0.8 for 10 min). A wellness
    suggestion, not medical advice.
    """
    own = alerts.db.rules(subject_id, kind="stress_sustained")
    cohorts = alerts.db.cohort_rules(list(alerts.cohorts_of(subject_id)),
                                     kind="stress_sustained")
    rules = [r.spec for r in own + cohorts if r.spec.enabled]
    # Defaults without a webhook target: only the evaluation settings matter here.
    spec = rules[0] if rules else RuleSpec.model_construct(kind="stress_sustained")
    latest = store.latest_state(subject_id)
    if latest is None:
        return suggest(subject_id, [], spec)
    lookback_ns = int((2 * spec.duration + spec.max_gap_s) * _NS)
    states = store.states(subject_id, start_ns=max(latest.window_end_ns - lookback_ns, 0),
                          limit=100_000)
    return suggest(subject_id, states, spec)


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if f.name not in ("history", "dest")}
