"""Batch work on recording folders: featurise cohorts, build training sets, predict.

Recordings enter at :mod:`wearemo.datasets` and take exactly the streaming path
(``SubjectStream`` → ``SubjectEstimator``), so a folder processed here gets the same windows,
features and states as the same data streamed live through the API.

Example
-------
>>> frame = predict_rows(DEFAULT_EXCERPT, model="default", jobs=1)  # doctest: +SKIP
>>> sorted(frame.state.unique())  # doctest: +SKIP
['non_stress', 'stress', 'withheld']
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from wearemo.datasets import FINGERPRINT_CHANNELS, Recording, find_recordings, load_recording
from wearemo.features import (
    FEATURE_NAMES,
    FeatureWindow,
    WindowConfig,
    featurize_recording,
    windows_to_frame,
)
from wearemo.model import load_model
from wearemo.model.train import LabelledWindows
from wearemo.samples import Channel

__all__ = [
    "DEFAULT_EXCERPT",
    "RecordingIssue",
    "featurize_dirs",
    "frame_to_windows",
    "labelled_windows",
    "manifest_fingerprints",
    "predict_rows",
    "recording_fingerprints",
    "recording_folders",
    "tracking_report",
    "training_overlap",
]

#: The real excerpt the virtual wearable replays by default (Stress-Predict S02, MIT license).
DEFAULT_EXCERPT = (
    Path(__file__).resolve().parent.parent
    / "firmware_bridge" / "virtual_wearable" / "data" / "stress-predict-S02-excerpt"
)

#: Windows learned from must lie at least this much inside one labelled segment.
TRAIN_MIN_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class RecordingIssue:
    """Something a batch run reports about one recording folder.

    Attributes
    ----------
    folder
        The recording folder.
    message
        One line naming the file, row and token where it applies.
    skipped
        True: the recording could not be read and was left out of the run. False: a warning;
        the recording's valid data was used (e.g. a last line cut mid-line was dropped).

    Example
    -------
    >>> RecordingIssue(Path("S07"), "S07/EDA.csv row 5: 'NaN' is not a finite number", True)
    ... # doctest: +ELLIPSIS
    RecordingIssue(folder=PosixPath('S07'), message=..., skipped=True)
    """

    folder: Path
    message: str
    skipped: bool


#: Called with each issue; when a batch function gets none, the first bad recording raises.
OnIssue = Callable[[RecordingIssue], None]

#: Errors that mean "this recording cannot be read", not a bug: skipped when reporting issues.
_UNREADABLE = (ValueError, OSError)


def recording_folders(root: Path, *, on_issue: OnIssue | None = None) -> list[Path]:
    """The recording folders under ``root`` (:func:`~wearemo.datasets.find_recordings`).

    Subfolders that hold no channel file are reported through ``on_issue`` as warnings (a
    subject folder whose files are named ``eda.csv`` would otherwise vanish from a cohort
    silently); hidden folders are left alone.

    Raises
    ------
    ValueError
        ``root`` is not a folder or holds no recording folder (one line saying which).

    Example
    -------
    >>> recording_folders(DEFAULT_EXCERPT) == [DEFAULT_EXCERPT]
    True
    """
    paths = find_recordings(root)
    if on_issue is not None and paths != [Path(root)]:
        for sub in sorted(Path(root).iterdir()):
            if sub.is_dir() and sub not in paths and not sub.name.startswith("."):
                on_issue(RecordingIssue(sub, f"{sub}: not a recording folder (no channel "
                                        "file such as EDA.csv or BVP.csv.gz); ignored", False))
    return paths


def _collect(
    jobs: Sequence[tuple[Path, Callable[[], Any] | Future[Any]]],
    on_issue: OnIssue | None,
) -> list[tuple[Path, Any]]:
    """(folder, result) of per-recording work, in ``jobs`` order. Each job returns (result,
    warnings); warnings are reported, unreadable recordings reported and left out (or raise,
    without ``on_issue``)."""
    out = []
    for folder, job in jobs:
        try:
            result = job.result() if isinstance(job, Future) else job()
        except _UNREADABLE as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            if str(folder) not in message:
                message = f"{folder}: {message}"
            if on_issue is None:
                raise ValueError(message) from exc
            on_issue(RecordingIssue(folder, message, True))
            continue
        if on_issue is not None:
            for w in result[1]:
                on_issue(RecordingIssue(folder, w, False))
        out.append((folder, result[0]))
    return out


def _featurize_one(
    args: tuple[Path, WindowConfig], on_progress: Callable[[float], None] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    path, config = args
    rec = load_recording(path)
    frame = windows_to_frame(featurize_recording(rec, config=config, on_progress=on_progress))
    return _add_labels(frame, rec), rec.warnings


def _add_labels(frame: pd.DataFrame, rec: Recording) -> pd.DataFrame:
    labels: list[str | None] = []
    tasks: list[str | None] = []
    valence: list[float] = []
    pure: list[bool] = []
    for a, b in zip(frame.window_start, frame.window_end, strict=True):
        s_ns, e_ns = round(a * 1e9), round(b * 1e9)
        seg = rec.window_label(s_ns, e_ns)
        labels.append(seg.label if seg else None)
        tasks.append(seg.task if seg else None)
        valence.append(seg.valence if seg and seg.valence is not None else math.nan)
        pure.append(rec.window_label(s_ns, e_ns, min_fraction=TRAIN_MIN_FRACTION) is not None)
    if len(frame):
        frame["label"] = pd.Series(labels, index=frame.index, dtype=object)
        frame["task"] = pd.Series(tasks, index=frame.index, dtype=object)
        frame["valence"] = valence
        frame["label_pure"] = pure
    return frame


def featurize_dirs(
    root: Path,
    *,
    window_s: float = 60.0,
    step_s: float = 5.0,
    jobs: int = 2,
    on_progress: Callable[[str, float], None] | None = None,
    config: WindowConfig | None = None,
    on_issue: OnIssue | None = None,
) -> pd.DataFrame:
    """Featurise every recording under ``root`` (one row per window, with labels if present).

    ``on_progress(recording_name, fraction)`` is called as recordings advance: continuously
    within each recording when they run in this process, once per finished recording when
    they run in a pool (``jobs > 1`` and several recordings). ``config``, when given, replaces
    ``WindowConfig(length_s=window_s, step_s=step_s)``. With ``on_issue``, a recording that
    cannot be read is reported and left out, and loader warnings are reported; without it,
    the first unreadable recording raises a ``ValueError`` naming its folder.

    Example
    -------
    >>> featurize_dirs(DEFAULT_EXCERPT, jobs=1).shape[0] > 100  # doctest: +SKIP
    True
    """
    paths = recording_folders(root, on_issue=on_issue)
    cfg = config or WindowConfig(length_s=window_s, step_s=step_s)
    args = [(p, cfg) for p in paths]
    if jobs > 1 and len(paths) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_featurize_one, a): a[0] for a in args}
            if on_progress is not None:
                for fut in as_completed(futures):
                    on_progress(futures[fut].name, 1.0)
            done = _collect([(folder, fut) for fut, folder in futures.items()], on_issue)
    else:
        def run(a: tuple[Path, WindowConfig]) -> Callable[[], Any]:
            name = a[0].name
            cb = None if on_progress is None else functools.partial(on_progress, name)
            return functools.partial(_featurize_one, a, cb)

        done = _collect([(a[0], run(a)) for a in args], on_issue)
    frames = [f for _, f in done if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def frame_to_windows(frame: pd.DataFrame) -> list[FeatureWindow]:
    """Rebuild feature windows from :func:`windows_to_frame` rows (for cached feature tables)."""
    known = [c for c in frame.columns if c in FEATURE_NAMES]
    quality = [c for c in frame.columns if c.startswith("quality_")]
    out = []
    for r in frame.to_dict("records"):
        out.append(
            FeatureWindow(
                subject_id=str(r["subject"]),
                start_ns=round(r["window_start"] * 1e9),
                end_ns=round(r["window_end"] * 1e9),
                features={k: float(r[k]) for k in known if not math.isnan(r[k])},
                sample_counts={c.value: int(r[f"samples_{c.value}"]) for c in Channel},
                coverage={c.value: float(r[f"coverage_{c.value}"]) for c in Channel},
                quality={q.removeprefix("quality_"): float(r[q]) for q in quality
                         if not math.isnan(r[q])},
                motion=bool(r["motion"]),
                beat_source=str(r["beat_source"]),
                n_beats=int(r["n_beats"]),
            )
        )
    return out


def _code_hash() -> str:
    # Part of the feature-cache key, so an edited feature definition never reuses stale windows.
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for src in sorted([*(here / "signals").rglob("*.py"), *(here / "features").rglob("*.py")]):
        h.update(src.read_bytes())
    return h.hexdigest()


def _data_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for folder in paths:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def labelled_windows(
    root: Path,
    *,
    cache: Path | None = None,
    jobs: int = 2,
    config: WindowConfig | None = None,
    on_issue: OnIssue | None = None,
) -> tuple[list[LabelledWindows], str]:
    """Feature windows and labels of every recording under ``root`` (+ a hash of the data).

    ``cache`` names a Parquet file reused when it was made from the same data, code and window
    configuration (default ``WindowConfig()``); it is written only when every recording could
    be read, so a run that skipped one reports it again next time. ``on_issue`` as in
    :func:`featurize_dirs`.
    """
    paths = recording_folders(root)
    digest = _data_hash(paths)
    cfg = config or WindowConfig()
    key = f"{digest}:{_code_hash()}:{cfg!r}"
    frame: pd.DataFrame | None = None
    if cache is not None and cache.is_file():
        cached = pd.read_parquet(cache)
        if "cache_key" in cached.columns and (cached.cache_key == key).all():
            frame = cached
    if frame is None:
        skipped: list[RecordingIssue] = []

        def note(issue: RecordingIssue) -> None:
            skipped.extend([issue] if issue.skipped else [])
            if on_issue is not None:
                on_issue(issue)

        frame = featurize_dirs(root, jobs=jobs, config=cfg,
                               on_issue=None if on_issue is None else note)
        if cache is not None and not skipped:
            cache.parent.mkdir(parents=True, exist_ok=True)
            frame.assign(cache_key=key).to_parquet(cache, index=False)
    data = []
    for subject, group in frame.groupby("subject", sort=True):
        group = group.sort_values("window_end")
        data.append(
            LabelledWindows(
                subject_id=str(subject),
                windows=frame_to_windows(group),
                labels=[x if isinstance(x, str) else None for x in group.label],
                tasks=[x if isinstance(x, str) else None for x in group.task],
                train_mask=[bool(x) for x in group.label_pure],
                valence=([None if math.isnan(v) else float(v) for v in group.valence]
                         if "valence" in group else None),
            )
        )
    return data, digest


def _predict_one(args: tuple[Path, str, tuple[str, ...]]) -> tuple[pd.DataFrame, list[str]]:
    path, model_name, extra = args
    rec = load_recording(path)
    model = load_model(model_name)
    est = model.for_subject(rec.subject_id, extra=[load_model(m) for m in extra])
    rows: list[dict[str, Any]] = []
    for w in featurize_recording(rec):
        s = est.update(w)
        seg = rec.window_label(w.start_ns, w.end_ns) if rec.labels else None
        rows.append(
            {
                "subject": rec.subject_id,
                "window_start": w.start_ns / 1e9,
                "window_end": w.end_ns / 1e9,
                "state": s.state,
                "p_stress": s.p_stress,
                "reason": s.reason or "",
                "label": seg.label if seg else "",
                "task": seg.task if seg else "",
                "variant": s.variant or "",
                "arousal": s.arousal,
                "affect": s.affect or "",
                "valence": s.valence,
                "explanation": "; ".join(c.text for c in s.explanation),
                "model_version": s.model_version,
            }
        )
    return pd.DataFrame(rows), rec.warnings


def predict_rows(
    root: Path,
    *,
    model: str = "default",
    extra: Sequence[str] = (),
    jobs: int = 2,
    on_issue: OnIssue | None = None,
) -> pd.DataFrame:
    """States for every window of every recording under ``root`` (the streaming estimator).

    ``extra`` names further models (affect, valence) whose outputs join the stress model's.
    ``on_issue`` as in :func:`featurize_dirs`.
    """
    args = [(p, model, tuple(extra)) for p in recording_folders(root, on_issue=on_issue)]
    if jobs > 1 and len(args) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = _collect([(a[0], pool.submit(_predict_one, a)) for a in args], on_issue)
    else:
        done = _collect([(a[0], functools.partial(_predict_one, a)) for a in args], on_issue)
    frames = [f for _, f in done]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: Block length of the training fingerprints written into model manifests.
FINGERPRINT_BLOCK_S = 60


def _fingerprint_one(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    rec = load_recording(path, channels=FINGERPRINT_CHANNELS)
    return rec.fingerprint(block_s=FINGERPRINT_BLOCK_S), []


def recording_fingerprints(
    root: Path, *, subjects: Sequence[str] | None = None, on_issue: OnIssue | None = None
) -> dict[str, dict[str, list[str]]]:
    """Content fingerprints (:meth:`~wearemo.datasets.Recording.fingerprint`) of the
    recordings under ``root``, by subject id (folder name); only ``subjects`` when given.

    ``train`` writes them into the model manifest (``training_fingerprints``) so that
    :func:`training_overlap` can later tell which evaluated recordings the model has seen.

    Example
    -------
    >>> fps = recording_fingerprints(DEFAULT_EXCERPT)
    >>> sorted(fps[DEFAULT_EXCERPT.name])
    ['eda', 'ppg', 'rr']
    """
    paths = [p for p in recording_folders(root) if subjects is None or p.name in subjects]
    jobs = [(p, functools.partial(_fingerprint_one, p)) for p in paths]
    return {folder.name: fp for folder, fp in _collect(jobs, on_issue)}


def manifest_fingerprints(fingerprints: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """``training_fingerprints`` for a model manifest: each channel's digests as one
    space-separated string (compact: ~13 bytes a block).

    Example
    -------
    >>> manifest_fingerprints({"S02": {"eda": ["a1", "b2"]}})
    {'block_s': 60, 'subjects': {'S02': {'eda': 'a1 b2'}}}
    """
    return {"block_s": FINGERPRINT_BLOCK_S,
            "subjects": {s: {ch: " ".join(d) for ch, d in fp.items()}
                         for s, fp in sorted(fingerprints.items())}}


def training_overlap(
    fingerprints: dict[str, dict[str, list[str]]], manifest: dict[str, Any]
) -> tuple[dict[str, str], str]:
    """Which evaluated recordings a model was trained on, and how that was decided.

    Parameters
    ----------
    fingerprints
        Evaluated subject id -> :meth:`~wearemo.datasets.Recording.fingerprint`.
    manifest
        The model's manifest: ``training_fingerprints`` (written by ``wearemo train``:
        ``{"block_s": 60, "subjects": {subject: {channel: "digest digest ..."}}}``) when it has
        them, else only ``training_subjects``.

    Returns
    -------
    seen : dict
        Evaluated subject -> the training subject whose data it holds (a recording is seen
        when one of its non-constant blocks equals one of a training recording's).
    method : str
        How: by content, or by subject id only (a manifest without fingerprints: then a
        renamed recording is missed, and another dataset's ``S02`` is taken for the model's).

    Example
    -------
    >>> manifest = {"training_fingerprints": {"block_s": 60, "subjects": {"S02": {
    ...     "eda": "a1 b2"}}}, "training_subjects": ["S02"]}
    >>> training_overlap({"X9": {"eda": ["b2", "c3"]}, "S02": {"eda": ["d4"]}}, manifest)[0]
    {'X9': 'S02'}
    """
    known = manifest.get("training_fingerprints")
    if not known:
        ids = set(manifest.get("training_subjects") or [])
        return ({s: s for s in sorted(fingerprints) if s in ids},
                "subject ids only: this model's manifest has no recording fingerprints (retrain "
                "to add them), so a renamed recording is missed and another dataset's recording "
                "with a training subject's id is taken for it")
    owners: dict[tuple[str, str], list[str]] = {}
    for subject, channels in known.get("subjects", {}).items():
        for ch, digests in channels.items():
            for d in digests.split() if isinstance(digests, str) else digests:
                owners.setdefault((ch, d), []).append(subject)
    seen: dict[str, str] = {}
    for subject, channels in sorted(fingerprints.items()):
        hits: dict[str, int] = {}
        for ch, digests in channels.items():
            for d in digests:
                for owner in owners.get((ch, d), []):
                    hits[owner] = hits.get(owner, 0) + 1
        if hits:  # most shared blocks; among equals (copies), the same id, else the first
            seen[subject] = min(hits, key=lambda k: (-hits[k], k != subject, k))
    return seen, (f"recording content: {known.get('block_s', FINGERPRINT_BLOCK_S)}-s blocks of "
                  f"{', '.join(c.value for c in FINGERPRINT_CHANNELS)} shared with a training "
                  "recording, whatever the folder is called")


def tracking_report(states: Sequence[dict[str, Any]], source: Path) -> dict[str, Any] | None:
    """How well streamed states follow a recording's labels (``None`` if it has none).

    ``states`` are API state dicts (``window_start_ns``, ``window_end_ns``, ``state``,
    ``p_stress``); each estimated window is compared with the label covering most of it.
    """
    if not (source / "labels.csv").is_file():
        return None
    rec = load_recording(source, channels=[Channel.EDA])
    y: list[int] = []
    called: list[bool] = []
    p: list[float] = []
    per_segment: dict[str, list[int]] = {}
    for s in states:
        if s["state"] == "withheld":
            continue
        seg = rec.window_label(int(s["window_start_ns"]), int(s["window_end_ns"]))
        if seg is None:
            continue
        y.append(1 if seg.label == "stress" else 0)
        called.append(s["state"] == "stress")
        p.append(float(s["p_stress"]))
        key = f"{seg.start_ns // 10**9}:{seg.task}"
        per_segment.setdefault(key, []).append(1 if s["state"] == "stress" else 0)
    if not y:
        return {"windows_compared": 0}
    ya, pred, pa = np.array(y), np.array(called), np.array(p)
    tpr = float(pred[ya == 1].mean()) if (ya == 1).any() else None
    tnr = float((~pred[ya == 0]).mean()) if (ya == 0).any() else None
    auroc = None
    if tpr is not None and tnr is not None:
        auroc = round(float(roc_auc_score(ya, pa)), 3)
    return {
        "windows_compared": len(y),
        "accuracy": float((pred == ya).mean()),
        "balanced_accuracy": (tpr + tnr) / 2 if tpr is not None and tnr is not None else None,
        "auroc": auroc,
        "stress_rate_by_segment": {
            k: round(float(np.mean(v)), 3) for k, v in sorted(per_segment.items())
        },
    }
