"""Evaluation reports: the JSON summary of a :class:`~wearemo.model.train.LosoReport` plus a
readable Markdown page with a reliability diagram and per-subject scores.

Example
-------
>>> md = write_report(report.summary(), Path("out/eval.json"))  # doctest: +SKIP
>>> md.name                                                      # doctest: +SKIP
'eval.md'
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def _f(x: object, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _plots(summary: dict[str, Any], stem: Path) -> list[str]:
    """Reliability diagram and per-subject balanced accuracy as PNGs next to the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    bins = summary.get("reliability") or []
    if bins:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], marker="o",
                label="model")
        for b in bins:
            ax.annotate(str(b["n"]), (b["mean_p"], b["observed"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
        binary = len(summary.get("classes") or []) == 2
        ax.set(xlabel="predicted p(stress)" if binary else "top-class probability",
               ylabel="observed stress rate" if binary else "observed accuracy", xlim=(0, 1),
               ylim=(0, 1), title=f"Reliability (ECE {_f(summary['pooled'].get('ece'))})")
        ax.legend(loc="upper left")
        fig.tight_layout()
        name = f"{stem.name}-reliability.png"
        fig.savefig(stem.with_name(name), dpi=110)
        plt.close(fig)
        names.append(name)
    per = {k: v for k, v in (summary.get("per_subject_balanced_accuracy") or {}).items()
           if v is not None}
    if per:
        fig, ax = plt.subplots(figsize=(max(4.5, 0.28 * len(per)), 3.2))
        ax.bar(list(per), list(per.values()), color="#4a7ab5")
        ax.axhline(0.5, color="0.6", linestyle="--", linewidth=1)
        ax.set(ylim=(0, 1), ylabel="balanced accuracy", title="Per subject")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        fig.tight_layout()
        name = f"{stem.name}-subjects.png"
        fig.savefig(stem.with_name(name), dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def write_report(summary: dict[str, Any], path: Path) -> Path:
    """Write ``summary`` as JSON to ``path`` and a Markdown report (plus PNG plots) beside it.

    Returns the Markdown path (``path`` with suffix ``.md``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    stem = path.with_suffix("")
    plots = _plots(summary, stem)
    pooled = summary.get("pooled", {})
    ci = summary.get("pooled_ci95") or {}
    cm = summary.get("confusion_matrix") or {}
    classes = cm.get("classes") or summary.get("classes") or []
    matrix = cm.get("rows_true_cols_predicted") or []
    lines = [
        "# Evaluation report",
        "",
        f"Protocol: {summary.get('protocol', '?')}.",
        "",
        f"Target: {summary.get('target', 'stress')} ({', '.join(classes)}).",
        "",
        "| pooled | value | 95 % CI (cluster bootstrap over subjects) |",
        "| --- | --- | --- |",
        *(f"| {k} | {_f(pooled.get(k))} | "
          f"{' – '.join(_f(v) for v in ci.get(k, [])) or '—'} |"
          for k in ("n", "balanced_accuracy", "accuracy", "macro_f1", "auroc", "ece")),
        f"| per-subject balanced accuracy, mean | "
        f"{_f(summary.get('per_subject_balanced_accuracy_mean'))} | "
        f"{' – '.join(_f(v) for v in summary.get('per_subject_balanced_accuracy_ci95') or [])}"
        " (bootstrap of the mean over subjects) |",
        f"| worst subject | {summary.get('worst_subject') or '—'} | |",
        "",
        "## Confusion matrix (windows; rows: true class, columns: predicted)",
        "",
        f"| | {' | '.join(f'predicted {c}' for c in classes)} |",
        f"| --- | {' | '.join('---' for _ in classes)} |",
        *(f"| {c} | {' | '.join(str(v) for v in row)} |"
          for c, row in zip(classes, matrix, strict=False)),
        "",
        "## Predicted classes by task",
        "",
        f"| task | {' | '.join(classes)} |",
        f"| --- | {' | '.join('---' for _ in classes)} |",
        *(f"| {t} | {' | '.join(_f(r.get(c), 2) for c in classes)} |"
          for t, r in (summary.get("per_task_predicted") or {}).items()),
        "",
        "## By channel variant",
        "",
        "Each variant scored on every window that has its channels; `routed` is how many of "
        "the pooled windows it scored.",
        "",
        "| variant | windows | balanced accuracy | macro-F1 | AUROC | ECE | routed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {name} | {_f(v.get('n'))} | {_f(v.get('balanced_accuracy'))} | "
          f"{_f(v.get('macro_f1'))} | {_f(v.get('auroc'))} | {_f(v.get('ece'))} | "
          f"{(summary.get('routed_windows') or {}).get(name, 0)} |"
          for name, v in (summary.get("per_variant") or {}).items()),
        "",
        "## Calibration",
        "",
        "| p bin | windows | mean p | observed |",
        "| --- | --- | --- | --- |",
        *(f"| {b['low']:.1f}–{b['high']:.1f} | {b['n']} | {b['mean_p']:.3f} | "
          f"{b['observed']:.3f} |" for b in summary.get("reliability") or []),
        "",
        "## Per subject",
        "",
        "| subject | windows | balanced accuracy | macro-F1 | AUROC | ECE | withheld |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    withheld = summary.get("withheld") or {}
    for sid, s in sorted((summary.get("per_subject") or {}).items()):
        why = ", ".join(f"{k} {v}" for k, v in sorted(withheld.get(sid, {}).items())) or "—"
        lines.append(f"| {sid} | {_f(s.get('n'))} | {_f(s.get('balanced_accuracy'))} | "
                     f"{_f(s.get('macro_f1'))} | {_f(s.get('auroc'))} | {_f(s.get('ece'))} | "
                     f"{why} |")
    lines.append("")
    lines.extend(f"![{name}]({name})" for name in plots)
    md = path.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return md
