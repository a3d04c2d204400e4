"""InfluxStore against real servers: influxd 1.6.7 (v1 writes, every InfluxQL read) and
victoria-metrics (the influxdb-client v2 write path, checked point by point via its export API).

The behavioural contract of the SQLite store tests runs here unchanged on InfluxStore (the
``test_*`` functions imported from ``test_store_sqlite`` use this module's ``store`` fixture).
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import Server
from test_store_sqlite import (  # noqa: F401 - re-run here against InfluxStore
    T0,
    S,
    calibration,
    ppg,
    state,
    test_batches_round_trip_bit_exact,
    test_concurrent_writers_from_threads,
    test_delete_before_keeps_newer_data_and_whole_straddling_batches,
    test_erase_subject_removes_everything_and_only_it,
    test_regular_times_match_sample_batch_at_awkward_rates,
    test_state_outputs_round_trip,
    test_states_round_trip_ranges_and_latest,
    test_subjects_and_summary,
    test_timestamped_and_acc_batches,
    test_windows_round_trip_and_replace,
)

from wearemo.samples import Channel, SampleBatch
from wearemo.settings import Settings
from wearemo.store import (
    InfluxStore,
    StateStore,
    StoreBackpressureError,
    StoreUnavailableError,
    open_store,
)


def new_database(server: Server) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    r = httpx.post(server.url + "/query", data={"q": f'CREATE DATABASE "{name}"'})
    assert r.status_code == 200 and "error" not in r.text
    return name


@pytest.fixture
def store(influxd: Server, tmp_path: Path) -> Iterator[InfluxStore]:
    s = InfluxStore(influxd.url, write_mode="v1", database=new_database(influxd),
                    buffer_dir=tmp_path / "buf")
    yield s
    s.close()


def raw_query(server: Server, database: str, q: str) -> list[list[object]]:
    r = httpx.get(server.url + "/query", params={"db": database, "q": q, "epoch": "ns"})
    series = r.json()["results"][0].get("series", [])
    return [row for s in series for row in s["values"]]


def test_batches_read_back_as_sent(store: InfluxStore) -> None:
    sent = [ppg(i) for i in range(3)]
    sent.append(SampleBatch(batch_id="rr0", subject_id="s1", device_id="d2", channel="rr",
                            start_ns=T0 + 10, timestamps_ns=[T0 + 10, T0 + 812_000_011],
                            values=[812.0, 800.25], seq=7))
    sent.append(SampleBatch(batch_id="acc0", subject_id="s1", device_id="d1", channel="acc",
                            start_ns=T0, rate_hz=32.0, values=[[0.1 * k, -1.0, 3e-7] for k in
                                                              range(40)]))
    for b in sent:
        assert store.add_batch(b)
    got = store.batches("s1")
    assert sorted(got, key=lambda b: b.batch_id) == sorted(sent, key=lambda b: b.batch_id)
    assert [b.batch_id for b in store.batches("s1", channel=Channel.PPG,
                                              start_ns=ppg(1).start_ns,
                                              end_ns=ppg(2).start_ns)] == ["d1:ppg:1"]


def test_calibration_latest_wins(store: InfluxStore) -> None:
    assert store.calibration("s1") is None
    store.set_calibration(calibration())
    store.set_calibration(calibration("s2", used=12))
    later = calibration(start_s=600, used=40).model_copy(update={"created_ns": T0 + 2000 * S})
    store.set_calibration(later)
    assert store.calibration("s1") == later
    assert store.calibration("s2") == calibration("s2", used=12)


def test_identifiers_and_literals_are_escaped(store: InfluxStore) -> None:
    """Quotes, backslashes, spaces, commas and InfluxQL in ids neither break nor leak a query."""
    store.add_batch(ppg(0))
    store.add_states([state(60)])
    hostile = ["x' OR ''='", 'a"b', "s1' OR \"subject\"='s1", "s1\\", "s 1,a=b"]
    for h in hostile:
        assert store.states(h) == [] and store.latest_state(h) is None
        assert not store.has_batch("s1", h) and not store.has_batch(h, "d1:ppg:0")
        assert store.samples(h, Channel.PPG).n_samples == 0
    # odd but storable subject ids round-trip as tags
    odd = "o'brien \"x\", y=1"
    store.add_states([state(60, subject=odd)])
    assert store.latest_state(odd) == state(60, subject=odd)
    assert store.latest_state("s1") == state(60)
    with pytest.raises(ValueError, match="backslash"):
        store.add_states([state(60, subject="a\\b")])


def test_influx_url_alone_selects_the_store(influxd: Server, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAREMO_INFLUX_URL", influxd.url)
    monkeypatch.setenv("WEAREMO_INFLUX_WRITE_MODE", "v1")
    monkeypatch.setenv("WEAREMO_INFLUX_DATABASE", new_database(influxd))
    settings = Settings(data_dir=tmp_path)
    assert settings.store == "influx"
    s = open_store(settings)
    try:
        assert isinstance(s, InfluxStore) and isinstance(s, StateStore) and s.ping()
        assert s.buffer_path.parent == tmp_path / "influx-buffer"
    finally:
        s.close()
    with pytest.raises(ValueError, match="influx_url"):
        Settings(store="influx", influx_url=None)


def test_outage_then_backpressure_then_everything_exactly_once(
    influxd: Server, tmp_path: Path
) -> None:
    db = new_database(influxd)
    s = InfluxStore(influxd.url, write_mode="v1", database=db, buffer_dir=tmp_path / "buf",
                    buffer_max_bytes=60_000, read_wait_s=30)
    try:
        for i in range(5):
            assert s.add_batch(ppg(i))
        s.flush()
        influxd.stop()
        try:
            accepted, refused = [], None
            for i in range(5, 60):  # each 64-sample batch is ~5 kB of line protocol
                try:
                    assert s.add_batch(ppg(i))
                    accepted.append(i)
                except StoreBackpressureError as exc:
                    refused = i
                    assert exc.retry_after_s > 0 and "buffer full" in str(exc)
                    break
            assert refused is not None and len(accepted) >= 5
            assert not s.has_batch("s1", f"d1:ppg:{refused}")  # refused means not stored
            rows, size = s.buffered()
            assert rows == len(accepted) and 0 < size <= 60_000
            with pytest.raises(StoreUnavailableError):
                s.flush(timeout_s=0.5)
            assert not s.ping()
        finally:
            influxd.start()
        s.flush(timeout_s=30)
        assert s.add_batch(ppg(refused)) and s.add_batch(ppg(0)) is False
        sent = [ppg(i) for i in [*range(5), *accepted, refused]]
        got = s.samples("s1", Channel.PPG)
        np.testing.assert_array_equal(got.times_ns, np.concatenate([b.times_ns() for b in sent]))
        np.testing.assert_array_equal(got.values, np.concatenate([b.values_array() for b in sent]))
        summary = s.subject_summary("s1")
        assert summary is not None and summary.batches == len(sent)
        assert raw_query(influxd, db, 'SELECT count("v") FROM "samples"')[0][1] == 64 * len(sent)
    finally:
        s.close()


def test_v2_client_path_every_point_arrives_intact(victoria: Server, tmp_path: Path) -> None:
    subject = f"vm{uuid.uuid4().hex[:8]}"
    s = InfluxStore(victoria.url, write_mode="v2", bucket="wearemo", org="wearemo",
                    token="unused-by-vm", buffer_dir=tmp_path / "buf")
    # 7,692 lines: more than one 5,000-line write batch
    sent = [ppg(i, subject=subject, n=640) for i in range(12)]
    acc = SampleBatch(batch_id="acc0", subject_id=subject, device_id="d1", channel="acc",
                      start_ns=T0, rate_hz=32.0,
                      values=[[0.01 * k, -1.0 + 1e-6 * k, 9.81] for k in range(96)])
    try:
        for b in [*sent, acc]:
            assert s.add_batch(b)
        s.flush(timeout_s=60)
        assert s.buffered() == (0, 0)
    finally:
        s.close()
    httpx.get(victoria.url + "/internal/force_flush")
    r = httpx.post(victoria.url + "/api/v1/export",
                   data={"match[]": f'{{subject="{subject}"}}', "start": "0"}, timeout=30)
    series = {}
    for line in r.text.splitlines():
        doc = json.loads(line)
        series[(doc["metric"]["__name__"], doc["metric"].get("channel"))] = doc
    # VictoriaMetrics keeps millisecond timestamps: ns times arrive as floor(t / 1e6)
    ppg_doc = series[("samples_v", "ppg")]
    want_t = np.concatenate([b.times_ns() for b in sent]) // 1_000_000
    want_v = np.concatenate([b.values_array() for b in sent])
    assert ppg_doc["metric"]["device"] == "d1"
    np.testing.assert_array_equal(np.array(ppg_doc["timestamps"]), want_t)
    np.testing.assert_allclose(np.array(ppg_doc["values"]), want_v, rtol=1e-12, atol=1e-15)
    for axis, k in (("x", 0), ("y", 1), ("z", 2)):
        doc = series[(f"samples_{axis}", "acc")]
        np.testing.assert_array_equal(doc["timestamps"], acc.times_ns() // 1_000_000)
        np.testing.assert_allclose(doc["values"], acc.values_array()[:, k], rtol=1e-12)
    # one registry point per batch, with its sample count
    n_doc = series[("batches_n", "ppg")]
    assert n_doc["values"] == [640] * 12
    assert n_doc["timestamps"] == [b.end_ns // 1_000_000 for b in sent]
    assert not any(math.isnan(v) for v in ppg_doc["values"])


def test_api_end_to_end_on_influx(influxd: Server, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """WEAREMO_STORE=influx: ingest over HTTP, states over HTTP and in influxd; a full buffer
    during an outage is HTTP 503 with Retry-After, and the retried request then stores it."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "api"))
    from api_support import ADMIN_KEY, bearer, body, serve, sim_batches

    db = new_database(influxd)
    for key, value in {"STORE": "influx", "INFLUX_URL": influxd.url, "INFLUX_WRITE_MODE": "v1",
                       "INFLUX_DATABASE": db, "INFLUX_BUFFER_MAX_BYTES": "400000",
                       "DATA_DIR": str(tmp_path), "MODEL": "default",
                       "ADMIN_KEY": ADMIN_KEY}.items():
        monkeypatch.setenv(f"WEAREMO_{key}", value)
    batches = sim_batches("e2e", 300)  # 10-s ppg + eda batches
    head, tail = batches[:24], batches[24:]
    with (serve(Settings()) as url,
          httpx.Client(base_url=url, timeout=60, headers=bearer(ADMIN_KEY)) as client):
        n_states = 0
        for b in head:  # one batch a request, as a bridge sends them; a 503 is retried
            for _ in range(60):
                r = client.post("/v1/ingest", json=body([b]))
                if r.status_code != 503:
                    break
                time.sleep(0.5)
            assert r.status_code == 200 and r.json()["stored"] == 1, r.text
            n_states += r.json()["states"]
        assert n_states > 0
        latest = client.get("/v1/subjects/e2e/state").json()
        history = client.get("/v1/subjects/e2e/states").json()
        assert len(history["states"] if isinstance(history, dict) else history) == n_states
        rows = raw_query(influxd, db, 'SELECT "body" FROM "states" WHERE "subject" = \'e2e\'')
        assert len(rows) == n_states
        assert json.loads(str(rows[-1][1]))["window_end_ns"] == latest["window_end_ns"]
        influxd.stop()
        try:
            refused = None
            for k, b in enumerate(tail):
                r = client.post("/v1/ingest", json=body([b]))
                if r.status_code == 503:
                    refused = k
                    assert int(r.headers["Retry-After"]) > 0
                    assert "buffer full" in r.json()["detail"]
                    break
                assert r.status_code == 200 and r.json()["stored"] == 1
            assert refused is not None and refused > 0
        finally:
            influxd.start()
        for _ in range(60):  # a client honours Retry-After; the buffer drains once it is back
            r = client.post("/v1/ingest", json=body(tail[refused:]))
            if r.status_code != 503:
                break
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        # a 503 part-way through a retry kept the batches before it: they come back duplicate
        got = r.json()
        assert got["stored"] >= 1 and got["stored"] + got["duplicates"] == len(tail) - refused
    want = sum(b.n_samples for b in batches if b.channel == "ppg")
    assert raw_query(influxd, db, 'SELECT count("v") FROM "samples" WHERE "channel" = \'ppg\' '
                     'AND "subject" = \'e2e\'')[0][1] == want
