"""Protocol-shortcut check: does the stress model still score when the protocol order changes?

In Stress-Predict every participant does rest, Stroop, rest, interview, rest, hyperventilation,
rest in the same order, so "seconds since the recording started" alone classifies stress well.
This benchmark reads ``../shared/data/stress-predict/`` (see ``shared/data/README.md``) and, for
each subject, builds a copy whose segments are spliced in another order
(:meth:`wearemo.datasets.Recording.reordered`: the first rest stays first, the task blocks, each a
stress task and the rest after it, are shuffled with a seeded RNG, 30 s gaps without samples
between segments) and a control with the original order spliced the same way (same gaps, so only
the order differs from the reordered copy).

Leave-one-subject-out: for each held-out subject the stress model is trained with
``fit_model(<the other subjects' original recordings>, seed=0)`` and scored with
``external_evaluate`` on the held-out subject's original, spliced and reordered recordings. A
"session time" model (gradient-boosted trees on the seconds since the recording started, and
nothing else) is trained and scored the same way, on the same windows the stress model scored
(and, separately, on every labelled window). A model of physiology scores about the same on both
orders; the session-time shortcut collapses.

Prints pooled balanced accuracy, AUROC and macro-F1 and the per-subject mean balanced accuracy
per order, then a final JSON line.

Usage::

    .venv/bin/python benchmarks/reordered_segments.py [--jobs 2] [--subjects N] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from wearemo.batch import TRAIN_MIN_FRACTION
from wearemo.datasets import Recording, find_recordings, load_recording
from wearemo.datasets.e4 import segment_order_shuffle
from wearemo.features import featurize_recording
from wearemo.model.train import LabelledWindows, LosoReport, external_evaluate, fit_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stress-predict"

#: Recording variants scored per subject (the model always trains on "original").
VARIANTS = ("original", "spliced_original_order", "reordered")


@dataclass(slots=True)
class Subject:
    """One subject's featurised variants."""

    subject_id: str
    order: list[int]
    tasks: list[str]
    windows: dict[str, LabelledWindows]
    start_ns: dict[str, int]  # each variant's recording start (for the session-time model)


@dataclass(slots=True)
class Scores:
    """Decisions of one model on one subject's windows (pooled later over subjects)."""

    y: np.ndarray
    p: np.ndarray
    confusion: dict[str, int]
    balanced_accuracy: float | None
    task_called: dict[str, tuple[int, int]] = field(default_factory=dict)  # task -> (n, stress)


def _labelled(rec: Recording) -> LabelledWindows:
    """Feature windows with majority labels, as ``wearemo.batch.labelled_windows`` builds them."""
    windows = featurize_recording(rec)
    labels, tasks, pure = [], [], []
    for w in windows:
        seg = rec.window_label(w.start_ns, w.end_ns)
        labels.append(seg.label if seg else None)
        tasks.append(seg.task if seg else None)
        pure.append(rec.window_label(w.start_ns, w.end_ns,
                                     min_fraction=TRAIN_MIN_FRACTION) is not None)
    return LabelledWindows(rec.subject_id, windows, labels, tasks, pure)


def _featurize(path: Path, index: int, seed: int, gap_s: float) -> Subject:
    rec = load_recording(path)
    order = segment_order_shuffle(rec.labels, seed=np.random.default_rng([seed, index]))
    recs = {
        "original": rec,
        "spliced_original_order": rec.reordered(range(len(rec.labels)), gap_s=gap_s),
        "reordered": rec.reordered(order, gap_s=gap_s),
    }
    return Subject(
        subject_id=rec.subject_id, order=order, tasks=[s.task for s in rec.labels],
        windows={k: _labelled(r) for k, r in recs.items()},
        start_ns={k: r.start_ns for k, r in recs.items()},
    )


# -- stress model folds (run in worker processes) -------------------------------------------

_SUBJECTS: list[Subject] = []


def _init_worker(subjects: list[Subject], jobs: int) -> None:
    global _SUBJECTS
    _SUBJECTS = subjects
    if jobs > 1:  # one OpenMP thread per worker: oversubscribed tree fitting spins badly
        threadpool_limits(limits=1, user_api="openmp")


def _report_scores(report: LosoReport, subject: str) -> Scores:
    rows = report.predictions.get(subject, [])
    y = np.array([r[1] for r in rows], dtype=int)
    p = np.array([r[2][1] for r in rows], dtype=float)  # p_stress column
    n_task: dict[str, int] = {}
    for r in rows:
        n_task[r[3]] = n_task.get(r[3], 0) + 1
    called = {t: (n, round(report.per_task.get(t, {}).get("stress", 0.0) * n))
              for t, n in n_task.items() if t}
    bal = report.per_subject.get(subject, {}).get("balanced_accuracy")
    return Scores(y, p, dict(report.summary()["confusion"]), bal, called)


def _fold(held_out: int, seed: int) -> tuple[int, dict[str, Scores | str], list[list[int]]]:
    """Train on the other subjects' original recordings, score every variant of ``held_out``.

    Also returns, per variant, the end times of the windows the model scored.
    """
    train = [s.windows["original"] for i, s in enumerate(_SUBJECTS) if i != held_out]
    model = fit_model(train, seed=seed)
    subj = _SUBJECTS[held_out]
    out: dict[str, Scores | str] = {}
    ends: list[list[int]] = []
    for v in VARIANTS:
        try:
            report = external_evaluate([subj.windows[v]], model)
        except ValueError as exc:  # no estimated labelled window: say so, do not drop silently
            out[v] = f"not scored: {exc}"
            ends.append([])
            continue
        out[v] = _report_scores(report, subj.subject_id)
        ends.append([r[0] for r in report.predictions.get(subj.subject_id, [])])
    return held_out, out, ends


# -- session-time shortcut model ------------------------------------------------------------

def _session_xy(subj: Subject, variant: str, ends: set[int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    lw = subj.windows[variant]
    t0 = subj.start_ns[variant]
    x, y, pure, tasks = [], [], [], []
    for w, label, task, ok in zip(lw.windows, lw.labels, lw.tasks, lw.train_mask, strict=True):
        if label is None or (ends is not None and w.end_ns not in ends):
            continue
        x.append((w.end_ns - t0) / 1e9)
        y.append(1 if label == "stress" else 0)
        pure.append(ok)
        tasks.append(task or "")
    return (np.asarray(x, dtype=float).reshape(-1, 1), np.asarray(y, dtype=int),
            np.asarray(pure, dtype=bool), tasks)


def _session_scores(clf: HistGradientBoostingClassifier, threshold: float, subj: Subject,
                    variant: str, ends: set[int] | None) -> Scores | str:
    x, y, _, tasks = _session_xy(subj, variant, ends)
    if y.size == 0:
        return "not scored: no labelled window"
    p = clf.predict_proba(x)[:, 1]
    pred = p >= threshold
    conf = _confusion(y, pred)
    bal = _balanced(conf) if len(np.unique(y)) == 2 else None
    called: dict[str, tuple[int, int]] = {}
    for t in sorted(set(tasks)):
        m = np.array([k == t for k in tasks])
        called[t] = (int(m.sum()), int(pred[m].sum()))
    return Scores(y, p, conf, bal, called)


def _session_folds(subjects: Sequence[Subject], ends: dict[str, dict[str, set[int]]], seed: int
                   ) -> dict[str, dict[str, Scores | str]]:
    """LOSO session-time model; keys ``<variant>`` (stress model's windows) and
    ``<variant>_all`` (every labelled window)."""
    data = [_session_xy(s, "original") for s in subjects]
    out: dict[str, dict[str, Scores | str]] = {}
    for i, subj in enumerate(subjects):
        x = np.concatenate([d[0][d[2]] for j, d in enumerate(data) if j != i])
        y = np.concatenate([d[1][d[2]] for j, d in enumerate(data) if j != i])
        clf = HistGradientBoostingClassifier(random_state=seed).fit(x, y)
        threshold = float(y.mean())  # training prevalence, the rule fit_model uses
        res: dict[str, Scores | str] = {}
        for v in VARIANTS:
            res[v] = _session_scores(clf, threshold, subj, v, ends[subj.subject_id][v])
            res[f"{v}_all"] = _session_scores(clf, threshold, subj, v, None)
        out[subj.subject_id] = res
    return out


# -- pooling --------------------------------------------------------------------------------

def _confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    y, pred = y.astype(bool), pred.astype(bool)
    return {"tn": int((~y & ~pred).sum()), "fp": int((~y & pred).sum()),
            "fn": int((y & ~pred).sum()), "tp": int((y & pred).sum())}


def _balanced(c: dict[str, int]) -> float:
    return 0.5 * (c["tp"] / (c["tp"] + c["fn"]) + c["tn"] / (c["tn"] + c["fp"]))


def _pool(per_subject: dict[str, Scores | str]) -> dict[str, object]:
    scored = {k: v for k, v in per_subject.items() if isinstance(v, Scores)}
    if not scored:
        return {"n": 0, "subjects_scored": 0}
    c = {k: sum(s.confusion[k] for s in scored.values()) for k in ("tn", "fp", "fn", "tp")}
    y = np.concatenate([s.y for s in scored.values()])
    p = np.concatenate([s.p for s in scored.values()])
    both = bool(c["tp"] + c["fn"]) and bool(c["tn"] + c["fp"])
    f1 = [2 * c["tp"] / max(2 * c["tp"] + c["fp"] + c["fn"], 1),
          2 * c["tn"] / max(2 * c["tn"] + c["fn"] + c["fp"], 1)]
    bal = [s.balanced_accuracy for s in scored.values() if s.balanced_accuracy is not None]
    tasks: dict[str, list[int]] = {}
    for s in scored.values():
        for t, (n, k) in s.task_called.items():
            acc = tasks.setdefault(t, [0, 0])
            acc[0] += n
            acc[1] += k
    return {
        "n": int(y.size),
        "balanced_accuracy": round(_balanced(c), 4) if both else None,
        "auroc": round(float(roc_auc_score(y, p)), 4) if both else None,
        "macro_f1": round(float(np.mean(f1)), 4) if both else None,
        "per_subject_balanced_accuracy_mean": round(float(np.mean(bal)), 4) if bal else None,
        "subjects_scored": len(scored),
        "predicted_stress_rate_by_task": {t: round(k / n, 3) for t, (n, k) in
                                          sorted(tasks.items()) if n},
    }


def _paired_delta(per_subject: dict[str, dict[str, Scores | str]], a: str, b: str
                  ) -> dict[str, object]:
    """Per-subject balanced accuracy, variant ``b`` minus ``a`` (mean, 95% bootstrap CI)."""
    d = []
    for res in per_subject.values():
        sa, sb = res[a], res[b]
        if isinstance(sa, Scores) and isinstance(sb, Scores) and \
                sa.balanced_accuracy is not None and sb.balanced_accuracy is not None:
            d.append(sb.balanced_accuracy - sa.balanced_accuracy)
    if not d:
        return {"mean": None, "subjects": 0}
    v = np.asarray(d)
    means = v[np.random.default_rng(0).integers(0, v.size, (2000, v.size))].mean(axis=1)
    return {"mean": round(float(v.mean()), 4), "ci95": [round(float(np.percentile(means, q)), 4)
                                                       for q in (2.5, 97.5)],
            "subjects": int(v.size)}


def _fmt(x: object) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--subjects", type=int, default=None,
                    help="use only the first N subjects (a quick run)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the orders and the models")
    ap.add_argument("--gap-s", type=float, default=30.0,
                    help="seconds without samples between spliced segments (default 30)")
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"{a.data} is absent: no reordering check (see shared/data/README.md)")
        print(json.dumps({"skipped": "data folder absent"}))
        sys.exit(0)
    paths = find_recordings(a.data)[: a.subjects]
    if len(paths) < 3:
        sys.exit(f"need at least 3 subjects for leave-one-subject-out, got {len(paths)}")
    jobs = max(1, a.jobs)
    t0 = time.perf_counter()
    console = Console(stderr=True)
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())
    with Progress(*cols, console=console) as bar:
        task = bar.add_task("featurise (3 variants)", total=len(paths))
        subjects: list[Subject | None] = [None] * len(paths)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futs = {pool.submit(_featurize, p, i, a.seed, a.gap_s): i
                    for i, p in enumerate(paths)}
            for fut in as_completed(futs):
                subjects[futs[fut]] = fut.result()
                bar.advance(task)
        cohort = [s for s in subjects if s is not None]
        featurised = time.perf_counter() - t0
        task = bar.add_task("LOSO folds", total=len(cohort))
        stress: dict[str, dict[str, Scores | str]] = {}
        ends: dict[str, dict[str, set[int]]] = {}
        with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker,
                                 initargs=(cohort, jobs)) as pool:
            folds = [pool.submit(_fold, i, a.seed) for i in range(len(cohort))]
            for done in as_completed(folds):
                i, res, fold_ends = done.result()
                sid = cohort[i].subject_id
                stress[sid] = res
                ends[sid] = {v: set(e) for v, e in zip(VARIANTS, fold_ends, strict=True)}
                bar.advance(task)
    session = _session_folds(cohort, ends, a.seed)

    def by(per: dict[str, dict[str, Scores | str]], key: str) -> dict[str, Scores | str]:
        return {sid: res[key] for sid, res in sorted(per.items())}

    out: dict[str, object] = {}
    for v in VARIANTS:
        out[v] = _pool(by(stress, v))
    for v in VARIANTS:
        out[f"session_time_{v}"] = _pool(by(session, v))
    out["session_time_all_labelled_windows"] = {v: _pool(by(session, f"{v}_all"))
                                                for v in ("original", "reordered")}
    out["per_subject_balanced_accuracy_delta"] = {
        "stress_model_reordered_minus_original": _paired_delta(stress, "original", "reordered"),
        "stress_model_reordered_minus_spliced": _paired_delta(
            stress, "spliced_original_order", "reordered"),
        "session_time_reordered_minus_original": _paired_delta(
            session, "original", "reordered"),
    }
    not_scored = {f"{sid}:{v}": r for sid, res in stress.items() for v, r in res.items()
                  if isinstance(r, str)}
    out.update({
        "subjects": len(cohort), "seed": a.seed, "gap_s": a.gap_s,
        "orders": {s.subject_id: [s.tasks[k] for k in s.order] for s in cohort},
        "not_scored": not_scored,
        "featurise_s": round(featurised, 1), "total_s": round(time.perf_counter() - t0, 1),
    })
    print(f"{len(cohort)} subjects, LOSO, stress model trained on original order "
          f"(seed {a.seed}); pooled over held-out windows:")
    print(f"{'':38s} {'n':>6s} {'bal.acc':>8s} {'AUROC':>7s} {'macroF1':>8s} {'subj.mean':>9s}")
    rows = [*(("stress model: " + v, out[v]) for v in VARIANTS),
            *(("session time: " + v, out[f"session_time_{v}"]) for v in VARIANTS)]
    for name, r in rows:
        assert isinstance(r, dict)
        print(f"{name:38s} {r['n']:>6d} {_fmt(r.get('balanced_accuracy')):>8s} "
              f"{_fmt(r.get('auroc')):>7s} {_fmt(r.get('macro_f1')):>8s} "
              f"{_fmt(r.get('per_subject_balanced_accuracy_mean')):>9s}")
    if not_scored:
        print(f"not scored: {not_scored}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
