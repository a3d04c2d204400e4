"""The state estimate: what the model stage hands to the store and the API.

Example
-------
>>> s = StateEstimate(subject_id="s1", window_start_ns=0, window_end_ns=60 * 10**9,
...                   state="withheld", p_stress=None, reason="warm-up", model_version="x")
>>> s.state
'withheld'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Contribution", "StateEstimate", "StateLabel"]

StateLabel = Literal["stress", "non_stress", "withheld"]


class Contribution(BaseModel):
    """One input's part in a stress estimate (an explanation line).

    ``deviation`` is the input as shown to people: percent change from the personal baseline
    for log-ratio inputs (HRV, skin conductance level), a difference in ``unit`` for the others,
    or the within-window slope. ``effect`` is how much ``p_stress`` would drop if only this
    input were back at the baseline (negative: it argues against stress).

    >>> Contribution(feature="rel_hrv_rmssd_ms", deviation=-38.0, unit="%", effect=0.12,
    ...              text="RMSSD 38% below your baseline").text
    'RMSSD 38% below your baseline'
    """

    model_config = ConfigDict(frozen=True)

    feature: str
    deviation: float
    unit: str
    effect: float
    text: str


class StateEstimate(BaseModel):
    """A subject's estimated state for the window ending at ``window_end_ns``.

    ``p_stress`` is the calibrated probability of stress; it is ``None`` exactly when
    ``state == "withheld"``, and ``reason`` then says why (poor signal, motion, warm-up,
    missing channels). ``model_version`` names the artifact that produced it.

    Beside stress: ``arousal`` is a continuous 0..1 arousal score relative to the personal
    baseline; ``affect`` / ``affect_p`` the most probable state and class probabilities of an
    affect model trained on a dataset's own label set (e.g. baseline / stress / amusement);
    ``valence`` the probability of high valence, only from a model trained on valence labels.
    An output the serving models cannot give is ``None`` and named in ``not_estimated`` with
    the reason, so "not estimated" is never confused with a value.

    ``variant`` names the model variant that scored the window (``full``, ``hr_eda``,
    ``cardiac``, ``eda``: which channels it was trained on); ``explanation`` lists the inputs
    with the largest effect on ``p_stress`` (``top_features`` gives the same inputs' deviations
    as a mapping).
    """

    model_config = ConfigDict(frozen=True)

    subject_id: str
    window_start_ns: int
    window_end_ns: int
    state: StateLabel
    p_stress: float | None = Field(default=None, ge=0.0, le=1.0)
    reason: str | None = None
    model_version: str
    channels_used: list[str] = Field(default_factory=list)
    variant: str | None = None
    top_features: dict[str, float] = Field(default_factory=dict)
    explanation: list[Contribution] = Field(default_factory=list)
    arousal: float | None = Field(default=None, ge=0.0, le=1.0)
    affect: str | None = None
    affect_p: dict[str, float] = Field(default_factory=dict)
    valence: float | None = Field(default=None, ge=0.0, le=1.0)
    not_estimated: dict[str, str] = Field(default_factory=dict)
