"""Per-subject alert rules, fired alerts, webhook deliveries and the self-care suggestion.

The logic lives in :mod:`wearemo.alerts`; these handlers only validate, look up and shape.
See ``docs/alerts.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field

from wearemo.alerts import AlertEngine, RuleRecord, RuleSpec, Suggestion, suggest
from wearemo.api.deps import AlertsDep, KnownSubject, StoreDep
from wearemo.api.schemas import ErrorResponse, ValidationResponse

__all__ = ["router"]

router = APIRouter(prefix="/v1/subjects", tags=["alerts"])

_NS = 1_000_000_000
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown subject or rule."}
}
_BAD_RULE: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    422: {"model": ValidationResponse,
          "description": "Invalid rule (the field is named, e.g. a non-http(s) url); nothing "
          "changed."},
}

RuleId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="Rule id.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most items returned, newest first.")]


class RuleOut(BaseModel):
    """A rule as stored (never its secret) with where it is in its episode."""

    id: str
    subject_id: str
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
    status: dict[str, Any] = Field(
        description="The rule's track: phase (idle, pending, firing), the current run and the "
        "reason of the last reset.")


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


def _out(rule: RuleRecord) -> dict[str, Any]:
    s = rule.spec
    return {
        "id": rule.id, "subject_id": rule.subject_id, "kind": s.kind, "url": str(s.url),
        "threshold": s.threshold, "duration_s": s.duration, "clear_below": s.clear_level,
        "max_gap_s": s.max_gap_s, "cooldown_s": s.cooldown_s, "enabled": s.enabled,
        "created_ns": rule.created_ns, "updated_ns": rule.updated_ns, "status": rule.track,
    }


def _own_rule(alerts: AlertEngine, subject_id: str, rule_id: str) -> RuleRecord:
    rule = alerts.db.rule(rule_id)
    if rule is None or rule.subject_id != subject_id:
        raise HTTPException(status_code=404,
                            detail=f"subject {subject_id!r} has no rule {rule_id!r}")
    return rule


@router.post("/{subject_id}/alerts/rules", status_code=201, responses=_BAD_RULE)
def create_rule(subject_id: KnownSubject, spec: RuleSpec, alerts: AlertsDep) -> RuleCreated:
    """Add an alert rule; the answer carries the webhook secret, the only time it is shown."""
    rule, secret = alerts.create_rule(subject_id, spec)
    return RuleCreated(**_out(rule), secret=secret)


@router.get("/{subject_id}/alerts/rules", responses=_NOT_FOUND)
def list_rules(subject_id: KnownSubject, alerts: AlertsDep) -> list[RuleOut]:
    """The subject's rules, oldest first."""
    return [RuleOut(**_out(r)) for r in alerts.db.rules(subject_id)]


@router.get("/{subject_id}/alerts/rules/{rule_id}", responses=_NOT_FOUND)
def get_rule(subject_id: KnownSubject, rule_id: RuleId, alerts: AlertsDep) -> RuleOut:
    """One rule and its current status."""
    return RuleOut(**_out(_own_rule(alerts, subject_id, rule_id)))


@router.put("/{subject_id}/alerts/rules/{rule_id}", responses=_BAD_RULE)
def replace_rule(
    subject_id: KnownSubject, rule_id: RuleId, spec: RuleSpec, alerts: AlertsDep
) -> RuleOut:
    """Replace a rule's settings; its episode starts afresh. Omit ``secret`` to keep it."""
    _own_rule(alerts, subject_id, rule_id)
    rule = alerts.replace_rule(rule_id, spec)
    if rule is None:  # deleted meanwhile
        raise HTTPException(status_code=404, detail=f"no rule {rule_id!r}")
    return RuleOut(**_out(rule))


@router.delete("/{subject_id}/alerts/rules/{rule_id}", status_code=204, responses=_NOT_FOUND)
def delete_rule(subject_id: KnownSubject, rule_id: RuleId, alerts: AlertsDep) -> Response:
    """Delete a rule; its undelivered webhooks are dropped, its fired alerts kept."""
    _own_rule(alerts, subject_id, rule_id)
    alerts.delete_rule(rule_id)
    return Response(status_code=204)


@router.get("/{subject_id}/alerts", responses=_NOT_FOUND)
def list_alerts(subject_id: KnownSubject, alerts: AlertsDep, limit: Limit = 100) -> list[AlertOut]:
    """Alerts fired for the subject, newest first."""
    return [AlertOut(**_fields(a)) for a in alerts.db.alerts(subject_id, limit=limit)]


@router.get("/{subject_id}/alerts/deliveries", responses=_NOT_FOUND)
def list_deliveries(
    subject_id: KnownSubject, alerts: AlertsDep, limit: Limit = 100
) -> list[DeliveryOut]:
    """Webhook deliveries for the subject's alerts with every attempt, newest first."""
    out = []
    for d in alerts.db.deliveries(subject_id, limit=limit):
        fields = _fields(d)
        fields["history"] = [AttemptOut(**_fields(a)) for a in d.history]
        out.append(DeliveryOut(**fields))
    return out


@router.get("/{subject_id}/suggestion", responses=_NOT_FOUND)
def suggestion(subject_id: KnownSubject, store: StoreDep, alerts: AlertsDep) -> Suggestion:
    """A self-care action to offer now (paced breathing) when stress has persisted, else
    ``none`` with the reason.

    Uses the subject's first enabled ``stress_sustained`` rule's threshold and duration, or
    the defaults (p_stress > 0.8 for 10 min). A wellness suggestion, not medical advice.
    """
    rules = [r.spec for r in alerts.db.rules(subject_id, kind="stress_sustained")
             if r.spec.enabled]
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
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "history"}
