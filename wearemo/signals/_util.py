"""Shared helpers for the signal stages (not public)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet"]


@contextmanager
def quiet() -> Iterator[None]:
    """Silence NeuroKit2/NumPy/SciPy warnings on short or flat windows.

    Such windows are expected in a stream (device warm-up, lost contact); the caller marks them
    through quality and coverage instead of a warning per window.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
