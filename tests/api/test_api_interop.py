"""FHIR R4 Observations and Open mHealth data points over real HTTP, validated by
``fhir.resources`` (R4B models) and by ``jsonschema`` against the official Open mHealth
schemas (``tests/fixtures/omh``), with values checked against the uploaded beats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
from api_support import body, serve, settings_for, sim_batches
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from simdata import T0, S

from wearemo.samples import Channel, SampleBatch

pytestmark = pytest.mark.e2e

OMH = Path(__file__).resolve().parents[1] / "fixtures" / "omh"
SUBJECT = "fhir:01"  # ':' is valid in a subject id but not in a FHIR id
DURATION_S = 150
RR_MS = (820.0, 845.0)  # alternating: 72.07 bpm, SDNN 12.5 ms (x sqrt(n / (n - 1)))


def rr_batches(subject: str, duration_s: int) -> list[SampleBatch]:
    """A chest strap's RR intervals, stamped at the closing beat, in 10-s batches."""
    times, values, t = [], [], T0
    for i in range(10_000):
        rr = RR_MS[i % 2]
        t += round(rr * 1e6)
        if t >= T0 + duration_s * S:
            break
        times.append(t)
        values.append(rr)
    out = []
    for k in range(duration_s // 10):
        idx = [i for i, x in enumerate(times) if T0 + k * 10 * S <= x < T0 + (k + 1) * 10 * S]
        out.append(SampleBatch(batch_id=f"rr{k}", subject_id=subject, device_id="strap-7",
                               channel=Channel.RR, timestamps_ns=[times[i] for i in idx],
                               start_ns=times[idx[0]], values=[values[i] for i in idx]))
    return out


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    batches = sim_batches(SUBJECT, DURATION_S)
    rr = rr_batches(SUBJECT, DURATION_S)
    mixed = [b for k in range(DURATION_S // 10) for b in (*batches[2 * k:2 * k + 2], rr[k])]
    with serve(settings_for(tmp_path_factory.mktemp("interop"))) as url, \
            httpx.Client(base_url=url, timeout=60.0) as client:
        r = client.post("/v1/ingest", json=body(mixed))
        assert r.status_code == 200, r.text
        client.rr = rr  # type: ignore[attr-defined]
        yield client


def omh_validator(schema_file: str) -> jsonschema.protocols.Validator:
    """A validator of one schema, resolving its ``$ref``s among the stored files only."""
    registry: Registry[Any] = Registry().with_resources(
        (p.name, Resource.from_contents(json.loads(p.read_text()), default_specification=DRAFT4))
        for p in OMH.glob("*.json")
    )
    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:  # RFC 3339 date-time, as the schema's format
        return not isinstance(value, str) or (
            "T" in value and datetime.fromisoformat(value).tzinfo is not None)

    schema = json.loads((OMH / schema_file).read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls({"$ref": schema_file}, registry=registry, format_checker=checker)


def test_fhir_observations_match_the_windows(api: httpx.Client) -> None:
    windows = api.get(f"/v1/subjects/{SUBJECT}/features").json()
    assert windows and {w["beat_source"] for w in windows} == {"rr"}  # device RR preferred
    r = api.get(f"/v1/subjects/{SUBJECT}/fhir/Observation")
    assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json"
    bundle = Bundle.model_validate_json(r.content)  # R4 validation of the whole bundle
    assert bundle.type == "searchset" and bundle.total == 2 * len(windows)
    # validated above; read as Any (the models type every element as optional)
    by_code: dict[str, list[Any]] = {"8867-4": [], "80404-7": []}
    for entry in bundle.entry or []:
        assert isinstance(entry.resource, Observation)
        obs: Any = entry.resource
        assert obs.status == "final"
        assert obs.category[0].coding[0].code == "vital-signs"
        assert obs.subject.identifier.value == SUBJECT
        assert obs.device.identifier.value == "strap-7"
        by_code[obs.code.coding[0].code].append(obs)
    for code, feature, unit in (("8867-4", "hr_mean_bpm", "/min"),
                                ("80404-7", "hrv_sdnn_ms", "ms")):
        got = by_code[code]
        assert [o.valueQuantity.code for o in got] == [unit] * len(windows)
        assert all(o.valueQuantity.system == "http://unitsofmeasure.org" for o in got)
        assert [o.valueQuantity.value for o in got] == [
            Decimal(repr(w["features"][feature])) for w in windows]
        assert [round(o.effectivePeriod.end.timestamp() * 1e9) for o in got] == [
            w["end_ns"] for w in windows]
    # against the beats sent: 60000 / 832.5 ms and SDNN of the alternating series
    hr = [float(o.valueQuantity.value) for o in by_code["8867-4"]]
    sdnn = [float(o.valueQuantity.value) for o in by_code["80404-7"]]
    assert np.allclose(hr, 60000 / np.mean(RR_MS), atol=0.1)
    assert np.allclose(sdnn, 12.5, rtol=0.02)

    r = api.get(f"/v1/subjects/{SUBJECT}/fhir/Observation",
                params={"code": "http://loinc.org|80404-7", "limit": 3})
    one: Any = Bundle.model_validate_json(r.content)
    assert [e.resource.code.coding[0].code for e in one.entry or []] == ["80404-7"] * 3
    nxt = [link.url for link in one.link or [] if link.relation == "next"]
    page2: Any = Bundle.model_validate_json(api.get(nxt[0]).content)
    ends = [round(e.resource.effectivePeriod.end.timestamp()) for e in page2.entry or []]
    assert ends[0] == windows[3]["end_ns"] // S


def test_omh_heart_rate_and_rr_interval_follow_the_schemas(api: httpx.Client) -> None:
    point = omh_validator("data-point-1.0.json")
    heart_rate = omh_validator("heart-rate-2.0.json")
    rr_interval = omh_validator("rr-interval-1.0.json")

    windows = api.get(f"/v1/subjects/{SUBJECT}/features").json()
    hr = api.get(f"/v1/subjects/{SUBJECT}/omh/heart-rate").json()
    assert len(hr) == len(windows)
    for p, w in zip(hr, windows, strict=True):
        point.validate(p)
        heart_rate.validate(p["body"])
        assert p["header"]["schema_id"] == {"namespace": "omh", "name": "heart-rate",
                                            "version": "2.0"}
        assert p["header"]["user_id"] == SUBJECT
        assert p["body"]["heart_rate"]["value"] == w["features"]["hr_mean_bpm"]

    sent = api.rr  # type: ignore[attr-defined]
    want_t = np.concatenate([b.times_ns() for b in sent]).tolist()
    rr = api.get(f"/v1/subjects/{SUBJECT}/omh/rr-interval", params={"limit": 10_000}).json()
    assert len(rr) == len(want_t)
    for p, t in zip(rr, want_t, strict=True):
        point.validate(p)
        rr_interval.validate(p["body"])
        frame = p["body"]["effective_time_frame"]["time_interval"]
        end = datetime.fromisoformat(frame["end_date_time"])
        assert round(end.timestamp() * 1e6) == t // 1000
    assert [p["body"]["rr_interval"]["value"] for p in rr[:4]] == [*RR_MS, *RR_MS]
    page = api.get(f"/v1/subjects/{SUBJECT}/omh/rr-interval", params={"limit": 5})
    rest = api.get(f"/v1/subjects/{SUBJECT}/omh/rr-interval",
                   params={"start": page.headers["X-Next-Start"], "limit": 10_000}).json()
    assert [p["header"]["id"] for p in page.json() + rest] == [p["header"]["id"] for p in rr]

    # the validators do check: a wrong unit and a missing time frame are refused
    bad = json.loads(json.dumps(hr[0]["body"]))
    bad["heart_rate"]["unit"] = "bpm"
    with pytest.raises(jsonschema.ValidationError):
        heart_rate.validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        heart_rate.validate({"heart_rate": hr[0]["body"]["heart_rate"]})
    with pytest.raises(jsonschema.ValidationError):
        point.validate({**hr[0], "header": {**hr[0]["header"], "creation_date_time": "noon"}})


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/v1/subjects/nobody/fhir/Observation", {}, 404, None),
        ("/v1/subjects/nobody/omh/heart-rate", {}, 404, None),
        ("/v1/subjects/nobody/omh/rr-interval", {}, 404, None),
        (f"/v1/subjects/{SUBJECT}/fhir/Observation", {"code": "1234-5"}, 422, "code"),
        (f"/v1/subjects/{SUBJECT}/fhir/Observation", {"start": "soon"}, 422, "start"),
        (f"/v1/subjects/{SUBJECT}/omh/heart-rate", {"limit": 0}, 422, "limit"),
        (f"/v1/subjects/{SUBJECT}/omh/rr-interval", {"end": "-1"}, 422, "end"),
    ],
)
def test_bad_parameters_are_named(
    api: httpx.Client, path: str, params: dict[str, str | int], status: int, field: str | None
) -> None:
    r = api.get(path, params=params)
    assert r.status_code == status, r.text
    if field is None:
        assert "nobody" in r.json()["detail"]
    else:
        assert [d["field"] for d in r.json()["detail"]] == [field]
