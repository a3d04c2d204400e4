"""Batch path: a whole recording through the same :class:`SubjectStream` as live data.

Example
-------
>>> from wearemo.datasets import load_recording
>>> rec = load_recording("firmware_bridge/virtual_wearable/data/"
...                      "stress-predict-S02-excerpt")                        # doctest: +SKIP
>>> frame = windows_to_frame(featurize_recording(rec))                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pandas as pd

from wearemo.features.compute import FEATURE_NAMES
from wearemo.features.config import WindowConfig
from wearemo.features.stream import SubjectStream
from wearemo.features.window import FeatureWindow
from wearemo.samples import Channel

if TYPE_CHECKING:
    from wearemo.datasets import Recording

__all__ = ["featurize_recording", "windows_to_frame"]


def featurize_recording(
    rec: Recording,
    *,
    config: WindowConfig | None = None,
    chunk_s: float = 5.0,
    on_progress: Callable[[float], None] | None = None,
) -> list[FeatureWindow]:
    """Featurise a recording by streaming it in time-ordered chunks through ``SubjectStream``.

    The stream waits for every channel present in the recording, so the result does not
    depend on ``chunk_s`` (as long as it is below ``config.lateness_s``) and equals what a live
    stream of the same data yields.

    Parameters
    ----------
    rec
        A loaded recording (:func:`wearemo.datasets.load_recording`).
    config
        Window parameters (default ``WindowConfig()``).
    chunk_s
        Batch length fed to the stream, s.
    on_progress
        Called with the fraction of the recording's span streamed so far (0..1), after each
        batch and once with 1.0 at the end (e.g. to drive a progress bar).

    Returns
    -------
    list of FeatureWindow
        In window order.

    Example
    -------
    >>> ws = featurize_recording(rec, config=WindowConfig(step_s=10))        # doctest: +SKIP
    """
    cfg = config or WindowConfig()
    if chunk_s >= cfg.lateness_s > 0:
        raise ValueError(
            f"chunk_s ({chunk_s}) must be below lateness_s ({cfg.lateness_s}) for exact windows"
        )
    stream = SubjectStream(rec.subject_id, config=cfg,
                           expected_channels=frozenset(rec.channels))
    out: list[FeatureWindow] = []
    span = max(rec.end_ns - rec.start_ns, 1)
    for batch in rec.iter_batches(chunk_s=chunk_s):
        out.extend(stream.push(batch))
        if on_progress is not None:
            on_progress(min(1.0, (batch.start_ns - rec.start_ns) / span))
    out.extend(stream.flush())
    if on_progress is not None:
        on_progress(1.0)
    return out


def windows_to_frame(windows: Iterable[FeatureWindow]) -> pd.DataFrame:
    """One row per window: ``subject``, ``window_start``/``window_end`` (unix s), every
    feature (NaN when absent), ``coverage_*``, ``samples_*``, ``quality_*``, ``motion``,
    ``beat_source``, ``n_beats`` and ``reasons`` (why features are absent, ``group: reason``
    joined by `` | ``; empty when none is).

    Example
    -------
    >>> windows_to_frame([FeatureWindow("s1", 0, 60 * 10**9, {"hr_mean_bpm": 70.0})]).shape
    (1, 48)
    """
    rows = []
    quality_keys: list[str] = []
    for w in windows:
        row: dict[str, object] = {
            "subject": w.subject_id,
            "window_start": w.start_ns / 1e9,
            "window_end": w.end_ns / 1e9,
        }
        for name in FEATURE_NAMES:
            row[name] = w.features.get(name, float("nan"))
        for name, value in w.features.items():
            if name not in row:
                row[name] = value
        for ch in Channel:
            row[f"coverage_{ch.value}"] = w.coverage.get(ch.value, 0.0)
        for ch in Channel:
            row[f"samples_{ch.value}"] = w.sample_counts.get(ch.value, 0)
        for key, value in w.quality.items():
            if key not in quality_keys:
                quality_keys.append(key)
            row[f"quality_{key}"] = value
        row["motion"] = w.motion
        row["beat_source"] = w.beat_source
        row["n_beats"] = w.n_beats
        row["reasons"] = " | ".join(f"{k}: {v}" for k, v in w.reasons.items())
        rows.append(row)
    return pd.DataFrame(rows)
