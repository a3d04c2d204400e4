"""Per-channel signal processing: cleaning, peaks, beat intervals, artefacts, quality.

Each step is a small typed function (``<signal>_<verb>``) returning a typed container with
unit-bearing names; NeuroKit2 does the work underneath where it is right.
"""

from wearemo.signals.acc import MOTION_THRESHOLD_G, AccMotion, acc_motion
from wearemo.signals.ecg import ECG_METHODS, EcgBeats, ecg_beats
from wearemo.signals.eda import SCR_MIN_AMPLITUDE_US, EDAComponents, eda_decompose
from wearemo.signals.ppg import Beats, ppg_beats
from wearemo.signals.rr import RR_MAX_MS, RR_MIN_MS, CleanRR, rr_clean
from wearemo.signals.temp import TempLevel, linear_slope_per_min, temp_level

__all__ = [
    "ECG_METHODS",
    "MOTION_THRESHOLD_G",
    "RR_MAX_MS",
    "RR_MIN_MS",
    "SCR_MIN_AMPLITUDE_US",
    "AccMotion",
    "Beats",
    "CleanRR",
    "EDAComponents",
    "EcgBeats",
    "TempLevel",
    "acc_motion",
    "ecg_beats",
    "eda_decompose",
    "linear_slope_per_min",
    "ppg_beats",
    "rr_clean",
    "temp_level",
]
