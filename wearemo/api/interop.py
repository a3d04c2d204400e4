"""Standard health-data shapes of stored windows and beats: FHIR R4 and Open mHealth.

FHIR: one ``Observation`` per feature window and code, built and validated with
``fhir.resources``. The installed release (8.x) defaults to FHIR R5 and ships R4B (4.3), the
R4-compatible release, but no separate R4 (4.0.1) package; every element used here
(``Observation.status/category/code/subject/effectivePeriod/valueQuantity/device/method``,
``Bundle`` searchset) is identical in R4 and R4B, so the models of ``fhir.resources.R4B`` are
used explicitly. Codes: heart rate LOINC 8867-4 in UCUM ``/min`` (the window's
``hr_mean_bpm``, else the device's own ``hr_device_mean_bpm``) and HRV SDNN LOINC 80404-7 in
UCUM ``ms`` (``hrv_sdnn_ms``), category ``vital-signs``. The subject is referenced by its
pseudonymous id as a logical identifier (system :data:`SUBJECT_SYSTEM`), the device the same way.

Open mHealth: ``omh:heart-rate:2.0`` data points (one per window, ``descriptive_statistic``
``average`` over the window's interval) and ``omh:rr-interval:1.0`` data points (one per stored
``rr`` sample, the interval ending at the beat that closes it), each with the
``omh:data-point:1.0`` header.

Times are ISO-8601 UTC with microseconds (FHIR and Open mHealth date-times; nanoseconds are cut).

Example
-------
>>> from wearemo.features import FeatureWindow
>>> w = FeatureWindow("s1", 0, 60 * 10**9, {"hr_mean_bpm": 72.0, "hrv_sdnn_ms": 41.5})
>>> bundle = fhir_bundle([(w, "d1")], codes=["8867-4"], self_url="http://x/obs")
>>> obs = bundle.entry[0].resource
>>> obs.valueQuantity.value, obs.valueQuantity.code, obs.effectivePeriod.end.isoformat()
(Decimal('72.0'), '/min', '1970-01-01T00:01:00+00:00')
>>> omh_heart_rate([w], source="wearemo")[0]["body"]["heart_rate"]
{'value': 72.0, 'unit': 'beats/min'}
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntrySearch, BundleLink
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from wearemo.features import FeatureWindow

__all__ = [
    "DEVICE_SYSTEM",
    "FHIR_CODES",
    "SUBJECT_SYSTEM",
    "ObservationCode",
    "fhir_bundle",
    "fhir_observation",
    "iso_time",
    "omh_heart_rate",
    "omh_rr_interval",
]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
#: Identifier systems of the pseudonymous subject and device ids.
SUBJECT_SYSTEM = "urn:wearemo:subject-id"
DEVICE_SYSTEM = "urn:wearemo:device-id"
_NAMESPACE = uuid.UUID("6f1c3d0e-6d0b-4f57-9a1e-5b2f7c1e9a42")  # wearemo's uuid5 namespace


@dataclass(frozen=True, slots=True)
class ObservationCode:
    """A LOINC code, its UCUM unit and the window feature(s) it is read from, in order."""

    code: str
    display: str
    ucum: str
    unit: str
    features: tuple[str, ...]
    method: str


#: The observations a window can give, by LOINC code.
FHIR_CODES: dict[str, ObservationCode] = {
    "8867-4": ObservationCode(
        "8867-4", "Heart rate", "/min", "beats/minute", ("hr_mean_bpm", "hr_device_mean_bpm"),
        "mean over the window: 60000 / mean beat interval (hr_mean_bpm), else the mean of the "
        "device's heart-rate samples (hr_device_mean_bpm)",
    ),
    "80404-7": ObservationCode(
        "80404-7", "R-R interval.standard deviation (Heart rate variability)", "ms", "ms",
        ("hrv_sdnn_ms",), "SDNN of the window's beat intervals (hrv_sdnn_ms)",
    ),
}

_VITAL_SIGNS = CodeableConcept(
    coding=[
        Coding(
            system="http://terminology.hl7.org/CodeSystem/observation-category",
            code="vital-signs",
            display="Vital Signs",
        )
    ]
)


def iso_time(ns: int) -> str:
    """Unix ns as ISO-8601 UTC with microseconds.

    Example
    -------
    >>> iso_time(1_700_000_000_123_456_789)
    '2023-11-14T22:13:20.123456Z'
    """
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{rest // 1000:06d}Z"


def _datetime(ns: int) -> datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)


def _value(window: FeatureWindow, code: ObservationCode) -> float | None:
    for name in code.features:
        value = window.features.get(name)
        if value is not None and math.isfinite(value):
            return float(value)
    return None


def _id(*parts: object) -> str:
    # FHIR ids allow [A-Za-z0-9.-] only; subject ids may hold ':' and '_', so hash them.
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def fhir_observation(
    window: FeatureWindow, code: ObservationCode, *, device_id: str | None = None
) -> Observation | None:
    """The FHIR R4 ``Observation`` of one window and code; ``None`` when the value is absent.

    Example
    -------
    >>> w = FeatureWindow("s1", 0, 60 * 10**9, {"hrv_sdnn_ms": 41.5})
    >>> fhir_observation(w, FHIR_CODES["80404-7"]).valueQuantity.unit
    'ms'
    >>> fhir_observation(w, FHIR_CODES["8867-4"]) is None
    True
    """
    value = _value(window, code)
    if value is None:
        return None
    return Observation(
        id=_id(window.subject_id, code.code, window.end_ns),
        status="final",
        category=[_VITAL_SIGNS],
        code=CodeableConcept(
            coding=[Coding(system=LOINC, code=code.code, display=code.display)],
            text=code.display,
        ),
        subject=Reference(
            type="Patient",
            identifier=Identifier(system=SUBJECT_SYSTEM, value=window.subject_id),
        ),
        effectivePeriod=Period(start=_datetime(window.start_ns), end=_datetime(window.end_ns)),
        valueQuantity=Quantity(
            value=Decimal(repr(value)), unit=code.unit, system=UCUM, code=code.ucum
        ),
        method=CodeableConcept(text=f"wearemo {code.method}; beats from {window.beat_source}"),
        device=None
        if device_id is None
        else Reference(
            type="Device", identifier=Identifier(system=DEVICE_SYSTEM, value=device_id),
            display=device_id,
        ),
    )


def fhir_bundle(
    windows: Iterable[tuple[FeatureWindow, str | None]],
    *,
    codes: Sequence[str],
    self_url: str,
    next_url: str | None = None,
) -> Bundle:
    """A FHIR ``Bundle`` (searchset) of the observations of ``windows`` for ``codes``.

    Parameters
    ----------
    windows
        Feature windows, oldest first, each with the device id that measured it (or ``None``).
    codes
        LOINC codes of :data:`FHIR_CODES`; one observation per window and code with a value.
    self_url, next_url
        The search's own URL and the next page's, as the bundle's ``link``.

    Example
    -------
    >>> fhir_bundle([], codes=["8867-4"], self_url="http://x/obs").total
    0
    """
    entries = []
    for window, device_id in windows:
        for code in codes:
            obs = fhir_observation(window, FHIR_CODES[code], device_id=device_id)
            if obs is not None:
                entries.append(
                    BundleEntry(
                        fullUrl=f"urn:uuid:{uuid.uuid5(_NAMESPACE, str(obs.id))}",
                        resource=obs,
                        search=BundleEntrySearch(mode="match"),
                    )
                )
    links = [BundleLink(relation="self", url=self_url)]
    if next_url is not None:
        links.append(BundleLink(relation="next", url=next_url))
    return Bundle(type="searchset", total=len(entries), link=links, entry=entries or None)


def _header(schema: str, version: str, point_id: str, subject_id: str, created_ns: int,
            source: str) -> dict[str, Any]:
    return {
        "id": point_id,
        "creation_date_time": iso_time(created_ns),
        "schema_id": {"namespace": "omh", "name": schema, "version": version},
        "acquisition_provenance": {"source_name": source, "modality": "sensed"},
        "user_id": subject_id,
    }


def omh_heart_rate(windows: Iterable[FeatureWindow], *, source: str) -> list[dict[str, Any]]:
    """``omh:heart-rate:2.0`` data points: each window's mean heart rate over its interval.

    Windows without a heart rate (neither ``hr_mean_bpm`` nor ``hr_device_mean_bpm``) are
    skipped. ``source`` names the producing system in the header's provenance.

    Example
    -------
    >>> omh_heart_rate([FeatureWindow("s1", 0, 60 * 10**9)], source="wearemo")
    []
    """
    code = FHIR_CODES["8867-4"]
    out = []
    for w in windows:
        value = _value(w, code)
        if value is None:
            continue
        out.append({
            "header": _header("heart-rate", "2.0", str(uuid.uuid5(_NAMESPACE, f"hr|{w.subject_id}|"
                              f"{w.end_ns}")), w.subject_id, w.end_ns, source),
            "body": {
                "heart_rate": {"value": value, "unit": "beats/min"},
                "effective_time_frame": {"time_interval": {
                    "start_date_time": iso_time(w.start_ns),
                    "end_date_time": iso_time(w.end_ns),
                }},
                "descriptive_statistic": "average",
            },
        })
    return out


def omh_rr_interval(
    subject_id: str, times_ns: Sequence[int], rr_ms: Sequence[float], *, source: str
) -> list[dict[str, Any]]:
    """``omh:rr-interval:1.0`` data points from stored ``rr`` samples (stamped at the closing beat).

    Each interval's time frame runs from the opening beat (time minus the interval) to the
    closing one. Non-finite values are skipped.

    Example
    -------
    >>> p = omh_rr_interval("s1", [10**9], [812.5], source="wearemo")[0]
    >>> p["body"]["rr_interval"], p["body"]["effective_time_frame"]["time_interval"]
    ({'value': 812.5, 'unit': 'ms'}, {'start_date_time': '1970-01-01T00:00:00.187500Z', \
'end_date_time': '1970-01-01T00:00:01.000000Z'})
    """
    out = []
    for t, rr in zip(times_ns, rr_ms, strict=True):
        if not math.isfinite(rr):
            continue
        out.append({
            "header": _header("rr-interval", "1.0",
                              str(uuid.uuid5(_NAMESPACE, f"rr|{subject_id}|{t}")), subject_id,
                              int(t), source),
            "body": {
                "rr_interval": {"value": float(rr), "unit": "ms"},
                "effective_time_frame": {"time_interval": {
                    "start_date_time": iso_time(int(t) - round(rr * 1e6)),
                    "end_date_time": iso_time(int(t)),
                }},
            },
        })
    return out
