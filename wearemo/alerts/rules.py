"""Alert rules and their evaluation: ``stress_sustained`` over states, ``no_data`` over time.

A rule is evaluated by a small state machine whose state (a *track*) is persisted with the rule,
so an episode survives a restart. Evaluation is pure: :func:`stress_step` and
:func:`no_data_step` take the rule, its track and the new input, update the track in place and
return the events (``fired`` / ``resolved``) to record and deliver.

``stress_sustained`` (times are the states' window ends, i.e. the recording's clock):

* an *estimated* state with ``p_stress > threshold`` starts a run or extends it; the run's
  covered time grows by the time since the previous state when that state was an estimated
  one above the threshold too (time under withheld states is not counted);
* a *withheld* state neither fires nor resets: it pauses the run (counted in ``withheld``);
* the run resets, with the reason recorded in ``last_reset``, on an estimated state at or below
  the threshold, or when no estimated state above it came for more than ``max_gap_s``
  (withheld or missing data);
* the rule fires once the covered time reaches ``duration_s``, at most once per episode and not
  within ``cooldown_s`` of its previous firing (a run in its cool-down waits, then fires);
* a firing episode stays open while estimated states stay at or above ``clear_below``
  (hysteresis) and resolves on one below it or after a gap longer than ``max_gap_s``.

``no_data`` (wall clock): fires when the subject's newest stored sample has not changed for
``duration_s``; resolves when data arrives again.

Example
-------
>>> rule = RuleSpec(kind="stress_sustained", url="https://example.org/hook", duration_s=10)
>>> track = StressTrack()
>>> events = [stress_step(rule, track, _state(t, 0.9)) for t in (60, 65, 70)]
>>> [e.kind for batch in events for e in batch], track.phase
(['fired'], 'firing')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StrictBool, StrictFloat, model_validator

from wearemo.model import StateEstimate

__all__ = [
    "Event",
    "NoDataTrack",
    "RuleKind",
    "RuleSpec",
    "StressTrack",
    "no_data_step",
    "stress_step",
]

RuleKind = Literal["stress_sustained", "no_data"]

_NS = 1_000_000_000
_WEEK_S = 7 * 24 * 3600.0
DEFAULT_DURATION_S: dict[str, float] = {"stress_sustained": 600.0, "no_data": 1800.0}


_MAX_URL = 2083


class RuleSpec(BaseModel):
    """What a client sets for a rule (``POST``/``PUT .../alerts/rules``).

    ``threshold``, ``clear_below`` and ``max_gap_s`` apply to ``stress_sustained`` only;
    ``duration_s`` defaults to 600 s (stress) or 1800 s (no data). ``secret`` signs the
    webhooks: omit it to have one generated; it is returned once, at creation.
    """

    # Strict numbers and flags: lax mode took false as 0 s and 0 as "disabled".
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"kind": "stress_sustained", "url": "https://alerts.example.org/wearemo",
         "threshold": 0.8, "duration_s": 600.0, "cooldown_s": 1800.0}]})

    kind: RuleKind
    url: HttpUrl = Field(description="Webhook target; http or https only.")
    secret: str | None = Field(
        default=None, min_length=16, max_length=256,
        description="HMAC-SHA256 key for the signature (write-only; generated when omitted).",
    )
    threshold: StrictFloat = Field(default=0.8, gt=0.0, lt=1.0,
                             description="p_stress must be above this (stress_sustained).")
    duration_s: StrictFloat | None = Field(
        default=None, gt=0.0, le=_WEEK_S,
        description="Sustained stress / silence needed to fire, seconds.",
    )
    clear_below: StrictFloat | None = Field(
        default=None, ge=0.0, lt=1.0,
        description="A firing episode ends on an estimated p_stress below this "
        "(default threshold - 0.1).",
    )
    max_gap_s: StrictFloat = Field(
        default=120.0, gt=0.0, le=_WEEK_S,
        description="Longest stretch without an estimated state above the threshold (withheld "
        "or missing) before a run resets, seconds.",
    )
    cooldown_s: StrictFloat = Field(default=1800.0, ge=0.0, le=_WEEK_S,
                              description="Least time between two firings of the rule, seconds.")
    enabled: StrictBool = True

    @model_validator(mode="after")
    def _check(self) -> RuleSpec:
        # HttpUrl limits its *input* to 2083 characters but normalises it (a trailing "/",
        # percent-escapes), and a stored rule is read back through this model: a longer
        # normalised URL made the rule unreadable (every GET of the subject's rules a 500).
        if len(str(self.url)) > _MAX_URL:
            raise ValueError(f"url: longer than {_MAX_URL} characters once normalised")
        if self.clear_below is not None and self.clear_below >= self.threshold:
            raise ValueError(
                f"clear_below: {self.clear_below} must be below threshold ({self.threshold})"
            )
        return self

    @property
    def duration(self) -> float:
        """``duration_s`` or the kind's default, seconds."""
        return self.duration_s if self.duration_s is not None else DEFAULT_DURATION_S[self.kind]

    @property
    def clear_level(self) -> float:
        """p_stress below which a firing episode ends."""
        return self.clear_below if self.clear_below is not None else max(self.threshold - 0.1, 0)


@dataclass(frozen=True, slots=True)
class Event:
    """A rule's transition: ``fired`` (deliver an alert) or ``resolved`` (the episode ended).

    ``at_ns`` is the window end (stress) or wall-clock time (no data) of the transition.
    """

    kind: Literal["fired", "resolved"]
    at_ns: int
    reason: str
    detail: dict[str, Any]


@dataclass(slots=True)
class StressTrack:
    """Where a ``stress_sustained`` rule is in its episode (persisted as JSON)."""

    phase: Literal["idle", "pending", "firing"] = "idle"
    run_start_ns: int | None = None
    last_high_ns: int | None = None
    last_seen_ns: int | None = None
    covered_ns: int = 0
    paused: bool = False
    withheld: int = 0
    estimated: int = 0
    p_sum: float = 0.0
    p_peak: float = 0.0
    last_fired_ns: int | None = None
    last_reset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The run as reported in alerts and suggestions."""
        return {
            "run_start_ns": self.run_start_ns,
            "run_end_ns": self.last_high_ns,
            "covered_s": self.covered_ns / _NS,
            "estimated_states": self.estimated,
            "withheld_states": self.withheld,
            "mean_p_stress": round(self.p_sum / self.estimated, 4) if self.estimated else None,
            "peak_p_stress": round(self.p_peak, 4) if self.estimated else None,
        }


@dataclass(slots=True)
class NoDataTrack:
    """Where a ``no_data`` rule is (persisted as JSON)."""

    phase: Literal["idle", "firing"] = "idle"
    last_sample_ns: int | None = None
    last_change_wall_ns: int | None = None
    last_fired_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


def _end_run(track: StressTrack, at_ns: int, reason: str) -> list[Event]:
    events = []
    if track.phase == "firing":
        events.append(Event("resolved", at_ns, reason, track.summary()))
    track.phase = "idle"
    track.last_reset = reason
    return events


def _start_run(track: StressTrack, t: int, p: float) -> None:
    track.phase = "pending"
    track.run_start_ns = track.last_high_ns = t
    track.covered_ns = 0
    track.paused = False
    track.withheld = 0
    track.estimated = 1
    track.p_sum = track.p_peak = p


def stress_step(rule: RuleSpec, track: StressTrack, state: StateEstimate) -> list[Event]:
    """Advance a ``stress_sustained`` rule by one state (in window order); return its events.

    States at or before the last one seen are ignored (a re-emitted window after a restart).

    Example
    -------
    >>> rule = RuleSpec(kind="stress_sustained", url="http://h/x", duration_s=5)
    >>> t = StressTrack()
    >>> [len(stress_step(rule, t, _state(s, p))) for s, p in ((60, 0.9), (65, 0.95))]
    [0, 1]
    >>> t.phase, stress_step(rule, t, _state(70, 0.3))[0].kind, t.phase
    ('firing', 'resolved', 'idle')
    """
    t = state.window_end_ns
    if track.last_seen_ns is not None and t <= track.last_seen_ns:
        return []
    track.last_seen_ns = t
    events: list[Event] = []
    gap_ns = int(rule.max_gap_s * _NS)
    if track.phase != "idle" and track.last_high_ns is not None and t - track.last_high_ns > gap_ns:
        what = "withheld" if state.p_stress is None else "missing"
        events += _end_run(
            track, t, f"no estimated state above the threshold for "
            f"{(t - track.last_high_ns) / _NS:.0f} s (max_gap_s {rule.max_gap_s:g}; {what})")
    p = state.p_stress
    if p is None:  # withheld: pause, never fire, never reset by itself
        if track.phase != "idle":
            track.withheld += 1
            track.paused = True
        return events
    if track.phase == "firing":
        if p < rule.clear_level:
            return events + _end_run(
                track, t, f"p_stress {p:.2f} below clear_below {rule.clear_level:.2f}")
        if p > rule.threshold:
            _extend(track, t, p)
        else:  # in the hysteresis band: the episode goes on, its covered time does not
            track.last_high_ns = t
            track.paused = True
        return events
    if p <= rule.threshold:
        if track.phase == "pending":
            events += _end_run(track, t, f"p_stress {p:.2f} at or below threshold "
                                         f"{rule.threshold:.2f}")
        return events
    if track.phase == "idle":
        _start_run(track, t, p)
    else:
        _extend(track, t, p)
    cooled = (track.last_fired_ns is None
              or t - track.last_fired_ns >= int(rule.cooldown_s * _NS))
    if track.covered_ns >= int(rule.duration * _NS) and cooled:
        track.phase = "firing"
        track.last_fired_ns = t
        detail = {**track.summary(), "window_end_ns": t, "p_stress": p,
                  "threshold": rule.threshold, "duration_s": rule.duration}
        events.append(Event(
            "fired", t, f"p_stress above {rule.threshold:g} for {track.covered_ns / _NS:.0f} s "
            f"of estimated states (latest {p:.2f})", detail))
    return events


def _extend(track: StressTrack, t: int, p: float) -> None:
    assert track.last_high_ns is not None
    if not track.paused:
        track.covered_ns += t - track.last_high_ns
    track.paused = False
    track.last_high_ns = t
    track.estimated += 1
    track.p_sum += p
    track.p_peak = max(track.p_peak, p)


def no_data_step(
    rule: RuleSpec, track: NoDataTrack, *, latest_sample_ns: int | None, now_ns: int
) -> list[Event]:
    """Check a ``no_data`` rule at wall time ``now_ns``; return its events.

    ``latest_sample_ns`` is the newest stored sample of the subject (any channel). Silence is
    counted on the wall clock from the last time that value changed (or from the rule's first
    check), so replayed recordings with old timestamps are judged by when they arrive.

    Example
    -------
    >>> rule = RuleSpec(kind="no_data", url="http://h/x", duration_s=60)
    >>> t = NoDataTrack()
    >>> no_data_step(rule, t, latest_sample_ns=5, now_ns=0)
    []
    >>> [e.kind for e in no_data_step(rule, t, latest_sample_ns=5, now_ns=61 * 10**9)]
    ['fired']
    >>> [e.kind for e in no_data_step(rule, t, latest_sample_ns=9, now_ns=62 * 10**9)]
    ['resolved']
    """
    if track.last_change_wall_ns is None or latest_sample_ns != track.last_sample_ns:
        first = track.last_change_wall_ns is None
        track.last_sample_ns = latest_sample_ns
        track.last_change_wall_ns = now_ns
        if track.phase == "firing" and not first:
            track.phase = "idle"
            return [Event("resolved", now_ns, "data arrived again",
                          {"latest_sample_ns": latest_sample_ns})]
        return []
    silent_ns = now_ns - track.last_change_wall_ns
    if track.phase == "idle" and silent_ns >= int(rule.duration * _NS):
        track.phase = "firing"
        track.last_fired_ns = now_ns
        return [Event("fired", now_ns, f"no new sample for {silent_ns / _NS:.0f} s",
                      {"latest_sample_ns": latest_sample_ns, "silent_s": silent_ns / _NS,
                       "duration_s": rule.duration})]
    return []


def _state(end_s: float, p: float | None) -> StateEstimate:
    """A state ending ``end_s`` seconds after the epoch (doctest helper)."""
    return StateEstimate(
        subject_id="doc", window_start_ns=int((end_s - 60) * _NS), window_end_ns=int(end_s * _NS),
        state="withheld" if p is None else ("stress" if p >= 0.5 else "non_stress"),
        p_stress=p, reason="warm-up" if p is None else None, model_version="doc")
