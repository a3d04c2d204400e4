"""Query parameters shared by the read endpoints: a time range and a page size.

Example
-------
>>> TimeRange.parse("1.5", "2").end_ns
2000000000
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.exceptions import RequestValidationError

from wearemo.api.routes.subjects import TimeParam, parse_time_ns

__all__ = ["Range", "TimeRange", "next_start_header", "time_range"]


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open ``[start_ns, end_ns)`` range of unix ns; ``None`` is open-ended."""

    start_ns: int | None = None
    end_ns: int | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> TimeRange:
        """Parse query times (unix seconds or ISO-8601); HTTP 422 naming the bad one.

        Example
        -------
        >>> TimeRange.parse(None, "1970-01-01T00:00:01Z")
        TimeRange(start_ns=None, end_ns=1000000000)
        """
        start_ns = None if start is None else parse_time_ns(start, name="start")
        end_ns = None if end is None else parse_time_ns(end, name="end")
        if start_ns is not None and end_ns is not None and start_ns > end_ns:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("query", "start"),
                  "msg": f"start ({start}) is after end ({end})"}]
            )
        return cls(start_ns, end_ns)


def time_range(start: TimeParam = None, end: TimeParam = None) -> TimeRange:
    """Dependency: the ``start`` / ``end`` query parameters as a :class:`TimeRange`."""
    return TimeRange.parse(start, end)


#: ``start`` and ``end`` query parameters (unix seconds or ISO-8601), validated.
Range = Annotated[TimeRange, Depends(time_range)]


def next_start_header(next_ns: int) -> str:
    """``X-Next-Start`` value: exact decimal unix seconds (a float would lose nanoseconds).

    Example
    -------
    >>> next_start_header(1_700_000_000_000_000_001)
    '1700000000.000000001'
    """
    return f"{next_ns // 1_000_000_000}.{next_ns % 1_000_000_000:09d}"
