"""Property: no key ever reaches a subject outside its grant (real HTTP, uvicorn on loopback).

Hypothesis draws cohorts over a pool of subjects (one never ingested), device keys with random
subjects, reader keys with random cohorts, and random requests on every subject-bearing
endpoint (the GET routes are read from the OpenAPI schema, so endpoints added later are
covered too), and checks each answer against the grant the test computes itself:

* a subject outside the grant is answered exactly like an unknown subject (404, same body);
  the alert endpoints know enrolled subjects (in a cohort or a device grant) without data too,
  the others only subjects with data;
* a cohort's alert rules are reached by the reader keys granted that cohort only; any other
  cohort, existing or not, is answered alike (404, same body);
* ``GET /v1/subjects`` lists exactly the granted subjects that have data;
* an ingest with any subject outside the grant is refused (403) and stores nothing at all;
  within the grant a device key's ingest is stored.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest
from api_support import ADMIN_KEY, admin_client, bearer, create_key, serve, settings_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simdata import T0, S

pytestmark = pytest.mark.e2e

POOL = ["pa", "pb", "pc", "pd"]
UNKNOWN = "pz"  # granted sometimes, never ingested by the admin
SUBJECTS = [*POOL, UNKNOWN]

_counter = itertools.count()


class World:
    """The server, its admin client, and what the test knows is stored."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = admin_client(url)
        self.anon = httpx.Client(base_url=url, timeout=30)
        self.next_start_s = dict.fromkeys(SUBJECTS, 0)
        self.exists: set[str] = set()  # subjects with stored data
        ops = self.admin.get("/openapi.json").json()["paths"]
        # Paths whose only parameter is the subject (the others, e.g. a rule id, sit behind
        # the same subject dependency and would answer for their own parameter first).
        self.read_paths = sorted(p for p, item in ops.items()
                                 if "{subject_id}" in p and p.count("{") == 1 and "get" in item
                                 and not p.startswith("/v1/admin"))
        assert len(self.read_paths) >= 4, self.read_paths
        # Alert rules are set up at enrolment: these know subjects without data.
        self.enrolment_paths = {p for p in self.read_paths if "/alerts" in p}
        assert len(self.enrolment_paths) == 3, self.enrolment_paths

    def batch(self, subject: str) -> dict[str, object]:
        start = self.next_start_s[subject]
        self.next_start_s[subject] += 2
        return {"batch_id": f"b{next(_counter)}", "subject_id": subject, "device_id": "d1",
                "channel": "eda", "start_ns": T0 + start * S, "rate_hz": 4.0,
                "values": [3.0] * 8}

    def stored_batches(self) -> dict[str, int]:
        out = {}
        for s in SUBJECTS:
            r = self.admin.get(f"/v1/subjects/{s}")
            out[s] = r.json()["batches"] if r.status_code == 200 else 0
        return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with serve(settings_for(tmp_path_factory.mktemp("prop"))) as url:
        w = World(url)
        r = w.admin.post("/v1/ingest", json={"batches": [w.batch(s) for s in POOL]})
        assert r.status_code == 200, r.text
        w.exists.update(POOL)
        yield w
        w.admin.close()
        w.anon.close()


subject_sets = st.frozensets(st.sampled_from(SUBJECTS), max_size=len(SUBJECTS))
keys_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("device"), subject_sets),
        st.tuples(st.just("reader"), st.frozensets(st.integers(0, 2), max_size=3)),
    ),
    min_size=1, max_size=3,
)
request_strategy = st.lists(
    st.tuples(
        st.integers(0, 2),  # which key (modulo the number of keys)
        st.sampled_from(["read", "list", "ingest", "calibrate", "cohort"]),
        st.integers(0, 10),  # which read path (modulo their number)
        st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=3),
    ),
    min_size=1, max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts=st.lists(subject_sets, min_size=3, max_size=3), keys=keys_strategy,
       requests=request_strategy)
def test_no_key_reaches_outside_its_grant(
    world: World,
    cohorts: list[frozenset[str]],
    keys: list[tuple[str, frozenset[object]]],
    requests: list[tuple[int, str, int, list[str]]],
) -> None:
    names = [f"c{next(_counter)}" for _ in cohorts]
    for name, members in zip(names, cohorts, strict=True):
        r = world.admin.post("/v1/admin/cohorts", json={"name": name, "subjects": sorted(members)})
        assert r.status_code == 201, r.text
    made: list[tuple[str, str, frozenset[str], frozenset[str]]] = []  # role, secret, grant,
    for role, grant in keys:                                            # cohorts granted
        if role == "device":
            subjects = sorted(str(s) for s in grant)
            made.append((role, create_key(world.admin, role, subjects=subjects),
                         frozenset(subjects), frozenset()))
        else:
            chosen = [names[int(i)] for i in grant]
            secret = create_key(world.admin, role, cohorts=chosen)
            reach = frozenset().union(*(cohorts[int(i)] for i in grant))
            made.append((role, secret, reach, frozenset(chosen)))

    for key_index, kind, path_index, subjects in requests:
        role, secret, grant, granted_cohorts = made[key_index % len(made)]
        h = bearer(secret)
        sid = subjects[0]
        if kind == "read":
            path = world.read_paths[path_index % len(world.read_paths)]
            unknown = {"detail": f"unknown subject {sid!r}"}
            # Streamed: a live (SSE) endpoint that reaches the subject never ends by itself.
            with world.anon.stream("GET", path.replace("{subject_id}", sid), headers=h) as r:
                ctype = r.headers.get("content-type", "")
                # Only JSON answers can be the "unknown subject" one; exports (CSV, Parquet) and
                # live streams are reached data, recorded by their type.
                answer = (r.read(), r.json())[1] if ctype.startswith("application/") and \
                    "json" in ctype else ctype
            # Every granted subject is enrolled (the grant is made of cohorts and device
            # grants), so the alert endpoints reach it with or without data.
            known = sid in world.exists or path in world.enrolment_paths
            if sid not in grant or not known:
                assert (r.status_code, answer) == (404, unknown), (role, path, sid, answer)
            else:
                assert r.status_code in (200, 404) and answer != unknown, (path, answer)
        elif kind == "cohort":
            # one of this example's cohorts, an older example's, or one that never existed
            name = [*names, "c0", "never"][path_index % (len(names) + 2)]
            r = world.anon.get(f"/v1/cohorts/{name}/alerts/rules", headers=h)
            if name in granted_cohorts:
                assert (r.status_code, r.json()) == (200, []), (role, name, r.text)
            else:
                assert (r.status_code, r.json()) == (
                    404, {"detail": f"unknown cohort {name!r}"}), (role, name, r.text)
        elif kind == "list":
            r = world.anon.get("/v1/subjects", headers=h)
            assert r.status_code == 200
            assert set(r.json()) == grant & world.exists, (role, grant, r.json())
        elif kind == "calibrate":
            r = world.anon.put(f"/v1/subjects/{sid}/baseline", json={"start": 0, "end": 1},
                               headers=h)
            if role == "reader":
                assert r.status_code == 403  # no baseline:write, granted or not
            elif sid not in grant or sid not in world.exists:
                assert (r.status_code, r.json()) == (404, {"detail": f"unknown subject {sid!r}"})
            else:
                assert r.status_code == 422  # too few windows: reached, and nothing changed
        else:
            before = world.stored_batches()
            batches = [world.batch(s) for s in subjects]
            r = world.anon.post("/v1/ingest", json={"batches": batches}, headers=h)
            after = world.stored_batches()
            if role == "reader" or not set(subjects) <= grant:
                assert r.status_code == 403, r.text
                assert after == before  # nothing of the request stored, anywhere
                if role == "device":
                    i = next(i for i, s in enumerate(subjects) if s not in grant)
                    assert r.json()["detail"].startswith(f"batches.{i}.subject_id:")
            else:
                assert r.status_code == 200, r.text
                for s in set(subjects):
                    assert after[s] == before[s] + subjects.count(s)
                world.exists.update(subjects)  # the never-ingested one may exist now
    assert world.admin.get("/v1/admin/audit/verify",
                           headers=bearer(ADMIN_KEY)).json()["ok"]
