"""Loaders for real recordings; the batch entry point into the signals → features path."""

from wearemo.datasets.e4 import (
    E4_FILES,
    FINGERPRINT_CHANNELS,
    LabelSegment,
    Recording,
    find_recordings,
    load_recording,
)

__all__ = [
    "E4_FILES",
    "FINGERPRINT_CHANNELS",
    "LabelSegment",
    "Recording",
    "find_recordings",
    "load_recording",
]
