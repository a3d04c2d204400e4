"""Model card (Mitchell et al. 2019, "Model Cards for Model Reporting") from a manifest.

Example
-------
>>> "Intended use" in model_card({"version": "x", "loso": {"pooled": {}}})
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(manifest: dict[str, Any]) -> str:
    """Render the Markdown model card of an artifact from its manifest."""
    loso = manifest.get("loso", {})
    pooled = loso.get("pooled", {})
    per_subject = loso.get("per_subject_balanced_accuracy", {})
    tasks = loso.get("per_task_predicted_stress_rate", {})
    lines = [
        f"# Model card: {manifest.get('version', '?')}",
        "",
        "**Not a medical device.** Research and wellness use only; it does not diagnose, treat "
        "or monitor any condition.",
        "",
        "## What it does",
        "Estimates, every 5 s, whether the wearer is under acute stress (`stress` vs "
        "`non_stress`) from 60-s windows of wrist PPG-derived heart rate/HRV, electrodermal "
        "activity and skin temperature, each expressed relative to the wearer's own baseline "
        "learned over the first ~5 min of valid data (states are withheld during that warm-up, "
        "on motion, and when neither usable beats nor EDA are available; with only one of them "
        "the other's features are taken as missing). HRV uses only PPG beats whose waveform "
        "passes a template-matching quality test (correlation >= 0.90); on this wrist data "
        "that removes HRV from over half of the windows, which then rest on EDA.",
        "",
        f"- Classifier: {manifest.get('classifier', '?')}",
        f"- Features: {', '.join(manifest.get('feature_names', []))}",
        f"- Library versions: {manifest.get('versions', {})}",
        "",
        "## Training data",
        f"- Source: `{manifest.get('data', '?')}` (Stress-Predict, Iqbal et al., Sensors "
        "22(21):8135, 2022, doi:10.3390/s22218135; MIT license): Empatica E4 wrist recordings "
        "of healthy volunteers doing a Stroop test, an interview and hyperventilation between "
        "rests.",
        f"- Subjects: {len(manifest.get('training_subjects', []))} "
        f"({', '.join(manifest.get('training_subjects', []))})",
        f"- Training windows: {manifest.get('training_windows', '?')}; data hash "
        f"`{manifest.get('data_hash', '?')}`",
        "",
        "## Evaluation: leave-one-subject-out (LOSO)",
        f"Protocol: {loso.get('protocol', '?')}. Each subject is scored by a model trained without "
        "them; the classifier and its settings were fixed before evaluation (no selection on "
        "test subjects). A window is called `stress` when p_stress reaches the stress "
        f"prevalence of the training windows (shipped threshold "
        f"{_fmt(manifest.get('gate', {}).get('stress_threshold'))}).",
        "",
        "| metric | pooled |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in pooled.items()],
        "",
        f"Per-subject balanced accuracy: mean "
        f"{_fmt(loso.get('per_subject_balanced_accuracy_mean'))} "
        f"(SD {_fmt(loso.get('per_subject_balanced_accuracy_sd'))}, 95% bootstrap CI over "
        f"subjects {[round(x, 3) for x in loso.get('per_subject_balanced_accuracy_ci95') or []]});"
        f" worst subject "
        f"{loso.get('worst_subject')}.",
        "",
        "| subject | balanced accuracy |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in per_subject.items()],
        "",
        "Fraction of estimated windows called `stress`, per protocol task:",
        "",
        "| task | predicted stress rate |",
        "| --- | --- |",
        *[f"| {k} | {_fmt(v)} |" for k, v in tasks.items()],
        "",
        "## Limits",
        "- 28 healthy young adults, one device (Empatica E4), one lab protocol with the tasks in a "
        "fixed order; performance on other people, devices and real-life stressors is unknown.",
        "- The fixed protocol means slow drifts with wear time (skin temperature, skin "
        "conductance) can mimic stress labels; session time is never a feature and temperature "
        "level is excluded, but EDA level relative to baseline may still carry some drift.",
        "- The personal baseline assumes the first minutes of wear are at rest.",
        "- Labels for S06, S17, S18 and S30 are only accurate to about ±1 min.",
        "- Hyperventilation is a breathing manipulation, not psychological stress; its rate is "
        "reported separately above.",
        "",
        "## Intended use",
        "Research on stress responses and wellness feedback (e.g. suggesting a breathing "
        "exercise). Not for clinical decisions, employment or insurance decisions, or any use "
        "where a wrong state harms the wearer.",
        "",
    ]
    return "\n".join(lines)
