"""Logging set-up: JSON lines for the service, plain text for people (CLI, demo).

Every record gets the current request id (``-`` outside a request), so a request's own log
lines can be found next to its access line. Access lines (logger ``wearemo.access``) carry
``request_id``, ``method``, ``route``, ``status``, ``duration_ms`` and ``key_id`` as fields;
sample values and secrets are never logged.

Example
-------
>>> configure_logging("plain", "WARNING")
>>> logging.getLogger("wearemo").getEffectiveLevel() == logging.WARNING
True
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

__all__ = ["REQUEST_ID", "LogFormat", "RequestIdFilter", "configure_logging", "json_formatter"]

LogFormat = Literal["json", "plain"]

#: The id of the request being served (set by the API's request middleware).
REQUEST_ID: ContextVar[str] = ContextVar("wearemo_request_id", default="-")

_PLAIN = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_MARK = "_wearemo_handler"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (from :data:`REQUEST_ID`) to every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the record; never drops it."""
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and the extras.

    Example
    -------
    >>> rec = logging.LogRecord("x", logging.INFO, "", 0, "hi", None, None)
    >>> json_formatter().format(rec).startswith('{"time"')
    True
    """
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


def configure_logging(
    fmt: LogFormat = "plain", level: str = "INFO", *, stream: TextIO | None = None
) -> None:
    """Send wearemo's and uvicorn's logs to ``stream`` (stderr) in ``fmt``, at ``level``.

    Calling it again replaces the handler it installed (nothing else is touched).

    Example
    -------
    >>> configure_logging("json", "INFO")  # doctest: +SKIP
    """
    if fmt not in ("json", "plain"):
        raise ValueError(f"log format {fmt!r}: expected 'json' or 'plain'")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(_PLAIN))
    handler.addFilter(RequestIdFilter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    for name in ("wearemo", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
