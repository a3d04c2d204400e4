"""The API docs over real HTTP: self-contained pages, and a valid example for every body.

``/docs`` and ``/redoc`` must work with no Internet (offline, locked-down hospital networks):
every script, style and icon they load comes from the server itself, and the page names no
other origin. Every request body in the OpenAPI schema carries an example that validates
against its schema and that the API accepts when posted as it stands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema
import msgpack
import pytest
from api_support import admin_client, body, create_key, serve, settings_for, sim_batches

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(settings_for(tmp_path_factory.mktemp("docs"))) as base:
        yield base


class _Refs(HTMLParser):
    """Every URL the markup of a page loads or links (``src``, ``href``)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_this_server(url: str, page: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        parser = _Refs()
        parser.feed(html)
        # Paths in scripts and attributes too: the schema, Swagger UI's OAuth2 redirect.
        quoted = re.findall(r"""['"](/[^'"\s]*)['"]""", html)
        refs = parser.urls + quoted
        assert "/openapi.json" in refs
        assert any(u.endswith(".js") for u in refs), refs  # the UI's script is among them
        # No other origin anywhere in the page: not in markup, not in the inline script.
        assert re.findall(r"(?:https?:)?//[\w.-]+", html) == [], "the page names another origin"
        for ref in refs:
            target = urljoin(url + page, ref)
            assert urlsplit(target).netloc == urlsplit(url).netloc, ref
            asset = c.get(target)
            assert asset.status_code == 200, (ref, asset.status_code)
            assert asset.content, ref
    if page == "/docs":
        assert '"validatorUrl": null' in html  # no badge fetched from an outside validator


def _example(spec: dict[str, Any], media: dict[str, Any]) -> Any:
    """The media type's example, else the first example of its (referenced) schema."""
    if "example" in media:
        return media["example"]
    schema = media["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    assert schema.get("examples"), f"no example for {media['schema']}"
    return schema["examples"][0]


def _bodies(spec: dict[str, Any]) -> list[tuple[str, str, str, Any, dict[str, Any]]]:
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                out.append((method.upper(), path, ctype, _example(spec, media), media["schema"]))
    return out


def test_every_request_body_has_an_example_valid_against_its_schema(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    bodies = _bodies(spec)
    assert len(bodies) >= 9  # ingest (JSON, msgpack), baseline, rules x2, keys, cohorts ...
    for method, path, ctype, example, schema in bodies:
        # The schema with the document's components, so "#/components/..." refs resolve.
        root = {**schema, "components": spec["components"]}
        errors = [e.message for e in jsonschema.Draft202012Validator(root).iter_errors(example)]
        assert errors == [], (method, path, ctype, errors)


def test_every_example_is_accepted_when_posted(url: str) -> None:
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    examples = {(m, p, ct): ex for m, p, ct, ex, _ in _bodies(spec)}
    json_ct, msgpack_ct = "application/json", "application/msgpack"
    with admin_client(url) as c:
        # Data the baseline example's period (its first five minutes) can be set from.
        assert c.post("/v1/ingest", json=body(sim_batches("base1", 400))).status_code == 200

        def send(method: str, path: str, ctype: str = json_ct, **params: str) -> httpx.Response:
            example = examples[(method, path, ctype)]
            content = msgpack.packb(example) if ctype == msgpack_ct else None
            return c.request(method, path.format(**params), headers={"Content-Type": ctype},
                             content=content, json=None if content else example)

        ingest = send("POST", "/v1/ingest")
        assert ingest.status_code == 200 and ingest.json()["stored"] == 2, ingest.text
        # The msgpack example is the same data: a retry, so both batches are duplicates.
        again = send("POST", "/v1/ingest", msgpack_ct)
        assert again.status_code == 200 and again.json()["duplicates"] == 2, again.text
        checks = [
            (send("POST", "/v1/admin/cohorts"), 201),
            (send("POST", "/v1/admin/cohorts/{cohort}/subjects", cohort="trial-1"), 200),
            (send("POST", "/v1/admin/subjects"), 201),  # into the example cohort
            (send("POST", "/v1/admin/keys"), 201),
            (send("PUT", "/v1/subjects/{subject_id}/baseline", subject_id="base1"), 200),
        ]
        rule = send("POST", "/v1/subjects/{subject_id}/alerts/rules", subject_id="s01")
        checks.append((rule, 201))
        checks.append((send("PUT", "/v1/subjects/{subject_id}/alerts/rules/{rule_id}",
                            subject_id="s01", rule_id=rule.json().get("id", "?")), 200))
        assert [(r.status_code, r.request.url.path) for r, _ in checks] == [
            (want, r.request.url.path) for r, want in checks], [r.text for r, _ in checks]
        # Every documented body was posted above.
        posted = {("POST", "/v1/ingest", json_ct), ("POST", "/v1/ingest", msgpack_ct)} | {
            (r.request.method, p, json_ct) for r, _ in checks
            for (m, p, ct) in examples if m == r.request.method and re.fullmatch(
                re.sub(r"\{[^}]+\}", "[^/]+", p), r.request.url.path)}
        assert posted == set(examples)


def test_alert_curl_examples_of_the_docs_work_as_written(url: str) -> None:
    """docs/alerts.md's curl commands, run by a shell against the server (only the host and
    the key filled in): each creates its rule."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", doc, re.S) if "alerts/rules" in b]
    with admin_client(url) as c:
        if c.get("/v1/subjects/s01").status_code == 404:  # the examples test may have made it
            assert c.post("/v1/ingest", json=body(sim_batches("s01", 20))).status_code == 200
        key = create_key(c, "reader", cohorts=["alerts-doc"])
        assert c.post("/v1/admin/cohorts/alerts-doc/subjects",
                      json={"subjects": ["s01"]}).status_code == 200
        before = len(c.get("/v1/subjects/s01/alerts/rules").json())
        script = block.replace("localhost:8000", url.removeprefix("http://"))
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env={
            **os.environ, "KEY": key}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        answers, text, at = [], out.stdout.strip(), 0
        while at < len(text):  # curl prints the answers back to back
            answer, at = json.JSONDecoder().raw_decode(text, at)
            answers.append(answer)
            at = len(text) - len(text[at:].lstrip())
        assert [a.get("kind") for a in answers] == ["stress_sustained", "no_data"], out.stdout
        assert len(c.get("/v1/subjects/s01/alerts/rules").json()) == before + 2
