"""Evaluation reports: the JSON summary of an evaluation plus a readable Markdown page with a
reliability diagram and per-subject scores, drawn as SVG.

The figures are written as plain SVG text: no plotting library is needed, so a server or a
trial site's laptop without matplotlib gets the same report (vector figures that browsers and
GitHub show and that diff as text).

A fixed model's evaluation (:class:`~wearemo.model.train.FixedModelReport`) has two parts:
``external_validation`` (recordings the model was not trained on) and ``in_sample`` (the ones it
was); the page reports each under its own heading and never calls the second validation.

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
from xml.sax.saxutils import escape

__all__ = ["reliability_svg", "subjects_svg", "write_report"]


def _f(x: object, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


_FONT = 'font-family="sans-serif" font-size="11"'


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="white"/>',
        *body,
        "</svg>",
    ]) + "\n"


def _axes(x0: float, y0: float, w: float, h: float, *, xlabel: str, ylabel: str,
          xticks: bool = True) -> list[str]:
    """A unit square's axes at (x0, y0) (top-left), w x h pixels, ticks at 0, 0.5, 1."""
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#333"/>']
    for v in (0.0, 0.5, 1.0):
        y = y0 + h * (1 - v)
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{v:g}</text>')
        if xticks:
            x = x0 + w * v
            out.append(f'<text x="{x:.1f}" y="{y0 + h + 15}" text-anchor="middle" {_FONT}>'
                       f"{v:g}</text>")
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 32}" text-anchor="middle" {_FONT}>'
               f"{escape(xlabel)}</text>")
    out.append(f'<text transform="translate({x0 - 34},{y0 + h / 2}) rotate(-90)" '
               f'text-anchor="middle" {_FONT}>{escape(ylabel)}</text>')
    return out


def reliability_svg(bins: list[dict[str, float]], *, binary: bool, ece: object = None) -> str:
    """A reliability diagram: observed rate against mean predicted probability per bin.

    Parameters
    ----------
    bins
        ``reliability`` bins of a summary (``mean_p``, ``observed``, ``n``).
    binary
        Two classes (p(stress) against the stress rate), else the top class's probability
        against the accuracy.
    ece
        Expected calibration error for the title.

    Returns
    -------
    str
        An SVG document: one circle per bin (labelled with its window count) on the line of
        the model, and the dashed diagonal of perfect calibration.

    Example
    -------
    >>> svg = reliability_svg([{"mean_p": 0.2, "observed": 0.25, "n": 40}], binary=True)
    >>> svg.count("<circle")
    1
    """
    x0, y0, w, h = 52.0, 30.0, 300.0, 300.0

    def at(p: float, o: float) -> tuple[float, float]:
        return x0 + w * min(max(p, 0.0), 1.0), y0 + h * (1 - min(max(o, 0.0), 1.0))

    body = _axes(x0, y0, w, h,
                 xlabel="predicted p(stress)" if binary else "top-class probability",
                 ylabel="observed stress rate" if binary else "observed accuracy")
    body.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0}" stroke="#999" '
                'stroke-dasharray="4 3"/>')
    points = [at(b["mean_p"], b["observed"]) for b in bins]
    if points:
        body.append('<polyline fill="none" stroke="#4a7ab5" stroke-width="2" points="'
                    + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
    for b, (x, y) in zip(bins, points, strict=True):
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#4a7ab5">'
                    f"<title>{b['n']} windows: mean p {b['mean_p']:.3f}, observed "
                    f"{b['observed']:.3f}</title></circle>")
        body.append(f'<text x="{x + 5:.1f}" y="{y + 13:.1f}" font-family="sans-serif" '
                    f'font-size="9" fill="#555">{int(b["n"])}</text>')
    body.append(f'<text x="{x0 + w / 2}" y="18" text-anchor="middle" font-family="sans-serif" '
                f'font-size="13">Reliability (ECE {_f(ece)})</text>')
    return _svg(x0 + w + 20, y0 + h + 45, "Reliability diagram", body)


def subjects_svg(scores: dict[str, float], *, title: str = "Per subject") -> str:
    """Per-subject balanced accuracy as bars, with the chance line at 0.5.

    Example
    -------
    >>> subjects_svg({"S02": 0.7, "S04": 0.55}).count('class="bar"')
    2
    """
    n = len(scores)
    step = max(14.0, min(40.0, 600.0 / max(n, 1)))
    x0, y0, h = 52.0, 30.0, 220.0
    w = max(step * n, 200.0)
    step = w / max(n, 1)
    body = _axes(x0, y0, w, h, xlabel="", ylabel="balanced accuracy", xticks=False)
    body.append(f'<line x1="{x0}" y1="{y0 + h / 2}" x2="{x0 + w}" y2="{y0 + h / 2}" '
                'stroke="#999" stroke-dasharray="4 3"/>')
    for k, (subject, v) in enumerate(scores.items()):
        bh = h * min(max(v, 0.0), 1.0)
        x = x0 + k * step + step * 0.15
        body.append(f'<rect class="bar" x="{x:.1f}" y="{y0 + h - bh:.1f}" '
                    f'width="{step * 0.7:.1f}" height="{bh:.1f}" fill="#4a7ab5">'
                    f"<title>{escape(subject)}: {v:.3f}</title></rect>")
        cx = x + step * 0.35
        body.append(f'<text transform="translate({cx + 3:.1f},{y0 + h + 6}) rotate(-90)" '
                    f'text-anchor="end" font-family="sans-serif" font-size="9">'
                    f"{escape(subject)}</text>")
    longest = max((len(s) for s in scores), default=0)
    body.append(f'<text x="{x0 + w / 2}" y="18" text-anchor="middle" font-family="sans-serif" '
                f'font-size="13">{escape(title)}</text>')
    return _svg(x0 + w + 20, y0 + h + 16 + 6 * longest, title, body)


def _plots(summary: dict[str, Any], stem: Path) -> list[str]:
    """Reliability diagram and per-subject balanced accuracy as SVG files next to the report."""
    names: list[str] = []
    bins = summary.get("reliability") or []
    if bins:
        name = f"{stem.name}-reliability.svg"
        stem.with_name(name).write_text(reliability_svg(
            bins, binary=len(summary.get("classes") or []) == 2,
            ece=(summary.get("pooled") or {}).get("ece")))
        names.append(name)
    per = {k: v for k, v in (summary.get("per_subject_balanced_accuracy") or {}).items()
           if v is not None}
    if per:
        name = f"{stem.name}-subjects.svg"
        stem.with_name(name).write_text(subjects_svg(per))
        names.append(name)
    return names


def _sections(summary: dict[str, Any], stem: Path, level: str) -> list[str]:
    """The tables and figures of one evaluation summary (a LOSO or fixed-model part)."""
    plots = _plots(summary, stem)
    pooled = summary.get("pooled", {})
    ci = summary.get("pooled_ci95") or {}
    cm = summary.get("confusion_matrix") or {}
    classes = cm.get("classes") or summary.get("classes") or []
    matrix = cm.get("rows_true_cols_predicted") or []
    lines = [
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
        f"{level} Confusion matrix (windows; rows: true class, columns: predicted)",
        "",
        f"| | {' | '.join(f'predicted {c}' for c in classes)} |",
        f"| --- | {' | '.join('---' for _ in classes)} |",
        *(f"| {c} | {' | '.join(str(v) for v in row)} |"
          for c, row in zip(classes, matrix, strict=False)),
        "",
        f"{level} Predicted classes by task",
        "",
        f"| task | {' | '.join(classes)} |",
        f"| --- | {' | '.join('---' for _ in classes)} |",
        *(f"| {t} | {' | '.join(_f(r.get(c), 2) for c in classes)} |"
          for t, r in (summary.get("per_task_predicted") or {}).items()),
        "",
        f"{level} By channel variant",
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
        f"{level} Calibration",
        "",
        "| p bin | windows | mean p | observed |",
        "| --- | --- | --- | --- |",
        *(f"| {b['low']:.1f}–{b['high']:.1f} | {b['n']} | {b['mean_p']:.3f} | "
          f"{b['observed']:.3f} |" for b in summary.get("reliability") or []),
        "",
        f"{level} Per subject",
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
    return lines


def _n(k: int) -> str:
    return f"{k} recording{'' if k == 1 else 's'}"


def _split_sections(summary: dict[str, Any], stem: Path) -> list[str]:
    """A fixed model's report: external validation and in-sample parts under their headings."""
    overlap = summary.get("training_overlap") or {}
    seen: dict[str, str] = overlap.get("seen") or {}
    unseen: list[str] = overlap.get("unseen") or []
    notes = summary.get("notes") or {}
    lines = [f"Protocol: {summary.get('protocol', '?')}.", ""]
    if seen:
        pairs = ", ".join(f"{s} (training subject {t})" if s != t else s
                          for s, t in sorted(seen.items()))
        lines += [f"**Warning: the model was trained on {len(seen)} of these "
                  f"{_n(len(seen) + len(unseen))}: {pairs}. Their figures are in-sample "
                  "(optimistic) and are NOT validation; they are reported apart, below the "
                  "external validation.**", ""]
    lines += [f"Recordings were matched with the training data by {overlap.get('method', '?')}.",
              ""]
    parts = (("external_validation", f"External validation: {_n(len(unseen))} the model was "
              f"not trained on ({', '.join(unseen) or 'none'})", "unseen"),
             ("in_sample", f"In-sample, NOT validation: {_n(len(seen))} the model was "
              f"trained on ({', '.join(sorted(seen)) or 'none'})", "seen"))
    for key, heading, suffix in parts:
        lines += [f"## {heading}", ""]
        part = summary.get(key)
        if part:
            lines += _sections(part, stem.with_name(f"{stem.name}-{suffix}"), "###")
        else:
            lines += [notes.get(key, "No recordings in this part."), ""]
    return lines


def write_report(summary: dict[str, Any], path: Path) -> Path:
    """Write ``summary`` as JSON to ``path`` and a Markdown report (plus SVG figures) beside it.

    ``summary`` is a :meth:`~wearemo.model.train.LosoReport.summary` or a
    :meth:`~wearemo.model.train.FixedModelReport.summary` (then the in-sample part is reported
    apart from the external validation, figures ``<stem>-unseen-*.svg`` and
    ``<stem>-seen-*.svg``). Returns the Markdown path (``path`` with suffix ``.md``).

    Example
    -------
    >>> write_report(loso_report.summary(), Path("out/eval.json"))  # doctest: +SKIP
    PosixPath('out/eval.md')
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    stem = path.with_suffix("")
    lines = ["# Evaluation report", ""]
    if "external_validation" in summary or "in_sample" in summary:
        lines += _split_sections(summary, stem)
    else:
        lines += _sections(summary, stem, "##")
    skipped = summary.get("skipped_recordings") or {}
    if skipped:
        lines += ["## Recordings left out (could not be read)", ""]
        lines += [f"- {name}: {why}" for name, why in sorted(skipped.items())] + [""]
    md = path.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return md
