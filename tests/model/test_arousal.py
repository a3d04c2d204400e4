"""Arousal score: directions, mapping anchors, bounds, missing data and a real recording."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wearemo.model import BaselineConfig, PersonalBaseline, SubjectEstimator
from wearemo.model.arousal import (
    AROUSAL_FEATURES,
    ArousalConfig,
    ArousalFeature,
    arousal_score,
)

NAMES = [f.name for f in AROUSAL_FEATURES]
CARDIAC = [f.name for f in AROUSAL_FEATURES if f.group == "cardiac"]
EDA = [f.name for f in AROUSAL_FEATURES if f.group == "eda"]
LN4 = math.log(4.0)

# Five calibration windows per feature, spread wide enough that every robust spread is above
# its floor (so the anchors below are exact).
_LEVELS = {
    "hr_mean_bpm": (60.0, 80.0),
    "hrv_meannn_ms": (750.0, 1000.0),
    "hrv_sdnn_ms": (40.0, 80.0),
    "hrv_rmssd_ms": (30.0, 70.0),
    "hrv_pnn50_pct": (5.0, 25.0),
    "hrv_sd1_ms": (20.0, 50.0),
    "hrv_sd2_ms": (50.0, 100.0),
    "eda_scl_mean_uS": (1.0, 1.8),
    "eda_scr_rate_per_min": (0.0, 4.0),
    "eda_scr_amp_mean_uS": (0.02, 0.1),
    "eda_phasic_auc_uS_s": (0.1, 0.5),
    "temp_mean_degC": (32.0, 33.0),
    "acc_activity_g": (0.0, 0.02),
}


def _baseline() -> PersonalBaseline:
    b = PersonalBaseline(BaselineConfig(min_windows=5))
    rows = [{k: float(lo + (hi - lo) * j / 4) for k, (lo, hi) in _LEVELS.items()}
            for j in range(5)]
    b.calibrate(rows)
    return b


def _flat_baseline() -> PersonalBaseline:
    b = PersonalBaseline(BaselineConfig(min_windows=5))
    b.calibrate([{k: lo for k, (lo, _) in _LEVELS.items()} for _ in range(5)])
    return b


def _at(b: PersonalBaseline, z: float, names: list[str] = NAMES) -> dict[str, float]:
    """Inputs ``z`` robust SDs from the baseline in the arousal direction of each feature."""
    sign = {f.name: f.direction for f in AROUSAL_FEATURES}
    return {n: sign[n] * z * b.spreads[n.removeprefix("rel_")] for n in names}


@pytest.fixture(scope="module")
def base() -> PersonalBaseline:
    b = _baseline()
    for f in AROUSAL_FEATURES:  # the exact anchors below need spreads above the floors
        assert b.spreads[f.name.removeprefix("rel_")] > f.spread_floor
    return b


@pytest.mark.parametrize(("z", "expected"), [(0.0, 0.2), (1.0, 0.5), (2.0, 0.8),
                                             (-1.0, 1 / 17)])
def test_mapping_anchors(base: PersonalBaseline, z: float, expected: float) -> None:
    # Documented mapping: 1 / (1 + 4 ** -(z - 1)); baseline 0.2, +1 SD 0.5, +2 SD 0.8.
    assert arousal_score(_at(base, z), base) == pytest.approx(expected, abs=1e-12)


def test_custom_anchors(base: PersonalBaseline) -> None:
    cfg = ArousalConfig(rest_score=0.3, high_z=3.0, high_score=0.9)
    assert arousal_score(_at(base, 0.0), base, config=cfg) == pytest.approx(0.3, abs=1e-12)
    assert arousal_score(_at(base, 3.0), base, config=cfg) == pytest.approx(0.9, abs=1e-12)


@pytest.mark.parametrize("feature", AROUSAL_FEATURES, ids=lambda f: f.name)
def test_each_feature_moves_score_in_its_direction(
    base: PersonalBaseline, feature: ArousalFeature
) -> None:
    spread = base.spreads[feature.name.removeprefix("rel_")]
    rest = arousal_score({feature.name: 0.0}, base)
    up = arousal_score({feature.name: spread}, base)
    assert rest == pytest.approx(0.2)
    assert up is not None and rest is not None
    # One SD up alone in its group: composite +-1, i.e. 0.5 or 4**-2 / (1 + 4**-2).
    assert up == pytest.approx(0.5 if feature.direction == 1 else 1 / 17, abs=1e-12)


def test_physiological_directions(base: PersonalBaseline) -> None:
    rest = _at(base, 0.0)
    score = arousal_score(rest, base)
    assert score is not None
    for name, delta, rises in [("rel_hr_mean_bpm", 8.0, True),
                               ("rel_eda_scl_mean_uS", math.log(1.3), True),
                               ("rel_eda_scr_rate_per_min", 3.0, True),
                               ("rel_hrv_rmssd_ms", math.log(1.4), False),
                               ("rel_hrv_sdnn_ms", math.log(1.4), False),
                               ("rel_hrv_pnn50_pct", 10.0, False)]:
        moved = arousal_score({**rest, name: delta}, base)
        assert moved is not None
        assert (moved > score) is rises, name


def test_groups_have_equal_say_and_one_group_suffices(base: PersonalBaseline) -> None:
    # EDA alone at +2 SD: the composite is the EDA group mean (2) -> 0.8.
    assert arousal_score(_at(base, 2.0, EDA), base) == pytest.approx(0.8, abs=1e-12)
    assert arousal_score(_at(base, 2.0, CARDIAC), base) == pytest.approx(0.8, abs=1e-12)
    # Cardiac +2 SD, EDA at baseline: composite 1 -> 0.5, whatever the number of features.
    both = {**_at(base, 2.0, CARDIAC), **_at(base, 0.0, EDA[:1])}
    assert arousal_score(both, base) == pytest.approx(0.5, abs=1e-12)


def test_none_without_arousal_features(base: PersonalBaseline) -> None:
    assert arousal_score({}, base) is None
    assert arousal_score({"rel_temp_mean_degC": 2.0, "rel_acc_activity_g": 0.5,
                          "eda_scl_slope_uS_per_min": 0.3}, base) is None
    assert arousal_score({n: math.nan for n in NAMES}, base) is None
    assert arousal_score({"rel_hr_mean_bpm": math.inf}, base) is None
    # personal=False: the estimator hands raw levels under their own names, no deviations.
    raw = PersonalBaseline(BaselineConfig(personal=False))
    assert arousal_score(raw.relative({"hr_mean_bpm": 70.0, "eda_scl_mean_uS": 2.0}), raw) is None


def test_nan_inputs_are_ignored(base: PersonalBaseline) -> None:
    inputs = {"rel_hr_mean_bpm": 6.0, "rel_eda_scl_mean_uS": 0.1}
    with_nan = {**inputs, "rel_hrv_rmssd_ms": math.nan, "rel_eda_scr_rate_per_min": math.nan,
                "rel_hrv_sdnn_ms": -math.inf}
    assert arousal_score(with_nan, base) == arousal_score(inputs, base)


def test_flat_baseline_uses_floors() -> None:
    flat = _flat_baseline()
    assert all(v == 0.0 for v in flat.spreads.values())
    # HR floor 1 bpm: +1 bpm alone is one "SD" -> 0.5; an absurd deviation clips at 4 SD.
    assert arousal_score({"rel_hr_mean_bpm": 1.0}, flat) == pytest.approx(0.5, abs=1e-12)
    top = arousal_score({n: f.direction * 1e300 for n, f in zip(NAMES, AROUSAL_FEATURES,
                                                               strict=True)}, flat)
    assert top == pytest.approx(1 / (1 + 4.0**-3), abs=1e-12)
    bottom = arousal_score({n: -f.direction * 1e300 for n, f in zip(NAMES, AROUSAL_FEATURES,
                                                                   strict=True)}, flat)
    assert bottom == pytest.approx(1 / (1 + 4.0**5), abs=1e-12)


def test_feature_without_spread_uses_floor() -> None:
    b = PersonalBaseline(BaselineConfig(min_windows=2))
    b.calibrate([{"eda_scl_mean_uS": 1.0}, {"eda_scl_mean_uS": 1.2}])  # < 3 values: no spread
    assert "eda_scl_mean_uS" not in b.spreads
    floor = next(f.spread_floor for f in AROUSAL_FEATURES if f.name == "rel_eda_scl_mean_uS")
    assert arousal_score({"rel_eda_scl_mean_uS": floor}, b) == pytest.approx(0.5, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*NAMES, "rel_temp_mean_degC"]),
                       st.floats(allow_nan=True, allow_infinity=True)))
def test_score_is_bounded(values: dict[str, float]) -> None:
    for b in (_baseline(), _flat_baseline()):
        s = arousal_score(values, b)
        finite = any(math.isfinite(v) for k, v in values.items() if k in NAMES)
        assert (s is None) is (not finite)
        assert s is None or 0.0 <= s <= 1.0


def test_steep_custom_mapping_does_not_overflow(base: PersonalBaseline) -> None:
    cfg = ArousalConfig(rest_score=1e-300, high_z=1e-9, high_score=1 - 1e-16)
    assert arousal_score(_at(base, -4.0), base, config=cfg) == 0.0
    assert arousal_score(_at(base, 4.0), base, config=cfg) == 1.0


def test_config_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match="options: rel_hr_mean_bpm"):
        ArousalConfig(features=(ArousalFeature("hr_mean_bpm", "cardiac", 1, 1.0, 1.0),))
    with pytest.raises(ValueError, match="group"):
        ArousalConfig(features=(ArousalFeature("rel_hr_mean_bpm", "ecg", 1, 1.0, 1.0),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spread_floor"):
        ArousalConfig(features=(replace(AROUSAL_FEATURES[0], spread_floor=0.0),))
    with pytest.raises(ValueError, match="empty"):
        ArousalConfig(features=())
    with pytest.raises(ValueError, match="rest_score"):
        ArousalConfig(rest_score=0.9, high_score=0.8)


def test_cheap_enough_for_every_window(base: PersonalBaseline) -> None:
    inputs = {**_at(base, 0.7), "rel_temp_mean_degC": 0.1, "eda_scl_slope_uS_per_min": 0.0}
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        arousal_score(inputs, base)
    per_call_us = (time.perf_counter() - t0) / n * 1e6
    assert per_call_us < 50.0, per_call_us


def test_real_excerpt_stroop_above_first_rest() -> None:
    """Stress-Predict S02 (shipped excerpt): arousal during Stroop exceeds the first rest."""
    from wearemo.batch import DEFAULT_EXCERPT
    from wearemo.datasets import load_recording
    from wearemo.features import featurize_recording

    rec = load_recording(DEFAULT_EXCERPT)
    est = SubjectEstimator("S02")
    scores: dict[str, list[float]] = {"rest_first": [], "stroop": []}
    stroop_started = False
    for w in featurize_recording(rec):
        inputs, _ = est.assess(w)
        seg = rec.window_label(w.start_ns, w.end_ns, min_fraction=0.8)
        if seg is None or inputs is None:
            continue
        stroop_started |= seg.task == "stroop"
        key = seg.task if seg.task == "stroop" else None if stroop_started else "rest_first"
        if key is not None:
            a = arousal_score(inputs, est.baseline)
            assert a is not None
            scores[key].append(a)
    # 17 post-warm-up windows of the first rest and 68 Stroop windows (measured 0.37 vs 0.49).
    assert len(scores["rest_first"]) >= 10 and len(scores["stroop"]) >= 50
    assert np.mean(scores["stroop"]) > np.mean(scores["rest_first"]) + 0.05
