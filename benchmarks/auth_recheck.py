"""Cost of keeping open connections authorised: what each message and each change pays.

Measures, on a real key file (SQLite, WAL) in a temporary directory:

- ``current_us``: :meth:`PrincipalWatch.current` while nothing changed (what every live state
  and every ingest message pays): an in-memory check, no I/O;
- ``refresh_us``: :meth:`KeyStore.refresh` with no change (what every HTTP request, every
  ingest WebSocket message and the watcher pay): one single-row read;
- ``authenticate_us`` / ``authenticate_uncached_us``: checking a presented key with the cache
  warm, and with it emptied each time (every request before this cache existed read the key,
  its subjects, its cohorts and its grant);
- ``revoke_to_all_ended_ms``: from ``revoke`` until all ``--watches`` open watches of the key
  saw it.

The machine is shared, so figures vary; the last line is JSON.

Usage::

    .venv/bin/python benchmarks/auth_recheck.py [--n 20000] [--watches 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from wearemo.api.auth import Authenticator, PrincipalWatch
from wearemo.api.keystore import KeyStore


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


async def _run(path: Path, n: int, watches: int) -> dict[str, float]:
    await run_in_threadpool(lambda: None)  # start the worker threads, as a running server has
    keys = KeyStore(path)
    _ = keys.create_cohort("c", subjects=[f"s{i}" for i in range(50)])
    secret = keys.create_key("reader").secret
    keys.grant_cohort("c", secret.split("_")[1])
    auth = Authenticator(keys, "x" * 43)
    auth.bind(asyncio.get_running_loop())
    principal = auth.authenticate(secret)
    assert principal is not None

    out: dict[str, float] = {}
    with auth.watch(principal) as watch:
        await watch.current()
        t0 = time.perf_counter()
        for _ in range(n):
            await watch.current()
        out["current_us"] = (time.perf_counter() - t0) / n * 1e6
    out["refresh_us"] = _per_call_us(keys.refresh, n)
    out["authenticate_us"] = _per_call_us(lambda: auth.authenticate(secret), n // 10)

    def uncached() -> None:
        keys._cache.clear()  # what every request paid before: read key, subjects, grant
        auth.authenticate(secret)


    out["authenticate_uncached_us"] = _per_call_us(uncached, n // 10)

    open_watches = [auth.watch(principal) for _ in range(watches)]

    async def until_ended(watch: PrincipalWatch) -> None:
        while await watch.current() is not None:
            await watch.changed()

    waiting = [asyncio.ensure_future(until_ended(w)) for w in open_watches]
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    keys.revoke(principal.key_id)
    await asyncio.gather(*waiting)
    out["revoke_to_all_ended_ms"] = (time.perf_counter() - t0) * 1e3
    for w in open_watches:
        w.close()
    auth.close()
    keys.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--watches", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        result = asyncio.run(_run(Path(d) / "auth.sqlite3", args.n, args.watches))
    for name, value in result.items():
        print(f"{name:28s} {value:10.2f}")
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))


if __name__ == "__main__":
    main()
