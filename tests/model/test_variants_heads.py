"""Channel variants, explanations, and affect / valence heads trained on a dataset's own labels.

The synthetic cohort: each person has their own resting heart rate and skin-conductance level
(only changes from the personal baseline carry the state, as in real data). Three affect states
follow a rest: ``stress`` raises heart rate and skin conductance and lowers RMSSD; ``amusement``
raises skin conductance only (arousal without the cardiac stress response); valence ratings are
low under stress and high under amusement.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from wearemo.features.window import FeatureWindow
from wearemo.model import BaselineConfig, StressModel
from wearemo.model.classifier import StressClassifier
from wearemo.model.train import LabelledWindows, fit_model, loso_evaluate

S = 10**9
BASE = BaselineConfig(warmup_s=120, min_windows=10)


def fast(seed: int) -> StressClassifier:
    """A small calibrated classifier: these tests are about routing and heads, not the search
    (tests/model/test_selection.py covers it), and must stay quick on 2 cores."""
    return StressClassifier(max_iter=60, calibration_folds=3, random_state=seed)

# affect per 5-min block after the first rest, and the valence rating (9-point SAM) of each
BLOCKS = [("baseline", 5.0), ("stress", 2.0), ("baseline", 5.0), ("amusement", 8.0)]


def _person(subject: str, rng: np.random.Generator) -> LabelledWindows:
    hr0, scl0 = rng.uniform(55, 85), rng.uniform(0.5, 8.0)
    windows, labels, valence = [], [], []
    for k in range(120):  # 20 min, a window every 10 s
        t = 60 + 10 * k
        label, rating = BLOCKS[min(k // 30, 3)]
        hr = hr0 + (15 if label == "stress" else 0) + rng.normal(0, 2.0)
        scl = scl0 * (1.3 if label in ("stress", "amusement") else 1.0) * math.exp(
            rng.normal(0, 0.04))
        rmssd = 40 * (0.7 if label == "stress" else 1.0) * math.exp(rng.normal(0, 0.1))
        windows.append(FeatureWindow(
            subject_id=subject, start_ns=(t - 60) * S, end_ns=t * S,
            features={"hr_mean_bpm": hr, "hr_device_mean_bpm": hr + rng.normal(0, 1.0),
                      "hrv_rmssd_ms": rmssd, "eda_scl_mean_uS": scl},
            coverage={"ppg": 1.0, "eda": 1.0, "acc": 1.0, "temp": 1.0, "hr": 1.0},
            quality={"ppg": 0.9}, beat_source="ppg", n_beats=70,
        ))
        labels.append(label)
        valence.append(rating)
    return LabelledWindows(subject, windows, labels, ["task"] * 120, [True] * 120, valence)


@pytest.fixture(scope="module")
def cohort() -> list[LabelledWindows]:
    rng = np.random.default_rng(11)
    return [_person(f"p{i:02d}", rng) for i in range(6)]


@pytest.fixture(scope="module")
def stress_model(cohort: list[LabelledWindows]) -> StressModel:
    return fit_model(cohort, baseline=BASE, make=fast)


def _drop(w: FeatureWindow, *, prefixes: tuple[str, ...] = (), **change: object) -> FeatureWindow:
    fields = {f: getattr(w, f) for f in w.__slots__}  # type: ignore[attr-defined]
    fields["features"] = {k: v for k, v in w.features.items() if not k.startswith(prefixes)}
    return FeatureWindow(**(fields | change))  # type: ignore[arg-type]


def test_each_channel_set_gets_the_variant_trained_on_it(
    cohort: list[LabelledWindows], stress_model: StressModel
) -> None:
    assert [v.spec.name for v in stress_model.variants] == ["full", "hr_eda", "cardiac", "eda"]
    est = stress_model.for_subject("new")
    person = cohort[0].windows
    for w in person[:14]:
        est.update(w)
    stress_window = person[40]  # inside the stress block
    cases = {
        "full": (stress_window, {"ppg", "eda"}),
        # a wristband with its own heart rate and EDA but no beat-to-beat data
        "hr_eda": (_drop(stress_window, prefixes=("hr_mean", "hrv_"), beat_source="none",
                         n_beats=0), {"hr", "eda"}),
        # a chest strap: beats, no EDA
        "cardiac": (_drop(stress_window, prefixes=("eda_",),
                          coverage={"ppg": 1.0, "acc": 1.0, "temp": 1.0}), {"ppg"}),
        "eda": (_drop(stress_window, prefixes=("hr_", "hrv_"), beat_source="none", n_beats=0,
                      coverage={"eda": 1.0, "acc": 1.0, "temp": 1.0}), {"eda"}),
    }
    for name, (w, channels) in cases.items():
        state = est.update(w)
        assert state.variant == name, (name, state)
        assert set(state.channels_used) - {"acc", "temp"} == channels, (name, state)
        # every variant sees this window's stress response from its own channels; EDA alone
        # is less sure (amusement raises skin conductance too), the cardiac variants are sure
        assert state.state == "stress" and state.p_stress is not None, (name, state)
        assert state.p_stress > (0.4 if name == "eda" else 0.7), (name, state.p_stress)


def test_variants_are_each_validated_leave_one_subject_out(cohort: list[LabelledWindows]) -> None:
    report = loso_evaluate(cohort, baseline=BASE, n_jobs=2, make=fast)
    s = report.summary()
    assert set(s["per_variant"]) == {"full", "hr_eda", "cardiac", "eda"}
    auroc = {name: v["auroc"] for name, v in s["per_variant"].items()}
    # Heart rate separates stress from everything; skin conductance alone also rises with
    # amusement, so the EDA-only variant is right less often, but still far above chance.
    assert min(auroc["full"], auroc["hr_eda"], auroc["cardiac"]) > 0.9, auroc
    assert 0.7 < auroc["eda"] < min(auroc["full"], auroc["hr_eda"]), auroc
    assert s["routed_windows"] == {"full": s["pooled"]["n"]}  # every window had all channels
    assert set(s["pooled_ci95"]) >= {"balanced_accuracy", "auroc"}
    lo, hi = s["pooled_ci95"]["balanced_accuracy"]
    assert lo <= s["pooled"]["balanced_accuracy"] <= hi


def test_explanations_name_the_inputs_that_drive_p_stress(
    cohort: list[LabelledWindows], stress_model: StressModel
) -> None:
    est = stress_model.for_subject("new")
    states = [est.update(w) for w in cohort[1].windows]
    stressed = [s for s in states if s.state == "stress"]
    assert stressed
    for s in stressed:
        assert 1 <= len(s.explanation) <= 3
        assert list(s.top_features) == [c.feature for c in s.explanation]
        effects = [abs(c.effect) for c in s.explanation]
        assert effects == sorted(effects, reverse=True)
    # The cohort's stress raises heart rate by 15 bpm: in a typical stress window the heart
    # rate deviation is named, with a positive effect and the right direction in words.
    named = [c for s in stressed for c in s.explanation if c.feature == "rel_hr_mean_bpm"]
    assert len(named) >= len(stressed) // 2
    assert all(c.effect > 0 and 5 < c.deviation < 25 and "above your baseline" in c.text
               and c.unit == "bpm" for c in named[:20])
    # the effect is what moving the input back to the baseline does, computed independently
    s, c = next((s, c) for s in stressed for c in s.explanation)
    w = next(w for w in cohort[1].windows if w.end_ns == s.window_end_ns)
    ref = stress_model.for_subject("ref")
    for prior in cohort[1].windows:
        if prior.end_ns >= w.end_ns:
            break
        ref.assess(prior)
    inputs, _ = ref.assess(w)
    assert inputs is not None
    names = stress_model.variant("full").spec.feature_names
    x = np.array([[inputs.get(n, math.nan) for n in names]])
    moved = x.copy()
    moved[0, names.index(c.feature)] = 0.0
    clf = stress_model.variant("full").classifier
    expected = clf.predict_proba(x)[0, 1] - clf.predict_proba(moved)[0, 1]
    assert c.effect == pytest.approx(expected, abs=1e-4)


def test_affect_model_from_the_datasets_own_labels(cohort: list[LabelledWindows]) -> None:
    report = loso_evaluate(cohort, target="affect", baseline=BASE, n_jobs=2, make=fast)
    s = report.summary()
    assert s["classes"] == ["amusement", "baseline", "stress"]
    assert s["pooled"]["macro_f1"] > 0.8 and s["pooled"]["auroc"] > 0.9, s["pooled"]
    matrix = np.array(s["confusion_matrix"]["rows_true_cols_predicted"])
    assert matrix.sum() == s["pooled"]["n"] and np.trace(matrix) > 0.8 * matrix.sum()
    assert "confusion" not in s  # the stress-only summary keys stay off multi-class reports

    affect = fit_model(cohort, target="affect", baseline=BASE, make=fast)
    stress = fit_model(cohort, baseline=BASE, make=fast)
    est = stress.for_subject("new", extra=[affect])
    states = [est.update(w) for w in cohort[2].windows]
    scored = [(st, lab) for st, lab in zip(states, cohort[2].labels, strict=True)
              if st.state != "withheld"]
    assert all(st.affect in affect.classes and sum(st.affect_p.values()) == pytest.approx(1.0)
               for st, _ in scored)
    assert np.mean([st.affect == lab for st, lab in scored]) > 0.8
    # valence was not trained: said, not guessed
    assert all(st.valence is None and "valence labels" in st.not_estimated["valence"]
               for st, _ in scored)
    assert "affect" not in scored[0][0].not_estimated
    assert scored[0][0].model_version == f"{stress.version}+{affect.version}"


def test_valence_only_from_a_model_trained_on_valence_ratings(
    cohort: list[LabelledWindows], stress_model: StressModel
) -> None:
    valence = fit_model(cohort, target="valence", baseline=BASE, make=fast)
    assert valence.classes == ("low", "high")
    est = stress_model.for_subject("new", extra=[valence])
    states = [est.update(w) for w in cohort[3].windows]
    by_label: dict[str, list[float]] = {}
    for st, lab in zip(states, cohort[3].labels, strict=True):
        if st.valence is not None:
            by_label.setdefault(lab, []).append(st.valence)
    assert np.mean(by_label["amusement"]) > 0.7 > 0.3 > np.mean(by_label["stress"])
    assert "affect" in states[-1].not_estimated and "valence" not in states[-1].not_estimated
    plain = stress_model.for_subject("plain").update(cohort[3].windows[-1])
    assert plain.valence is None and "valence" in plain.not_estimated


def test_incompatible_heads_and_label_sets_are_clear_errors(
    cohort: list[LabelledWindows], stress_model: StressModel
) -> None:
    with pytest.raises(ValueError, match="one model"):
        stress_model.for_subject("s", extra=[stress_model])
    other = fit_model(cohort[:4], target="valence", baseline=BaselineConfig(warmup_s=60),
                      make=fast)
    with pytest.raises(ValueError, match="other gate/baseline settings"):
        stress_model.for_subject("s", extra=[other])
    unrated = [LabelledWindows(c.subject_id, c.windows, c.labels, c.tasks, c.train_mask)
               for c in cohort]
    with pytest.raises(ValueError, match="two valence classes"):
        loso_evaluate(unrated, target="valence", baseline=BASE, make=fast)
    with pytest.raises(ValueError, match="target must be one of"):
        fit_model(cohort, target="mood", baseline=BASE, make=fast)


def test_a_subject_with_no_usable_window_is_reported_not_scored(
    cohort: list[LabelledWindows],
) -> None:
    moving = cohort[5]
    still = [_drop(w, motion=True) for w in moving.windows]
    data = [*cohort[:5], LabelledWindows("moving", still, moving.labels, moving.tasks,
                                         moving.train_mask, moving.valence)]
    s = loso_evaluate(data, baseline=BASE, n_jobs=2, make=fast).summary()
    assert s["per_subject"]["moving"]["n"] == 0
    assert s["per_subject"]["moving"]["balanced_accuracy"] is None
    assert s["withheld"]["moving"] == {"motion": len(still)}
    assert s["pooled"]["n"] == sum(v["n"] for k, v in s["per_subject"].items())


def test_model_with_inputs_this_version_does_not_compute_is_refused(
    stress_model: StressModel, tmp_path: Path
) -> None:
    out = stress_model.save(tmp_path / "m")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["variants"][0]["feature_names"][0] = "rel_hrv_magic_ms"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"inputs \['rel_hrv_magic_ms'\]"):
        StressModel.load(out)
