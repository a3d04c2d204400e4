"""Model card (Mitchell et al. 2019, "Model Cards for Model Reporting") from a manifest.

Example
-------
>>> "Intended use" in model_card({"version": "x", "loso": {"pooled": {}}})
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]

_STRESS_PREDICT = (
    "Stress-Predict (Iqbal et al., Sensors 22(21):8135, 2022, doi:10.3390/s22218135; MIT "
    "license): Empatica E4 wrist recordings of healthy volunteers doing a Stroop test, an "
    "interview and hyperventilation between rests"
)

_VARIANT_TEXT = {
    "full": "usable beats (PPG or device RR) and EDA",
    "hr_eda": "the device's own heart rate and EDA, without usable beats",
    "cardiac": "usable beats without EDA (e.g. a chest strap)",
    "eda": "EDA only",
}


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "—" if v is None else str(v)


def _ci(ci: dict[str, list[float]], key: str) -> str:
    lo_hi = ci.get(key)
    return f"{lo_hi[0]:.3f}–{lo_hi[1]:.3f}" if lo_hi else "—"


def _what(manifest: dict[str, Any]) -> str:
    target = manifest.get("target", "stress")
    classes = ", ".join(f"`{c}`" for c in manifest.get("classes", []))
    if target == "stress":
        head = ("Estimates, every 5 s, whether the wearer is under acute stress (`stress` vs "
                "`non_stress`)")
    elif target == "valence":
        head = ("Estimates, every 5 s, the probability of high valence (`low` vs `high`, "
                f"ratings split at {manifest.get('valence_midpoint', '?')})")
    else:
        head = (f"Estimates, every 5 s, the affect state among {classes} (the `{target}` "
                "labels of the training data)")
    return (
        f"{head} from 60-s windows of heart rate/HRV, electrodermal activity, skin-temperature "
        "slope and motion, each expressed relative to the wearer's own baseline (learned over "
        "the first ~5 min of valid data, or set from a labelled calibration period). States "
        "are withheld during that warm-up, on motion, and when neither usable beats nor EDA "
        "are available. HRV uses only PPG beats whose waveform passes a template-matching "
        "quality test (correlation >= 0.90)."
    )


def model_card(manifest: dict[str, Any]) -> str:
    """Render the Markdown model card of an artifact from its manifest."""
    loso = manifest.get("loso", {})
    pooled = loso.get("pooled", {})
    ci = loso.get("pooled_ci95", {})
    per_subject = loso.get("per_subject_balanced_accuracy", {})
    per_task = loso.get("per_task_predicted", {})
    classes = manifest.get("classes", [])
    data = str(manifest.get("data", "?"))
    source = f"`{data}`" + (f" ({_STRESS_PREDICT})" if "stress-predict" in data else "")
    variants = manifest.get("variants", [])
    training = {v["name"]: v for v in manifest.get("variant_training", [])}
    per_variant = loso.get("per_variant", {})
    routed = loso.get("routed_windows", {})
    selected = loso.get("selected_model_counts", {})
    lines = [
        f"# Model card: {manifest.get('version', '?')}",
        "",
        "**Not a medical device.** Research and wellness use only; it does not diagnose, treat "
        "or monitor any condition.",
        "",
        "## What it does",
        _what(manifest),
        "",
        "Channel variants (each a classifier trained on exactly its inputs; a window is scored "
        "by the first whose channels it has):",
        "",
        "| variant | used when the window has | inputs | training windows | chosen model |",
        "| --- | --- | --- | --- | --- |",
        *[f"| `{v['name']}` | {_VARIANT_TEXT.get(v['name'], ', '.join(v['requires']))} | "
          f"{len(v['feature_names'])} | {training.get(v['name'], {}).get('training_windows', '—')}"
          f" | {training.get(v['name'], {}).get('selected', '—')} |" for v in variants],
        "",
        f"- Classifier: {manifest.get('classifier', '?')}",
        f"- Inputs (all variants): {', '.join(manifest.get('feature_names', []))}",
        f"- Library versions: {manifest.get('versions', {})}",
        "",
        "## Training data",
        f"- Source: {source}.",
        f"- Subjects: {len(manifest.get('training_subjects', []))} "
        f"({', '.join(manifest.get('training_subjects', []))})",
        f"- Training windows: {manifest.get('training_windows', '?')}; data hash "
        f"`{manifest.get('data_hash', '?')}`",
        "",
        "## Evaluation: leave-one-subject-out (LOSO)",
        f"Protocol: {loso.get('protocol', '?')}. Each subject is scored by models trained "
        "without them: the model family and its settings are chosen inside each fold by "
        "group-wise inner cross-validation on the fold's training subjects only, then "
        "calibrated across those subjects. A window gets the class with the largest "
        "probability divided by its training prevalence (for stress: `stress` when p_stress "
        "reaches the stress prevalence of the training windows). Confidence intervals are 95 % "
        "cluster bootstraps over subjects.",
        "",
        "| metric | pooled | 95 % CI |",
        "| --- | --- | --- |",
        *[f"| {k} | {_fmt(v)} | {_ci(ci, k)} |" for k, v in pooled.items()],
        "",
        f"Per-subject balanced accuracy: mean "
        f"{_fmt(loso.get('per_subject_balanced_accuracy_mean'))} "
        f"(SD {_fmt(loso.get('per_subject_balanced_accuracy_sd'))}, 95% bootstrap CI over "
        f"subjects {[round(x, 3) for x in loso.get('per_subject_balanced_accuracy_ci95') or []]});"
        f" worst subject {loso.get('worst_subject')}.",
        "",
        "By variant, each scored on every window that has its channels (what a device with "
        "only those channels gets), and the windows it scored in the pooled figures:",
        "",
        "| variant | windows | balanced accuracy | macro-F1 | AUROC | ECE | routed windows |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| `{name}` | {_fmt(s.get('n'))} | {_fmt(s.get('balanced_accuracy'))} | "
          f"{_fmt(s.get('macro_f1'))} | {_fmt(s.get('auroc'))} | {_fmt(s.get('ece'))} | "
          f"{routed.get(name, 0)} |" for name, s in per_variant.items()],
        "",
        f"Models chosen by the nested search, per variant, over the folds: {selected}.",
        "",
        "Calibration (reliability bins of the pooled LOSO predictions):",
        "",
        "| p bin | windows | mean p | observed |",
        "| --- | --- | --- | --- |",
        *[f"| {b['low']:.1f}–{b['high']:.1f} | {b['n']} | {b['mean_p']:.3f} | "
          f"{b['observed']:.3f} |" for b in loso.get("reliability", [])],
        "",
        "| subject | balanced accuracy |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in per_subject.items()],
        "",
        "Fraction of estimated windows given each class, per protocol task:",
        "",
        f"| task | {' | '.join(classes)} |",
        f"| --- | {' | '.join('---' for _ in classes)} |",
        *[f"| {t} | {' | '.join(_fmt(r.get(c)) for c in classes)} |"
          for t, r in per_task.items()],
        "",
        "## Limits",
        "- Trained and validated on one device and one lab protocol with the tasks in a fixed "
        "order; performance on other people, devices and real-life stressors is unknown.",
        "- A fixed protocol means slow drifts with wear time (skin temperature, skin "
        "conductance) can mimic the labels; session time is never an input and the "
        "temperature level is excluded, but the EDA level relative to the baseline may still "
        "carry some drift (`benchmarks/reordered_segments.py` checks the model on recordings "
        "whose segments were put in another order).",
        "- The personal baseline assumes the first minutes of wear (or the calibration period) "
        "are at rest.",
        "- Motion windows are withheld: exercise is not scored, not called stress.",
        "- Hyperventilation is a breathing manipulation, not psychological stress; its rate is "
        "reported separately above.",
        *(["- Stress-Predict labels of S06, S17, S18 and S30 come from minute-resolution "
           "hand-written logs, accurate to about ±1 min."] if "stress-predict" in data else []),
        "",
        "## Intended use",
        "Research on stress responses and wellness feedback (e.g. suggesting a breathing "
        "exercise). Not for clinical decisions, employment or insurance decisions, or any use "
        "where a wrong state harms the wearer.",
        "",
    ]
    return "\n".join(lines)
