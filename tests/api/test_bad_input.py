"""Bad-input corpus against the running API (uvicorn on loopback, real HTTP).

Each case is sent as a client would send it and must get its documented status with a message
naming the problem. Valid data is ingested first; after the whole corpus its summary and its
states are exactly what they were, so no bad request lost or changed anything valid.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgpack
import pytest
from api_support import (
    ADMIN_KEY,
    admin_client,
    bearer,
    body,
    create_key,
    serve,
    settings_for,
    sim_batches,
)
from simdata import T0, S

pytestmark = pytest.mark.e2e

GOOD = "good1"  # ingested before the corpus, checked after it
OTHER = "other1"  # a subject outside the device key's grant
END_S = 120  # GOOD has data up to T0 + 120 s


def eda(batch_id: str, start_s: float, **kw: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"batch_id": batch_id, "subject_id": GOOD, "device_id": "dev1",
                           "channel": "eda", "start_ns": T0 + round(start_s * S),
                           "rate_hz": 4.0, "values": [3.0] * 8}
    raw.update(kw)
    return raw


def later(batch_id: str, **kw: Any) -> dict[str, Any]:
    """A batch after GOOD's data (so only its own defect can refuse it)."""
    return eda(batch_id, END_S + 1000, **kw)


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    says: str  # a fragment the error message must contain
    send: Callable[[httpx.Client, dict[str, str]], httpx.Response]


def post_json(batches: list[dict[str, Any]]) -> Callable[..., httpx.Response]:
    return lambda c, keys: c.post("/v1/ingest", json={"batches": batches},
                                  headers=bearer(keys["admin"]))


def post_raw(content: bytes, ctype: str, key: str = "admin") -> Callable[..., httpx.Response]:
    return lambda c, keys: c.post("/v1/ingest", content=content, headers={
        "Content-Type": ctype, **bearer(keys[key])})


def post_to(path: str, content: bytes, ctype: str = "application/json",
            ) -> Callable[..., httpx.Response]:
    """A raw body to an endpoint whose JSON body FastAPI itself parses."""
    return lambda c, keys: c.post(path, content=content, headers={
        "Content-Type": ctype, **bearer(keys["admin"])})


def get(path: str, key: str | None = "admin") -> Callable[..., httpx.Response]:
    if key is None:  # a fresh client: the fixture's sends the admin key by default
        return lambda c, keys: httpx.get(str(c.base_url.join(path)), timeout=30)
    return lambda c, keys: c.get(path, headers=bearer(keys[key]))


_TS = [T0 + (END_S + 1000) * S + k * S for k in range(4)]
# json.dumps writes float("nan") as the bare literal NaN, as some clients do.
_NAN_JSON = json.dumps({"batches": [later("nanj", values=[3.0, float("nan")])]}).encode()
_HUGE = b'{"batches": [{"batch_id": "huge", "values": [' + b"0," * (10**7 - 1) + b"0]}]}"
_DEEP = 100_000  # levels of nesting: the decoders recurse, so this must stop early and cleanly
_DEEP_VALUES = json.dumps({"batches": [later("deep", values=[])]}).replace(
    '"values": []', '"values": ' + "[" * _DEEP + "]" * _DEEP).encode()

CASES = [
    Case("json NaN literal", 422, "values[1]: not a finite number", post_raw(
        _NAN_JSON, "application/json")),
    Case("json Infinity", 422, "not a finite number", post_raw(
        _NAN_JSON.replace(b"NaN", b"Infinity"), "application/json")),
    Case("msgpack float NaN", 422, "values[2]: not a finite number", post_raw(
        msgpack.packb({"batches": [later("nanm", values=[3.0, 3.0, float("nan")])]}),
        "application/msgpack")),
    Case("msgpack -inf", 422, "not a finite number", post_raw(
        msgpack.packb({"batches": [later("infm", values=[float("-inf")])]}),
        "application/msgpack")),
    Case("empty values", 422, "values", post_json([later("e0", values=[])])),
    Case("empty batch list", 422, "batches", post_json([])),
    Case("10^7-element array", 413, "request body too large", post_raw(
        _HUGE, "application/json")),
    Case("values as a string", 422, "values", post_json([later("w0", values="3,3")])),
    Case("boolean value", 422, "values[0]", post_json([later("w1", values=[True])])),
    Case("numeric string", 422, "values[0]", post_json([later("w2", values=["3.0"])])),
    Case("start_ns as string", 422, "start_ns", post_json([later("w3", start_ns="soon")])),
    Case("negative start_ns", 422, "start_ns", post_json([later("w4", start_ns=-1)])),
    Case("start_ns past int64", 422, "start_ns", post_json([later("w5", start_ns=2**70)])),
    Case("subnormal rate_hz", 422, "rate_hz", post_json([later("w6", rate_hz=5e-324)])),
    Case("unknown channel", 422, "channel", post_json([later("w7", channel="ecg")])),
    Case("unknown field", 422, "colour", post_json([later("w8", colour="red")])),
    Case("not JSON", 422, "invalid JSON", post_raw(b"{batches:", "application/json")),
    Case("not msgpack", 422, "invalid msgpack", post_raw(b"\xc1", "application/msgpack")),
    Case("unsupported type", 415, "Content-Type", post_raw(b"a,b", "text/csv")),
    Case("100,000 open brackets", 422, "nested too deeply", post_raw(
        b"[" * _DEEP, "application/json")),
    Case("100,000 nested arrays", 422, "nested too deeply", post_raw(
        b"[" * _DEEP + b"]" * _DEEP, "application/json")),
    Case("values nested 100,000 deep", 422, "nested too deeply", post_raw(
        _DEEP_VALUES, "application/json")),
    Case("100,000 nested objects", 422, "nested too deeply", post_raw(
        b'{"a":' * _DEEP + b"1" + b"}" * _DEEP, "application/json")),
    Case("msgpack nested 100,000 deep", 422, "nested too deeply", post_raw(
        b"\x91" * _DEEP + b"\x90", "application/msgpack")),
    Case("msgpack batches nested deep", 422, "nested too deeply", post_raw(
        b"\x81\xa7batches" + b"\x91" * _DEEP + b"\x90", "application/msgpack")),
    Case("deep JSON to a FastAPI-parsed body", 422, "nested too deeply", post_to(
        "/v1/admin/keys", b"[" * _DEEP + b"]" * _DEEP)),
    Case("deep JSON to alert rules", 422, "nested too deeply", post_to(
        f"/v1/subjects/{GOOD}/alerts/rules", b'{"kind":' * _DEEP)),
    Case("duplicate timestamps", 422, "timestamps_ns[2]: duplicate", post_json([later(
        "t0", rate_hz=None, timestamps_ns=[_TS[0], _TS[1], _TS[1], _TS[2]], values=[1.0] * 4)])),
    Case("out-of-order timestamps", 422, "timestamps_ns[2]: out-of-order", post_json([later(
        "t1", rate_hz=None, timestamps_ns=[_TS[0], _TS[2], _TS[1], _TS[3]], values=[1.0] * 4)])),
    Case("batch id reused with other content", 409, "batch_id", post_json([
        eda(f"{GOOD}:eda:0", 0, values=[9.0] * 8)])),
    Case("batch overlapping stored data", 409, "batches.0", post_json([eda("ov", 30)])),
    Case("unknown subject: summary", 404, "unknown subject 'nobody'", get("/v1/subjects/nobody")),
    Case("unknown subject: state", 404, "unknown subject", get("/v1/subjects/nobody/state")),
    Case("unknown subject: states", 404, "unknown subject", get("/v1/subjects/nobody/states")),
    Case("unknown subject: export", 404, "unknown subject", get("/v1/subjects/nobody/export")),
    Case("bad time range", 422, "start", get(f"/v1/subjects/{GOOD}/states?start=5&end=1")),
    Case("missing key", 401, "missing API key", get(f"/v1/subjects/{GOOD}", key=None)),
    Case("wrong key", 401, "invalid API key", get(f"/v1/subjects/{GOOD}", key="wrong")),
    Case("key without scope", 403, "lacks the scope", get("/v1/admin/keys", key="device")),
    Case("ingest outside the grant", 403, "may not write subject", post_raw(
        msgpack.packb({"batches": [later("g0", subject_id=OTHER)]}), "application/msgpack",
        key="device")),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, dict]]:
    with serve(settings_for(tmp_path_factory.mktemp("bad"))) as url, admin_client(url) as c:
        r = c.post("/v1/ingest", json=body(sim_batches(GOOD, END_S)))
        assert r.status_code == 200 and r.json()["states"] > 0, r.text
        keys = {"admin": ADMIN_KEY, "wrong": "wmo_nokey_" + "x" * 40,
                "device": create_key(c, "device", subjects=[GOOD])}
        yield c, keys


def snapshot(c: httpx.Client) -> tuple[Any, Any]:
    summary = c.get(f"/v1/subjects/{GOOD}")
    states = c.get(f"/v1/subjects/{GOOD}/states", params={"limit": 100_000})
    assert summary.status_code == states.status_code == 200
    return summary.json(), states.json()


def test_corpus_is_refused_clearly_and_valid_data_stays(world: tuple[httpx.Client, dict]) -> None:
    c, keys = world
    before = snapshot(c)
    assert before[1], "the valid upload produced states"
    wrong = []
    for case in CASES:
        r = case.send(c, keys)
        text = r.text
        if r.status_code != case.status or case.says not in text:
            wrong.append(f"{case.name}: {r.status_code} {text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert c.get("/healthz").status_code == 200  # the server did not fall over
    assert snapshot(c) == before
    assert c.get(f"/v1/subjects/{OTHER}").status_code == 404  # nothing foreign was stored
