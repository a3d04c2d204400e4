"""422 bodies that name the field: ``{"detail": [{type, loc, field, msg}, ...]}``.

Pydantic reports a failed ``SampleBatch`` model check at the batch (``batches.0``); the check's
message starts with the field it concerns (``values[17]: not a finite number``), so the
location is extended to ``batches.0.values.17``. Union branches (``values`` is a list of numbers
*or* of triples) are reduced to the branch that explains the input best, and every message
starts with the field it is about. The offending input is never echoed back (it may be megabytes
of samples, or NaN, which JSON cannot carry).

Example
-------
>>> [issue] = validation_issues([{"type": "value_error", "loc": ("body", "batches", 0),
...                               "msg": "Value error, values[17]: not a finite number"}])
>>> issue["field"], issue["msg"]
('batches.0.values.17', 'values[17]: not a finite number')
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

from wearemo.samples import SampleBatch
from wearemo.store.base import StoreUnavailableError

__all__ = [
    "on_http_error",
    "on_store_unavailable",
    "on_validation_error",
    "too_deep_message",
    "validation_issues",
]

_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
_FIELD_PREFIX = re.compile(r"^(?P<name>[a-z_]+)(?:\[(?P<index>\d+)\])?(?=[: ])")
_BATCH_FIELDS = frozenset(SampleBatch.model_fields)


def _is_tag(part: object) -> bool:
    # pydantic names union branches by their type, e.g. "list[float]"; field names have no "["
    return isinstance(part, str) and "[" in part


def _pick_union_branches(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep, per union, the branch with the fewest errors (ties: the most specific)."""
    branches: dict[tuple[Any, ...], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, err in enumerate(errors):
        loc = err["loc"]
        for j, part in enumerate(loc):
            if _is_tag(part):
                branches[tuple(loc[:j])][part].append(i)
                break
    drop: set[int] = set()
    for by_tag in branches.values():
        if len(by_tag) < 2:
            continue
        best = min(
            by_tag,
            key=lambda tag: (len(by_tag[tag]), -max(len(errors[i]["loc"]) for i in by_tag[tag])),
        )
        drop.update(i for tag, idx in by_tag.items() if tag != best for i in idx)
    return [e for i, e in enumerate(errors) if i not in drop]


def _label(path: Sequence[str | int]) -> str:
    """``["batches", 0, "values", 17]`` -> ``"values[17]"``."""
    names = [j for j, p in enumerate(path) if isinstance(p, str)]
    if not names:
        return "body"
    j = names[-1]
    return str(path[j]) + "".join(f"[{p}]" for p in path[j + 1 :])


def validation_issues(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI/pydantic errors as ``{type, loc, field, msg}``, naming the innermost field.

    Example
    -------
    >>> validation_issues([{"type": "greater_than_equal", "loc": ("body", "batches", 2,
    ...                     "start_ns"), "msg": "Input should be greater than or equal to 0"}])
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'type': 'greater_than_equal', 'loc': ['body', 'batches', 2, 'start_ns'],
      'field': 'batches.2.start_ns', 'msg': 'start_ns: Input should be greater than or equal to 0'}]
    """
    cleaned = []
    for err in errors:
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        kind = str(err.get("type", "value_error"))
        if kind == "json_invalid":  # loc is ("body", character offset)
            where = loc[1] if len(loc) > 1 else "?"
            why = (err.get("ctx") or {}).get("error", "")
            cleaned.append({"type": kind, "loc": ["body"],
                            "msg": f"body: invalid JSON at character {where}: {why}"})
            continue
        match = _FIELD_PREFIX.match(msg)
        if (
            match
            and kind == "value_error"
            and match["name"] in _BATCH_FIELDS
            and len(loc) >= 3
            and loc[0] == "body"
            and loc[-2] == "batches"
        ):
            loc.append(match["name"])
            if match["index"] is not None:
                loc.append(int(match["index"]))
        cleaned.append({"type": kind, "loc": loc, "msg": msg})
    issues = []
    for err in _pick_union_branches(cleaned):
        loc = [p for p in err["loc"] if not _is_tag(p)]
        path = loc[1:] if loc and loc[0] in _SOURCES else loc
        label = _label(path)
        msg = err["msg"] if err["msg"].startswith(label) else f"{label}: {err['msg']}"
        issues.append(
            {
                "type": err["type"],
                "loc": loc,
                "field": ".".join(str(p) for p in path) or "body",
                "msg": msg,
            }
        )
    return issues


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler: HTTP 422 with :func:`validation_issues`."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": validation_issues(exc.errors())})


async def on_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler: HTTP 503 with ``Retry-After`` when the store cannot take a call now.

    Raised by a full write buffer (backpressure) or an unreachable database; batches of the
    request before the refused one stay stored, the refused one and later ones are not, so
    the client retries the request after ``Retry-After`` seconds (duplicates are recognised).
    """
    assert isinstance(exc, StoreUnavailableError)
    return JSONResponse(
        status_code=503,
        headers={"Retry-After": str(exc.retry_after_s)},
        content={"detail": f"store unavailable: {exc}"},
    )


def too_deep_message(form: str) -> str:
    """The 422 message for a body nested deeper than its decoder recurses.

    Python's JSON decoder recurses once per level and stops at the interpreter's recursion
    limit (``RecursionError``), msgpack's at 1024 levels: the work is bounded either way, and
    no wearemo request needs more than a few levels.

    Example
    -------
    >>> too_deep_message("JSON")[:37]
    'body: JSON nested too deeply to decod'
    """
    return (f"body: {form} nested too deeply to decode (arrays/objects hundreds of levels "
            "deep; a wearemo request needs a few)")


def _allowed_methods(routes: Sequence[BaseRoute], request: Request) -> list[str]:
    """Every method some route serves at the request's path."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:  # PARTIAL: the path matches, the method does not
                methods |= route.methods
    return sorted(methods)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Exception handler for HTTP errors raised by routing and by FastAPI itself.

    * 405: Starlette names in ``Allow`` only the methods of the first route matching the path,
      but each method of a path is its own route here (``GET`` and ``PUT .../baseline``), so
      ``Allow`` is rebuilt from every route at the path (RFC 9110 15.5.6).
    * A body FastAPI cannot decode (e.g. JSON that is not UTF-8, or nested so deeply that the
      decoder gives up with ``RecursionError``) comes as a 400 with no field named; it is
      answered like any other unparsable body: 422 naming ``body``.

    Everything else is FastAPI's default answer.
    """
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = ", ".join(_allowed_methods(request.app.router.routes, request))
        return JSONResponse(status_code=405, headers={"Allow": allow},
                            content={"detail": f"method {request.method} not allowed; "
                                     f"allowed: {allow}"})
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        return JSONResponse(status_code=422, content={"detail": [{
            "type": "too_deep", "loc": ["body"], "field": "body",
            "msg": too_deep_message("JSON")}]})
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # UnicodeDecodeError is a ValueError; FastAPI chains it ("raise ... from e").
        return JSONResponse(status_code=422, content={"detail": [{
            "type": "json_invalid", "loc": ["body"], "field": "body",
            "msg": f"body: not a JSON document ({exc.__cause__.__class__.__name__})"}]})
    return await http_exception_handler(request, exc)
