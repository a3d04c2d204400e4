"""FHIR R4 ``Observation`` search and Open mHealth data points of a subject's stored data."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError

from wearemo.api.deps import KnownSubject, StoreDep
from wearemo.api.interop import FHIR_CODES, LOINC, fhir_bundle, omh_heart_rate, omh_rr_interval
from wearemo.api.params import Range, next_start_header
from wearemo.api.schemas import ErrorResponse, OmhDataPoint, ValidationResponse
from wearemo.features import FeatureWindow
from wearemo.samples import Channel
from wearemo.store import StateStore
from wearemo.store.export import iter_batches

__all__ = ["FHIR_JSON", "parse_codes", "router"]

router = APIRouter(prefix="/v1/subjects", tags=["interoperability"])

FHIR_JSON = "application/fhir+json"
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown subject."},
    422: {"model": ValidationResponse, "description": "Bad parameter (named in `field`)."},
}
_BEAT_CHANNEL = {"rr": Channel.RR, "ppg": Channel.PPG}
Limit = Annotated[int, Query(ge=1, le=10_000, description="Most windows / beats per page.")]


def parse_codes(value: str | None) -> list[str]:
    """FHIR token list (``8867-4,80404-7``, each optionally ``http://loinc.org|``-prefixed;
    ``|`` also separates bare codes) -> known LOINC codes; 422 naming ``code`` otherwise.

    Example
    -------
    >>> parse_codes("http://loinc.org|8867-4,80404-7"), parse_codes("8867-4|80404-7")
    (['8867-4', '80404-7'], ['8867-4', '80404-7'])
    """
    if value is None:
        return list(FHIR_CODES)
    out: list[str] = []
    for token in value.split(","):
        token = token.strip().removeprefix(f"{LOINC}|")
        for code in token.split("|"):
            if code not in FHIR_CODES:
                raise RequestValidationError([{
                    "type": "value_error", "loc": ("query", "code"),
                    "msg": f"code: {code[:100]!r} is not supported; options: "
                    f"{', '.join(FHIR_CODES)} (LOINC)",
                }])
            if code not in out:
                out.append(code)
    return out


def _device_of(store: StateStore, w: FeatureWindow) -> str | None:
    # The device whose beats (or, without beats, heart-rate samples) the window was built on.
    channel = _BEAT_CHANNEL.get(w.beat_source, Channel.HR)
    found = store.batches(w.subject_id, channel=channel, start_ns=w.start_ns, end_ns=w.end_ns,
                          limit=1)
    return found[0].device_id if found else None


@router.get(
    "/{subject_id}/fhir/Observation",
    response_class=Response,
    responses={
        200: {"description": "A FHIR R4 Bundle (type searchset) of Observations.",
              "content": {FHIR_JSON: {"schema": {"type": "object"}}}},
        **_ERRORS,
    },
)
def fhir_observations(
    subject_id: KnownSubject,
    store: StoreDep,
    request: Request,
    span: Range,
    code: Annotated[str | None, Query(
        description="LOINC codes, comma-separated: 8867-4 (heart rate, /min) and/or 80404-7 "
        "(HRV SDNN, ms); both when absent.", examples=["8867-4,80404-7"])] = None,
    limit: Limit = 1000,
) -> Response:
    """Heart rate and HRV SDNN of each feature window ending in ``[start, end)`` as FHIR R4.

    One ``Observation`` per window and code with a value (category vital-signs,
    ``effectivePeriod`` = the window, subject and device by pseudonymous identifier). When
    ``limit`` windows were read, the Bundle's ``next`` link and ``X-Next-Start`` give the next
    page.
    """
    codes = parse_codes(code)
    windows = store.windows(subject_id, start_ns=span.start_ns, end_ns=span.end_ns, limit=limit)
    headers = {}
    next_url = None
    if len(windows) == limit:
        headers["X-Next-Start"] = next_start_header(windows[-1].end_ns + 1)
        next_url = str(request.url.include_query_params(start=headers["X-Next-Start"]))
    bundle = fhir_bundle(((w, _device_of(store, w)) for w in windows), codes=codes,
                         self_url=str(request.url), next_url=next_url)
    return Response(bundle.model_dump_json(exclude_none=True), media_type=FHIR_JSON,
                    headers=headers)


def _source(request: Request) -> str:
    return f"wearemo {request.app.version}"


@router.get("/{subject_id}/omh/heart-rate", responses=_ERRORS)
def omh_heart_rates(
    subject_id: KnownSubject, store: StoreDep, request: Request, response: Response,
    span: Range, limit: Limit = 1000,
) -> list[OmhDataPoint]:
    """``omh:heart-rate:2.0`` data points: the mean heart rate of each window ending in
    ``[start, end)`` (windows without one are skipped). Paginated by ``X-Next-Start``."""
    windows = store.windows(subject_id, start_ns=span.start_ns, end_ns=span.end_ns, limit=limit)
    if len(windows) == limit:
        response.headers["X-Next-Start"] = next_start_header(windows[-1].end_ns + 1)
    return [OmhDataPoint(**p) for p in omh_heart_rate(windows, source=_source(request))]


@router.get("/{subject_id}/omh/rr-interval", responses=_ERRORS)
def omh_rr_intervals(
    subject_id: KnownSubject, store: StoreDep, request: Request, response: Response,
    span: Range, limit: Limit = 1000,
) -> list[OmhDataPoint]:
    """``omh:rr-interval:1.0`` data points: the device's beat-to-beat intervals (channel
    ``rr``) closing in ``[start, end)``. PPG-derived beats are not stored, so a subject
    without an ``rr`` channel has none. Paginated by ``X-Next-Start``."""
    times: list[int] = []
    values: list[float] = []
    for batch in iter_batches(store, subject_id, Channel.RR, span.start_ns, span.end_ns):
        for t, v in zip(batch.times_ns().tolist(), batch.values_array().tolist(), strict=True):
            if (span.start_ns is None or t >= span.start_ns) and (
                    span.end_ns is None or t < span.end_ns):
                times.append(t)
                values.append(v)
        if len(times) >= limit:
            break
    times, values = times[:limit], values[:limit]
    if len(times) == limit:
        response.headers["X-Next-Start"] = next_start_header(times[-1] + 1)
    points = omh_rr_interval(subject_id, times, values, source=_source(request))
    return [OmhDataPoint(**p) for p in points]
