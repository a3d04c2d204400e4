"""Continuous arousal score (0..1) from EDA and cardiac features relative to the personal baseline.

Arousal here is sympathetic activation relative to the wearer's own resting level, read from the
baseline-relative model inputs ``rel_<feature>`` that :meth:`SubjectEstimator.assess
<wearemo.model.estimator.SubjectEstimator.assess>` returns. Each arousal-bearing input becomes a
robust z-score against the baseline's spread, is signed by its physiological direction under
sympathetic arousal, and the cardiac and electrodermal groups are averaged with equal say (a
wearable with only one of them still gets a score). A logistic maps the composite to 0..1 so
that the personal resting level reads 0.2, one robust SD above it 0.5 and two 0.8.

Nothing is fitted: the directions come from the literature and the weights, floors and mapping
were fixed a priori (see ``docs/arousal.md``), so a validation on labelled data is not circular.
It is cheap (a few microseconds, pure Python) and runs on every streamed window.

Example
-------
>>> from wearemo.model.baseline import BaselineConfig, PersonalBaseline
>>> b = PersonalBaseline(BaselineConfig(min_windows=3))
>>> b.calibrate([{"hr_mean_bpm": hr} for hr in (60.0, 62.0, 64.0, 66.0, 68.0)])
>>> round(arousal_score({"rel_hr_mean_bpm": 0.0}, b), 3)
0.2
>>> round(arousal_score({"rel_hr_mean_bpm": 2 * b.spreads["hr_mean_bpm"]}, b), 3)
0.8
>>> arousal_score({"rel_temp_mean_degC": 1.0}, b) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from wearemo.model.baseline import RELATIVE_FEATURES, PersonalBaseline
from wearemo.signals import SCR_MIN_AMPLITUDE_US

__all__ = ["AROUSAL_FEATURES", "ArousalConfig", "ArousalFeature", "arousal_score"]

Group = Literal["cardiac", "eda"]
_GROUPS: tuple[Group, ...] = ("cardiac", "eda")


@dataclass(frozen=True, slots=True)
class ArousalFeature:
    """One input of the arousal score.

    Attributes
    ----------
    name
        The baseline-relative input, ``rel_<feature>`` of
        :data:`~wearemo.model.baseline.RELATIVE_FEATURES`.
    group
        ``"cardiac"`` or ``"eda"``; the two groups get equal say in the composite.
    direction
        +1 when the feature rises under sympathetic arousal, -1 when it falls.
    weight
        Relative weight inside its group (> 0).
    spread_floor
        Smallest spread used for the z-score, in the units of the ``rel_`` deviation (log units
        for log-ratio features): keeps a flat baseline from turning noise into huge z-scores.
    """

    name: str
    group: Group
    direction: Literal[1, -1]
    weight: float
    spread_floor: float


#: The a-priori feature table: directions under sympathetic arousal with their sources (see
#: ``docs/arousal.md``), weights chosen for measurement robustness at the wrist, floors at the
#: smallest change the measurement resolves. RMSSD and SD1 are nearly the same quantity
#: (SD1 = RMSSD/sqrt(2) up to edge terms), so they share one weight.
AROUSAL_FEATURES: tuple[ArousalFeature, ...] = (
    # Cardiac: heart rate up, vagally mediated variability down (Task Force 1996; Shaffer &
    # Ginsberg 2017; Kim et al. 2018). HR carries half the cardiac weight: 60-s wrist-PPG HRV is
    # noisy and follows breathing (talking, paced or deep breathing raise it).
    ArousalFeature("rel_hr_mean_bpm", "cardiac", 1, 1.0, 1.0),  # bpm
    ArousalFeature("rel_hrv_rmssd_ms", "cardiac", -1, 0.25, 0.05),  # log ratio (5 %)
    ArousalFeature("rel_hrv_sd1_ms", "cardiac", -1, 0.25, 0.05),  # log ratio (5 %)
    ArousalFeature("rel_hrv_pnn50_pct", "cardiac", -1, 0.25, 2.0),  # percentage points
    ArousalFeature("rel_hrv_sdnn_ms", "cardiac", -1, 0.25, 0.05),  # log ratio (5 %)
    # Electrodermal: tonic level and non-specific SCR frequency up; SCR amplitude and phasic
    # area up (Boucsein 2012; Dawson et al. 2007). Level and frequency are the classic tonic
    # arousal indices, so they weigh twice amplitude and area (absent without SCRs / noisier).
    ArousalFeature("rel_eda_scl_mean_uS", "eda", 1, 1.0, 0.02),  # log ratio (2 %)
    ArousalFeature("rel_eda_scr_rate_per_min", "eda", 1, 1.0, 1.0),  # one SCR per minute
    ArousalFeature("rel_eda_scr_amp_mean_uS", "eda", 1, 0.5, SCR_MIN_AMPLITUDE_US),  # µS
    # One minimal SCR (detection threshold) held for about 5 s, µS·s.
    ArousalFeature("rel_eda_phasic_auc_uS_s", "eda", 1, 0.5, 5.0 * SCR_MIN_AMPLITUDE_US),
)


@dataclass(frozen=True, slots=True)
class ArousalConfig:
    """How the composite is formed and mapped to 0..1.

    The mapping is the logistic through two anchor points: composite z = 0 (the personal
    baseline) gives ``rest_score``, z = ``high_z`` gives ``high_score``. With the defaults,
    ``score = 1 / (1 + 4 ** -(z - 1))``: 0.2 at rest, 0.5 one robust SD above it, 0.8 two SD
    above, 0.06 one SD below.

    Attributes
    ----------
    features
        The inputs with direction, weight and spread floor.
    z_clip
        Each feature's z-score is clipped to ``±z_clip`` so one artefactual feature cannot
        dominate.
    rest_score, high_z, high_score
        The two anchors of the logistic (0 < rest_score < high_score < 1, high_z > 0).

    Example
    -------
    >>> ArousalConfig(rest_score=0.25).rest_score
    0.25
    """

    features: tuple[ArousalFeature, ...] = AROUSAL_FEATURES
    z_clip: float = 4.0
    rest_score: float = 0.2
    high_z: float = 2.0
    high_score: float = 0.8

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("ArousalConfig.features is empty")
        for f in self.features:
            base = f.name.removeprefix("rel_")
            if f.name == base or base not in RELATIVE_FEATURES:
                raise ValueError(
                    f"arousal feature {f.name!r} is not a baseline-relative input; options: "
                    f"{', '.join('rel_' + n for n in RELATIVE_FEATURES)}"
                )
            if f.group not in _GROUPS:
                raise ValueError(f"arousal feature {f.name!r}: group {f.group!r} not in {_GROUPS}")
            if f.direction not in (1, -1):
                raise ValueError(f"arousal feature {f.name!r}: direction must be +1 or -1")
            if not (f.weight > 0 and f.spread_floor > 0):
                raise ValueError(f"arousal feature {f.name!r}: weight and spread_floor must be > 0")
        if not self.z_clip > 0:
            raise ValueError(f"z_clip must be > 0, got {self.z_clip}")
        if not (0.0 < self.rest_score < self.high_score < 1.0 and self.high_z > 0):
            raise ValueError(
                "need 0 < rest_score < high_score < 1 and high_z > 0, got "
                f"rest_score={self.rest_score}, high_score={self.high_score}, high_z={self.high_z}"
            )


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


_DEFAULT = ArousalConfig()


def arousal_score(
    inputs: Mapping[str, float],
    baseline: PersonalBaseline,
    *,
    config: ArousalConfig = _DEFAULT,
) -> float | None:
    r"""Arousal (0..1) of one window relative to the wearer's personal baseline.

    .. math::

        z_i = \operatorname{clip}\big(d_i \, r_i / \max(s_i, f_i), \pm c\big), \quad
        \bar z_g = \frac{\sum_{i \in g} w_i z_i}{\sum_{i \in g} w_i}, \quad
        Z = \operatorname{mean}_{g\ \text{present}} \bar z_g, \quad
        A = \frac{1}{1 + e^{-(a + b Z)}}

    with ``r_i`` the ``rel_`` deviation, ``d_i`` its direction, ``s_i`` the baseline spread
    (1.4826 MAD), ``f_i`` the floor, ``c`` the clip, ``a = logit(rest_score)`` and
    ``b = (logit(high_score) - a) / high_z``. Non-finite inputs count as missing.

    Parameters
    ----------
    inputs
        Baseline-relative model inputs of one window (``SubjectEstimator.assess``); other keys
        are ignored.
    baseline
        The subject's :class:`PersonalBaseline` whose ``spreads`` scale the deviations (a
        feature without a spread uses its floor).
    config
        Feature table and mapping (default :data:`AROUSAL_FEATURES`, rest 0.2, +2 SD 0.8).

    Returns
    -------
    float or None
        The score in [0, 1], or None when the window has no finite arousal-bearing input
        (e.g. baseline still warming up, or only temperature and motion features).

    Example
    -------
    >>> from wearemo.model.baseline import BaselineConfig, PersonalBaseline
    >>> b = PersonalBaseline(BaselineConfig(min_windows=3))
    >>> b.calibrate([{"eda_scl_mean_uS": v} for v in (1.0, 1.1, 1.2)])
    >>> arousal_score({"rel_eda_scl_mean_uS": 0.3}, b) > 0.8
    True
    """
    spreads = baseline.spreads
    clip = config.z_clip
    sums = {"cardiac": 0.0, "eda": 0.0}
    weights = {"cardiac": 0.0, "eda": 0.0}
    for f in config.features:
        r = inputs.get(f.name)
        if r is None or not math.isfinite(r):
            continue
        s = spreads.get(f.name[4:], 0.0)
        scale = s if math.isfinite(s) and s > f.spread_floor else f.spread_floor
        z = f.direction * r / scale
        z = clip if z > clip else -clip if z < -clip else z
        sums[f.group] += f.weight * z
        weights[f.group] += f.weight
    groups = [sums[g] / weights[g] for g in _GROUPS if weights[g] > 0.0]
    if not groups:
        return None
    composite = sum(groups) / len(groups)
    a = _logit(config.rest_score)
    x = a + (_logit(config.high_score) - a) / config.high_z * composite
    if x >= 0.0:  # the two branches keep exp() from overflowing for steep custom mappings
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
