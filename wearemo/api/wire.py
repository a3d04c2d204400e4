"""Ingest request bodies on the wire: JSON and msgpack (with raw little-endian arrays).

Both forms carry the same :class:`~wearemo.api.schemas.IngestRequest`, are validated by the
same model and get the same 422 issues naming the field (``batches.0.values.17``). In msgpack,
a batch's ``values`` may be a ``bin`` of little-endian numbers with ``values_dtype``
(``"float32"`` or ``"float64"``; acc: x, y, z of each sample in turn) and ``timestamps_ns`` a
``bin`` of little-endian ``int64``; the format is specified in ``docs/ingest.md``.

Example
-------
>>> import msgpack, numpy as np
>>> batch = {"batch_id": "b1", "subject_id": "s1", "device_id": "d1", "channel": "eda",
...          "start_ns": 10**18, "rate_hz": 4.0, "values_dtype": "float32",
...          "values": np.array([3.0, 3.25], "<f4").tobytes()}
>>> body = parse_ingest_body(msgpack.packb({"batches": [batch]}), MSGPACK, max_batches=10)
>>> body.batches[0].values
[3.0, 3.25]
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from wearemo.api.errors import too_deep_message
from wearemo.api.schemas import IngestRequest
from wearemo.samples import CHANNEL_AXES, Channel

__all__ = ["JSON", "MSGPACK", "VALUE_DTYPES", "UnsupportedMediaTypeError", "parse_ingest_body"]

JSON = "application/json"
MSGPACK = "application/msgpack"
#: Content types read as msgpack (``application/x-msgpack`` is the older, unregistered name).
_MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

#: ``values_dtype`` names and their little-endian NumPy types.
VALUE_DTYPES: dict[str, str] = {"float32": "<f4", "float64": "<f8"}


class UnsupportedMediaTypeError(ValueError):
    """The body's ``Content-Type`` is neither JSON nor msgpack (HTTP 415)."""


def _issue(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"type": kind, "loc": ("body", *loc), "msg": msg}


def _invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> Exception:
    return RequestValidationError([_issue(loc, msg, kind)])


def media_type(content_type: str | None) -> str:
    """The bare media type of a ``Content-Type`` header (JSON when absent).

    Example
    -------
    >>> media_type("Application/MsgPack; charset=binary")
    'application/msgpack'
    """
    if not content_type:
        return JSON
    return content_type.split(";", 1)[0].strip().lower()


def parse_ingest_body(raw: bytes | str, content_type: str | None, *,
                      max_batches: int) -> IngestRequest:
    """Decode and validate an ingest body.

    Parameters
    ----------
    raw
        The request body (``str`` for a WebSocket text message, read as JSON).
    content_type
        The ``Content-Type`` header: JSON (``application/json`` or ``+json``) or msgpack
        (``application/msgpack``, ``application/x-msgpack``); ``None`` means JSON.
    max_batches
        Most batches accepted in one body (``max_batches_per_request``).

    Returns
    -------
    IngestRequest
        The validated batches.

    Raises
    ------
    RequestValidationError
        The body is malformed or a field is invalid (issues name the field).
    UnsupportedMediaTypeError
        Another content type.

    Example
    -------
    >>> parse_ingest_body('{"batches": []}', None, max_batches=5)
    Traceback (most recent call last):
    ...
    fastapi.exceptions.RequestValidationError: 1 validation error:
    ...
    """
    kind = media_type(content_type)
    if kind in _MSGPACK_TYPES:
        if isinstance(raw, str):
            raise UnsupportedMediaTypeError("msgpack bodies are binary")
        data = _msgpack_body(raw)
    elif kind == JSON or kind.endswith("+json"):
        data = _json_body(raw)
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {kind!r} is not accepted; send {JSON!r} or {MSGPACK!r}"
        )
    if isinstance(data, dict) and isinstance(data.get("batches"), list):
        n = len(data["batches"])
        if n > max_batches:
            raise _invalid(("batches",), f"batches: {n} batches in one request; at most "
                           f"{max_batches} are accepted (split the upload)", "too_long")
    try:
        return IngestRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])}
             for e in exc.errors(include_url=False, include_input=False)]
        ) from None


def _json_body(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:  # e.g. 100,000 "[": the decoder recurses; it stops at the limit
        raise _invalid((), too_deep_message("JSON"), "too_deep") from None
    except json.JSONDecodeError as exc:  # the same issue FastAPI gives for a JSON body
        raise RequestValidationError([{
            "type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
            "ctx": {"error": exc.msg}}]) from None
    except UnicodeDecodeError as exc:
        raise _invalid((), f"body: JSON must be UTF-8 ({exc.reason} at byte {exc.start})",
                       "json_invalid") from None


def _msgpack_body(raw: bytes) -> Any:
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except msgpack.StackError:  # nested deeper than the decoder's fixed stack (1024 levels)
        raise _invalid((), too_deep_message("msgpack"), "too_deep") from None
    except Exception as exc:  # msgpack raises several unrelated types for malformed input
        raise _invalid((), f"body: invalid msgpack ({type(exc).__name__}: {exc})",
                       "msgpack_invalid") from None
    if isinstance(data, dict) and isinstance(data.get("batches"), list):
        data["batches"] = [
            _typed_arrays(b, i) if isinstance(b, dict) else b
            for i, b in enumerate(data["batches"])
        ]
    return data


def _typed_arrays(batch: dict[str, Any], index: int) -> dict[str, Any]:
    """Turn a batch's ``bin`` arrays into number lists (numpy does the byte work)."""
    out = dict(batch)
    dtype_name = out.pop("values_dtype", None)
    values = out.get("values")
    where: tuple[str | int, ...] = ("batches", index)
    if isinstance(values, bytes):
        if dtype_name not in VALUE_DTYPES:
            raise _invalid((*where, "values_dtype"),
                           f"values_dtype: {dtype_name!r} is not one of "
                           f"{sorted(VALUE_DTYPES)} (required when values is a bin)")
        dtype = np.dtype(VALUE_DTYPES[dtype_name])
        try:
            axes = CHANNEL_AXES[Channel(str(out.get("channel")))]
        except ValueError:
            axes = 1  # the model names the bad channel
        step = dtype.itemsize * axes
        if len(values) % step:
            raise _invalid((*where, "values"),
                           f"values: {len(values)} bytes are not a whole number of samples "
                           f"({step} bytes each: {axes} x {dtype_name})")
        arr = np.frombuffer(values, dtype=dtype).astype(np.float64)
        out["values"] = (arr.reshape(-1, 3) if axes == 3 else arr).tolist()
    elif dtype_name is not None:
        raise _invalid((*where, "values_dtype"),
                       "values_dtype: only allowed when values is a bin (raw array)")
    stamps = out.get("timestamps_ns")
    if isinstance(stamps, bytes):
        if len(stamps) % 8:
            raise _invalid((*where, "timestamps_ns"),
                           f"timestamps_ns: {len(stamps)} bytes are not a whole number of "
                           "little-endian int64 values (8 bytes each)")
        out["timestamps_ns"] = np.frombuffer(stamps, dtype="<i8").tolist()
    return out
