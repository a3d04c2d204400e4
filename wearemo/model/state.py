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

__all__ = ["StateEstimate", "StateLabel"]

StateLabel = Literal["stress", "non_stress", "withheld"]


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
    top_features: dict[str, float] = Field(default_factory=dict)
    arousal: float | None = Field(default=None, ge=0.0, le=1.0)
    affect: str | None = None
    affect_p: dict[str, float] = Field(default_factory=dict)
    valence: float | None = Field(default=None, ge=0.0, le=1.0)
    not_estimated: dict[str, str] = Field(default_factory=dict)
