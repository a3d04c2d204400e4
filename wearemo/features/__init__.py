"""Feature windows: the scheduler (:class:`SubjectStream`) and feature sets, batch == stream."""

from wearemo.features.batch import featurize_recording, windows_to_frame
from wearemo.features.compute import FEATURE_NAMES, FEATURE_UNITS, ChannelSlice, window_features
from wearemo.features.config import WindowConfig, first_window_end
from wearemo.features.hrv import MIN_INTERVALS, HRVTime, hrv_time_features
from wearemo.features.stream import SubjectStream
from wearemo.features.window import FeatureWindow

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_UNITS",
    "MIN_INTERVALS",
    "ChannelSlice",
    "FeatureWindow",
    "HRVTime",
    "SubjectStream",
    "WindowConfig",
    "featurize_recording",
    "first_window_end",
    "hrv_time_features",
    "window_features",
    "windows_to_frame",
]
