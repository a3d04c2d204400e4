"""Feature windows: the scheduler (:class:`SubjectStream`) and feature sets, batch == stream."""

from wearemo.features.batch import featurize_recording, windows_to_frame
from wearemo.features.compute import FEATURE_NAMES, FEATURE_UNITS, window_features
from wearemo.features.config import WindowConfig, first_window_end
from wearemo.features.hrv import (
    DFA_MIN_INTERVALS,
    FREQ_BANDS_HZ,
    FREQ_MIN_WINDOW_S,
    MIN_INTERVALS,
    SAMPEN_MIN_INTERVALS,
    HRVFrequency,
    HRVNonlinear,
    HRVTime,
    hrv_dfa_alpha1,
    hrv_frequency_features,
    hrv_nonlinear_features,
    hrv_sampen,
    hrv_time_features,
)
from wearemo.features.stream import SubjectStream
from wearemo.features.window import FeatureWindow

__all__ = [
    "DFA_MIN_INTERVALS",
    "FEATURE_NAMES",
    "FEATURE_UNITS",
    "FREQ_BANDS_HZ",
    "FREQ_MIN_WINDOW_S",
    "MIN_INTERVALS",
    "SAMPEN_MIN_INTERVALS",
    "FeatureWindow",
    "HRVFrequency",
    "HRVNonlinear",
    "HRVTime",
    "SubjectStream",
    "WindowConfig",
    "featurize_recording",
    "first_window_end",
    "hrv_dfa_alpha1",
    "hrv_frequency_features",
    "hrv_nonlinear_features",
    "hrv_sampen",
    "hrv_time_features",
    "window_features",
    "windows_to_frame",
]
