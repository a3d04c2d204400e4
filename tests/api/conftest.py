"""Fixtures of the API tests: one server per module, an httpx client per test (``client``
sends the bootstrap admin key, ``anon`` no key)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from api_support import ADMIN_KEY, bearer, serve, settings_for


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(settings_for(tmp_path_factory.mktemp("api"), max_batches_per_request=200)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30.0, headers=bearer(ADMIN_KEY)) as c:
        yield c


@pytest.fixture
def anon(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30.0) as c:
        yield c
