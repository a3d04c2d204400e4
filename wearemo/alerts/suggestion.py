"""A self-care suggestion from a subject's recent states: paced breathing when stress persists.

The decision is the ``stress_sustained`` rule's own (:func:`~wearemo.alerts.rules.stress_step`
run over the recent states without cool-down): when the latest states form a run above the
threshold that has covered ``duration_s``, the suggestion is slow paced breathing at about six
breaths a minute for five minutes (resonance-frequency breathing, Lehrer & Gevirtz 2014;
slow-breathing review, Zaccaro et al. 2018; see ``docs/alerts.md``). Otherwise the answer is
``none`` with the reason. It is a wellness suggestion, not a medical device or advice.

Example
-------
>>> from wearemo.alerts.rules import _state
>>> spec = RuleSpec(kind="stress_sustained", url="http://h/x", duration_s=10)
>>> suggest("s1", [_state(t, 0.9) for t in (60, 65, 70)], spec).action
'paced_breathing'
>>> suggest("s1", [_state(60, 0.3)], spec).reason
'latest estimated p_stress 0.30 is not above 0.8'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from wearemo.alerts.rules import RuleSpec, StressTrack, stress_step
from wearemo.model import StateEstimate

__all__ = ["NOTICE", "StressWindow", "Suggestion", "suggest"]

NOTICE = ("A wellness suggestion from estimated states, not a diagnosis or medical advice; "
          "wearemo is not a medical device. Stop if you feel unwell.")

_NS = 1_000_000_000
BREATHS_PER_MIN = 6.0
EXERCISE_S = 300


class StressWindow(BaseModel):
    """The run of estimated states above the threshold behind a suggestion."""

    start_ns: int | None = Field(description="Window end of the run's first state.")
    end_ns: int | None = Field(description="Window end of the run's latest state.")
    covered_s: float = Field(description="Time under estimated states above the threshold.")
    needed_s: float = Field(description="The rule's duration_s.")
    threshold: float
    estimated_states: int
    withheld_states: int
    mean_p_stress: float | None
    peak_p_stress: float | None


class Suggestion(BaseModel):
    """``GET /v1/subjects/{id}/suggestion``: what an app may offer the wearer now."""

    subject_id: str
    action: Literal["paced_breathing", "none"]
    title: str | None = None
    instructions: str | None = None
    breaths_per_min: float | None = None
    duration_s: int | None = None
    reason: str
    window: StressWindow | None = None
    as_of_ns: int | None = Field(
        default=None, description="Window end of the latest state considered (compare with "
        "the current time to judge staleness).")
    notice: str = NOTICE


def suggest(subject_id: str, states: Sequence[StateEstimate], spec: RuleSpec) -> Suggestion:
    """The suggestion for ``states`` (oldest first, ending with the latest) under ``spec``.

    Example
    -------
    >>> suggest("s1", [], RuleSpec(kind="stress_sustained", url="http://h/x")).reason
    'no state yet'
    """
    if not states:
        return Suggestion(subject_id=subject_id, action="none", reason="no state yet")
    quiet = spec.model_copy(update={"cooldown_s": 0.0})
    track = StressTrack()
    for s in states:
        stress_step(quiet, track, s)
    latest = states[-1]
    window = StressWindow(
        start_ns=track.run_start_ns, end_ns=track.last_high_ns, covered_s=track.covered_ns / _NS,
        needed_s=spec.duration, threshold=spec.threshold, estimated_states=track.estimated,
        withheld_states=track.withheld,
        mean_p_stress=round(track.p_sum / track.estimated, 4) if track.estimated else None,
        peak_p_stress=round(track.p_peak, 4) if track.estimated else None,
    )
    as_of = latest.window_end_ns
    if track.phase == "firing":
        minutes = window.covered_s / 60
        return Suggestion(
            subject_id=subject_id, as_of_ns=as_of, action="paced_breathing",
            title="Paced breathing",
            instructions="Sit comfortably and breathe slowly: in through the nose for about 4 s, "
            "out for about 6 s (about 6 breaths a minute), for 5 minutes.",
            breaths_per_min=BREATHS_PER_MIN, duration_s=EXERCISE_S,
            reason=f"estimated p_stress above {spec.threshold:g} for {minutes:.1f} min "
            f"(mean {window.mean_p_stress:.2f}, latest "
            f"{'withheld' if latest.p_stress is None else f'{latest.p_stress:.2f}'})",
            window=window)
    if track.phase == "pending":
        reason = (f"p_stress above {spec.threshold:g} for {window.covered_s / 60:.1f} of the "
                  f"{spec.duration / 60:.1f} min needed")
    elif latest.p_stress is None:
        reason = f"the latest state is withheld ({latest.reason})"
    elif track.last_reset and track.last_reset.startswith("no estimated state"):
        reason = track.last_reset
    else:
        reason = f"latest estimated p_stress {latest.p_stress:.2f} is not above {spec.threshold:g}"
    return Suggestion(subject_id=subject_id, as_of_ns=as_of, action="none", reason=reason,
                      window=window if track.phase == "pending" else None)
