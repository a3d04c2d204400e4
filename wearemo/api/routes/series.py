"""A subject's stored feature windows and raw samples, by time range and page."""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Response

from wearemo.api.deps import KnownSubject, StoreDep
from wearemo.api.params import Range, next_start_header
from wearemo.api.schemas import ErrorResponse, FeatureWindowOut, SampleSeries, ValidationResponse
from wearemo.features import FeatureWindow
from wearemo.samples import CHANNEL_AXES, CHANNEL_UNITS, Channel
from wearemo.store.export import iter_batches

__all__ = ["router", "window_out"]

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown subject."},
    422: {"model": ValidationResponse, "description": "Bad parameter (named in `field`)."},
}


def window_out(w: FeatureWindow) -> FeatureWindowOut:
    """A stored window as its response body (NaN features become ``null``: JSON has no NaN).

    Example
    -------
    >>> window_out(FeatureWindow("s1", 0, 60, {"hrv_sdnn_ms": float("nan")})).features
    {'hrv_sdnn_ms': None}
    """
    return FeatureWindowOut(
        subject_id=w.subject_id,
        start_ns=w.start_ns,
        end_ns=w.end_ns,
        features={k: None if math.isnan(v) else v for k, v in w.features.items()},
        sample_counts=w.sample_counts,
        coverage=w.coverage,
        quality=w.quality,
        motion=w.motion,
        beat_source=w.beat_source,
        n_beats=w.n_beats,
        methods=w.methods,
        reasons=w.reasons,
    )


@router.get("/{subject_id}/features", responses=_ERRORS)
def feature_history(
    subject_id: KnownSubject,
    store: StoreDep,
    response: Response,
    span: Range,
    limit: Annotated[int, Query(ge=1, le=100_000, description="Most windows returned.")] = 1000,
) -> list[FeatureWindowOut]:
    """Feature windows whose end lies in ``[start, end)``, oldest first.

    When ``limit`` windows are returned, the ``X-Next-Start`` header gives the ``start`` (unix
    seconds) of the next page.
    """
    windows = store.windows(subject_id, start_ns=span.start_ns, end_ns=span.end_ns, limit=limit)
    if len(windows) == limit:
        response.headers["X-Next-Start"] = next_start_header(windows[-1].end_ns + 1)
    return [window_out(w) for w in windows]


@router.get("/{subject_id}/samples", responses=_ERRORS)
def sample_history(
    subject_id: KnownSubject,
    store: StoreDep,
    response: Response,
    channel: Annotated[Channel, Query(description="Which channel.")],
    span: Range,
    limit: Annotated[
        int, Query(ge=1, le=1_000_000, description="Most samples returned.")
    ] = 100_000,
) -> SampleSeries:
    """Raw samples of one channel with time in ``[start, end)``, as stored, time-ordered.

    Values are in the channel's unit (``unit``). When ``limit`` samples are returned, the
    ``X-Next-Start`` header gives the ``start`` (unix seconds) of the next page.
    """
    times: list[np.ndarray] = []
    values: list[np.ndarray] = []
    n = 0
    for batch in iter_batches(store, subject_id, channel, span.start_ns, span.end_ns):
        t = batch.times_ns()
        lo = 0 if span.start_ns is None else int(t.searchsorted(span.start_ns))
        hi = len(t) if span.end_ns is None else int(t.searchsorted(span.end_ns))
        hi = min(hi, lo + limit - n)
        times.append(t[lo:hi])
        values.append(batch.values_array()[lo:hi])
        n += hi - lo
        if n >= limit:
            break
    shape: tuple[int, ...] = (0, 3) if CHANNEL_AXES[channel] == 3 else (0,)
    t_all = np.concatenate(times) if times else np.zeros(0, np.int64)
    v_all = np.concatenate(values) if values else np.zeros(shape)
    if n >= limit:
        response.headers["X-Next-Start"] = next_start_header(int(t_all[-1]) + 1)
    return SampleSeries(
        subject_id=subject_id,
        channel=channel,
        unit=CHANNEL_UNITS[channel],
        times_ns=t_all.tolist(),
        values=v_all.tolist(),
    )
