"""Model stage: gating, personal baseline, training/LOSO honesty and artifacts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from wearemo.features.window import FeatureWindow
from wearemo.model import (
    BaselineConfig,
    GateConfig,
    ModelVersionError,
    StressModel,
    load_model,
)
from wearemo.model.artifact import DEFAULT_MODEL_DIR
from wearemo.model.classifier import StressClassifier
from wearemo.model.train import (
    LabelledWindows,
    expected_calibration_error,
    fit_model,
    loso_evaluate,
)

S = 10**9
FULL = {"ppg": 1.0, "eda": 1.0, "acc": 1.0, "temp": 1.0, "hr": 1.0}


def _window(subject: str, end_s: float, **features: float) -> FeatureWindow:
    return FeatureWindow(
        subject_id=subject, start_ns=int((end_s - 60) * S), end_ns=int(end_s * S),
        features=features, coverage=dict(FULL), quality={"ppg": 0.9}, beat_source="ppg",
        n_beats=70,
    )


def _subject(subject: str, rng: np.random.Generator, *, flip: bool = False) -> LabelledWindows:
    """Rest 5 min, stress 5 min, rest 5 min; stress raises HR and skin conductance.

    Each person has their own resting HR (55-85 bpm) and SCL (0.5-8 uS): only the change from
    the personal baseline identifies stress, as in real data.
    """
    hr0, scl0 = rng.uniform(55, 85), rng.uniform(0.5, 8.0)
    windows, labels = [], []
    for k in range(90):  # 15 min, a window every 10 s
        t = 60 + 10 * k
        stress = 300 <= t < 600
        hr = hr0 + (15 if stress else 0) + rng.normal(0, 2.5)
        scl = scl0 * (1.3 if stress else 1.0) * math.exp(rng.normal(0, 0.05))
        rmssd = 40 * (0.7 if stress else 1) * math.exp(rng.normal(0, 0.1))
        windows.append(
            _window(subject, t, hr_mean_bpm=hr, eda_scl_mean_uS=scl, hrv_rmssd_ms=rmssd,
                    hr_device_mean_bpm=hr + rng.normal(0, 1.0))
        )
        labels.append("stress" if stress != flip else "non_stress")
    return LabelledWindows(subject, windows, labels, ["task"] * len(labels), [True] * len(labels))


@pytest.fixture(scope="module")
def cohort() -> list[LabelledWindows]:
    rng = np.random.default_rng(7)
    return [_subject(f"p{i:02d}", rng) for i in range(6)]


def test_estimator_withholds_during_warm_up_then_estimates(cohort: list[LabelledWindows]) -> None:
    model = fit_model(cohort, baseline=BaselineConfig(warmup_s=120, min_windows=10),
                      make=lambda s: StressClassifier(max_iter=60, random_state=s))
    est = model.for_subject("new")
    states = [est.update(w) for w in cohort[0].windows[:40]]
    reasons = {s.reason.split(":")[0] for s in states if s.state == "withheld" and s.reason}
    assert reasons == {"warm-up"}
    first_estimate = next(i for i, s in enumerate(states) if s.state != "withheld")
    assert first_estimate == 12  # windows every 10 s: 120 s of warm-up after the first window
    s = states[-1]
    assert s.p_stress is not None and 0.0 <= s.p_stress <= 1.0
    assert s.model_version == model.version


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"motion": True}, "motion"),
        ({"coverage": {"ppg": 1.0, "eda": 0.2}, "beat_source": "none", "n_beats": 0},
         "missing channels: beats, eda"),
        ({"coverage": {"ppg": 1.0, "eda": 0.2}, "quality": {"ppg": 0.2}},
         "poor signal quality (ppg 0.20 < 0.50); missing channels: eda"),
        # one good channel is enough: not withheld for the other (it goes on to the warm-up)
        ({"coverage": {"ppg": 1.0, "eda": 0.2}}, "warm-up: personal baseline 0/240 s"),
        ({"beat_source": "none", "n_beats": 0}, "warm-up: personal baseline 0/240 s"),
        ({"quality": {"ppg": 0.2}}, "warm-up: personal baseline 0/240 s"),
    ],
)
def test_gating_reasons(change: dict[str, object], reason: str) -> None:
    est = StressModel(variants=[]).for_subject("s")
    w = _window("s", 60, hr_mean_bpm=70.0)
    fields = {f: getattr(w, f) for f in w.__slots__} | change  # type: ignore[attr-defined]
    state = est.update(FeatureWindow(**fields))  # type: ignore[arg-type]
    assert state.state == "withheld" and state.reason == reason and state.p_stress is None


def test_one_good_channel_is_estimated_without_the_other(cohort: list[LabelledWindows]) -> None:
    model = fit_model(cohort, baseline=BaselineConfig(warmup_s=120, min_windows=10),
                      make=lambda s: StressClassifier(max_iter=60, random_state=s))
    est = model.for_subject("new")
    for w in cohort[0].windows[:13]:
        est.update(w)
    w = cohort[0].windows[13]
    poor = FeatureWindow(**({f: getattr(w, f) for f in w.__slots__}  # type: ignore[attr-defined]
                            | {"quality": {"ppg": 0.1}}))
    inputs, reason = est.assess(poor)
    assert reason is None and inputs is not None
    # the poor PPG's HRV is not used: its inputs are missing, the EDA ones are not
    assert all(math.isnan(v) for k, v in inputs.items() if "hrv" in k or "hr_mean" in k)
    assert any(math.isfinite(v) for k, v in inputs.items() if "eda" in k)
    good = est.update(cohort[0].windows[14])
    assert good.state != "withheld" and "ppg" in good.channels_used
    later = {f: getattr(poor, f) for f in poor.__slots__}  # type: ignore[attr-defined]
    later["end_ns"] = poor.end_ns + 20 * 10**9
    state = est.update(FeatureWindow(**later))
    assert state.state != "withheld" and "ppg" not in state.channels_used  # says what it used


def test_loso_separates_synthetic_stress_and_never_trains_on_the_test_subject(
    cohort: list[LabelledWindows],
) -> None:
    rng = np.random.default_rng(1)
    # One participant's labels are inverted. If its own windows leaked into its training fold
    # the model could follow them; held out, it must score far below chance.
    data = [*cohort, _subject("flipped", rng, flip=True)]
    report = loso_evaluate(data, baseline=BaselineConfig(warmup_s=120, min_windows=10), n_jobs=2,
                           make=lambda s: StressClassifier(max_iter=60, random_state=s))
    # The flipped subject also sits in every other fold's training data as label noise.
    honest = [report.per_subject[d.subject_id]["balanced_accuracy"] for d in cohort]
    assert min(honest) > 0.8 and float(np.mean(honest)) > 0.9, honest
    assert report.per_subject["flipped"]["balanced_accuracy"] < 0.15
    assert report.summary()["worst_subject"] == "flipped"


def test_expected_calibration_error_matches_definition() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.7])
    # bins: 0.1 -> (2 windows, acc 0, conf 0.1); 0.9 -> (1, 1, 0.9); 0.7 -> (1, 1, 0.7)
    expected = 0.5 * 0.1 + 0.25 * 0.1 + 0.25 * 0.3
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_artifact_round_trip_and_refusals(cohort: list[LabelledWindows], tmp_path: Path) -> None:
    model = fit_model(cohort[:4], baseline=BaselineConfig(warmup_s=120, min_windows=10))
    out = model.save(tmp_path / "m")
    loaded = StressModel.load(out)
    assert loaded.version == model.version and loaded.baseline.warmup_s == 120
    assert [v.spec for v in loaded.variants] == [v.spec for v in model.variants]
    x = np.array([[5.0, 0.0, 0.0, -0.3, 0.0, 0.0, 0.0, 0.2, 0, 0, 0, 0, 0.0, 0.0]])
    assert loaded.variant("full").classifier.predict_proba(x) == pytest.approx(
        model.variant("full").classifier.predict_proba(x))

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["versions"]["scikit-learn"] = "0.24.2"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelVersionError, match=r"scikit-learn 0\.24\.2"):
        StressModel.load(out)
    manifest["format"] = 1  # an artifact of an older wearemo: a clear refusal, not a crash
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelVersionError, match=r"artifact format 1.*retrain"):
        StressModel.load(out)
    manifest["format"] = 2

    (out / "manifest.json").write_text(json.dumps(manifest))
    with (out / "model.skops").open("ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="checksum"):
        StressModel.load(out, check_versions=False)


def test_shipped_default_model_manifest_is_honest() -> None:
    model = load_model("default")
    m = model.manifest
    assert len(m["training_subjects"]) == 28
    loso = m["loso"]
    assert set(loso["per_subject_balanced_accuracy"]) == set(m["training_subjects"])
    assert 0.5 < loso["pooled"]["balanced_accuracy"] < 1.0
    # Session time must never be an input (the protocol order would leak the labels).
    assert not any("time" in n or "elapsed" in n for n in model.feature_names)
    assert (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text().count("leave-one-subject-out") >= 1


def test_default_model_on_the_real_excerpt_rises_during_stroop() -> None:
    from wearemo.batch import DEFAULT_EXCERPT, predict_rows

    rows = predict_rows(DEFAULT_EXCERPT, jobs=1)
    est = rows[rows.state != "withheld"]
    assert len(est) > 60
    by_task = est.groupby("label").p_stress.mean()
    # S02 is a training subject of the default model, so this checks the wiring, not accuracy
    # (the LOSO score in the manifest is the accuracy figure).
    assert by_task["stress"] > by_task["non_stress"] + 0.1
    assert rows[rows.state == "withheld"].p_stress.isna().all()


def test_copy_of_default_loads_from_a_path(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "m")
    assert load_model(tmp_path / "m").version == load_model("default").version
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")


def test_gate_config_round_trips_in_manifest() -> None:
    assert GateConfig(**load_model().manifest["gate"]) == load_model().gate
