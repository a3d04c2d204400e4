"""Read side over real HTTP: feature windows, raw samples, CSV/Parquet export, bad parameters."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from api_support import HR_BPM, body, serve, settings_for, sim_batches
from simdata import T0, S

from wearemo.features import FEATURE_UNITS

pytestmark = pytest.mark.e2e

SUBJECT = "read1"
DURATION_S = 240


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    batches = sim_batches(SUBJECT, DURATION_S)
    with serve(settings_for(tmp_path_factory.mktemp("read"))) as url, \
            httpx.Client(base_url=url, timeout=60.0) as client:
        r = client.post("/v1/ingest", json=body(batches))
        assert r.status_code == 200, r.text
        client.batches = batches  # type: ignore[attr-defined]
        yield client


def t(seconds: float) -> str:
    """Unix seconds text of T0 + seconds."""
    ns = T0 + round(seconds * S)
    return f"{ns // S}.{ns % S:09d}"


def test_features_match_ground_truth_and_paginate(api: httpx.Client) -> None:
    everything = api.get(f"/v1/subjects/{SUBJECT}/features", params={"limit": 100_000}).json()
    states = api.get(f"/v1/subjects/{SUBJECT}/states", params={"limit": 100_000}).json()
    # one window per state, stamped at the same ends
    assert [w["end_ns"] for w in everything] == [s["window_end_ns"] for s in states]
    assert everything[0]["end_ns"] == T0 + 60 * S
    assert all(w["end_ns"] - w["start_ns"] == 60 * S for w in everything)
    hr = [w["features"]["hr_mean_bpm"] for w in everything]
    assert np.nanmedian(np.array(hr, dtype=float)) == pytest.approx(HR_BPM, abs=2.0)
    assert all(w["sample_counts"]["ppg"] == 60 * 64 for w in everything)

    page1 = api.get(f"/v1/subjects/{SUBJECT}/features", params={"limit": 5})
    assert [w["end_ns"] for w in page1.json()] == [w["end_ns"] for w in everything[:5]]
    nxt = page1.headers["X-Next-Start"]
    page2 = api.get(f"/v1/subjects/{SUBJECT}/features", params={"start": nxt, "limit": 5})
    assert [w["end_ns"] for w in page2.json()] == [w["end_ns"] for w in everything[5:10]]
    ranged = api.get(f"/v1/subjects/{SUBJECT}/features",
                     params={"start": t(100), "end": t(115)}).json()
    assert [w["end_ns"] for w in ranged] == [T0 + e * S for e in (100, 105, 110)]
    assert "X-Next-Start" not in api.get(f"/v1/subjects/{SUBJECT}/features").headers


def test_samples_are_the_uploaded_values_page_by_page(api: httpx.Client) -> None:
    sent = [b for b in api.batches if b.channel == "eda"]  # type: ignore[attr-defined]
    want_t = np.concatenate([b.times_ns() for b in sent])
    want_v = np.concatenate([b.values_array() for b in sent])
    got = api.get(f"/v1/subjects/{SUBJECT}/samples", params={"channel": "eda"}).json()
    assert got["unit"] == "uS" and got["channel"] == "eda"
    assert got["times_ns"] == want_t.tolist() and got["values"] == want_v.tolist()

    # pages of 55 samples (not a multiple of the 40-sample batches) rebuild the series exactly
    times: list[int] = []
    values: list[float] = []
    params: dict[str, str | int] = {"channel": "eda", "limit": 55}
    while True:
        r = api.get(f"/v1/subjects/{SUBJECT}/samples", params=params)
        times += r.json()["times_ns"]
        values += r.json()["values"]
        if "X-Next-Start" not in r.headers:
            break
        params["start"] = r.headers["X-Next-Start"]
    assert times == want_t.tolist() and values == want_v.tolist()

    ranged = api.get(f"/v1/subjects/{SUBJECT}/samples",
                     params={"channel": "ppg", "start": t(10), "end": t(11)}).json()
    assert len(ranged["times_ns"]) == 64 and ranged["times_ns"][0] == T0 + 10 * S
    assert api.get(f"/v1/subjects/{SUBJECT}/samples",
                   params={"channel": "acc"}).json()["times_ns"] == []


def test_export_csv_and_parquet_round_trip(api: httpx.Client) -> None:
    states = api.get(f"/v1/subjects/{SUBJECT}/states", params={"limit": 100_000}).json()
    features = api.get(f"/v1/subjects/{SUBJECT}/features", params={"limit": 100_000}).json()
    for fmt in ("csv", "parquet"):
        r = api.get(f"/v1/subjects/{SUBJECT}/export", params={"kind": "states", "format": fmt})
        assert r.status_code == 200, r.text
        frame = pd.read_csv(io.BytesIO(r.content)) if fmt == "csv" else pq.read_table(
            io.BytesIO(r.content)).to_pandas()
        assert frame["window_end_ns"].tolist() == [s["window_end_ns"] for s in states]
        assert frame["state"].tolist() == [s["state"] for s in states]
        want_p = [np.nan if s["p_stress"] is None else s["p_stress"] for s in states]
        np.testing.assert_array_equal(frame["p_stress"].to_numpy(float), want_p)
    assert r.headers["content-type"] == "application/vnd.apache.parquet"
    assert f'filename="{SUBJECT}-states.parquet"' in r.headers["content-disposition"]

    r = api.get(f"/v1/subjects/{SUBJECT}/export", params={"kind": "features",
                                                         "format": "parquet"})
    table = pq.read_table(io.BytesIO(r.content))
    assert set(FEATURE_UNITS) <= set(table.column_names)
    frame = table.to_pandas()
    want = [np.nan if w["features"].get("hrv_sdnn_ms") is None else w["features"]["hrv_sdnn_ms"]
            for w in features]
    np.testing.assert_array_equal(frame["hrv_sdnn_ms"].to_numpy(float), want)
    assert (frame["window_end"] == pd.to_datetime(frame["window_end_ns"], utc=True)).all()

    sent = [b for b in api.batches if b.channel == "ppg"]  # type: ignore[attr-defined]
    r = api.get(f"/v1/subjects/{SUBJECT}/export",
                params={"kind": "samples", "format": "csv", "channel": "ppg", "end": t(30)})
    # pandas' default float parser is not round-trip exact; the file's text is
    frame = pd.read_csv(io.BytesIO(r.content), float_precision="round_trip")
    want_t = np.concatenate([b.times_ns() for b in sent[:3]])
    want_v = np.concatenate([b.values_array() for b in sent[:3]])
    assert frame["time_ns"].tolist() == want_t.tolist()
    np.testing.assert_array_equal(frame["value"].to_numpy(), want_v)  # float64 exact
    assert set(frame["channel"]) == {"ppg"} and frame["x"].isna().all()

    empty = api.get(f"/v1/subjects/{SUBJECT}/export",
                    params={"kind": "states", "format": "parquet", "start": t(10_000)})
    assert pq.read_table(io.BytesIO(empty.content)).num_rows == 0


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/v1/subjects/nobody/features", {}, 404, None),
        ("/v1/subjects/nobody/samples", {"channel": "eda"}, 404, None),
        ("/v1/subjects/nobody/export", {}, 404, None),
        (f"/v1/subjects/{SUBJECT}/samples", {}, 422, "channel"),
        (f"/v1/subjects/{SUBJECT}/samples", {"channel": "ecg"}, 422, "channel"),
        (f"/v1/subjects/{SUBJECT}/samples", {"channel": "eda", "limit": 0}, 422, "limit"),
        (f"/v1/subjects/{SUBJECT}/features", {"start": "yesterday"}, 422, "start"),
        (f"/v1/subjects/{SUBJECT}/features", {"start": "2", "end": "1"}, 422, "start"),
        (f"/v1/subjects/{SUBJECT}/features", {"end": "nan"}, 422, "end"),
        (f"/v1/subjects/{SUBJECT}/export", {"kind": "beats"}, 422, "kind"),
        (f"/v1/subjects/{SUBJECT}/export", {"format": "xlsx"}, 422, "format"),
        (f"/v1/subjects/{SUBJECT}/export", {"channel": "x"}, 422, "channel"),
    ],
)
def test_bad_parameters_are_named(
    api: httpx.Client, path: str, params: dict[str, str | int], status: int, field: str | None
) -> None:
    r = api.get(path, params=params)
    assert r.status_code == status, r.text
    if field is not None:
        assert [d["field"] for d in r.json()["detail"]] == [field]
    else:
        assert "nobody" in r.json()["detail"]
    # nothing valid was lost
    assert api.get(f"/v1/subjects/{SUBJECT}").json()["batches"] == 2 * DURATION_S // 10
