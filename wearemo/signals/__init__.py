"""Per-channel signal processing: cleaning, peaks, beat intervals, artefacts, quality.

Each step is a small typed function (``<signal>_<verb>``) returning a typed container with
unit-bearing names; NeuroKit2 does the work underneath where it is right.
"""

from wearemo.signals.acc import MOTION_THRESHOLD_G, AccMotion, acc_motion
from wearemo.signals.ecg import ECG_METHODS, EcgBeats, ecg_beats
from wearemo.signals.eda import SCR_MIN_AMPLITUDE_US, EDAComponents, eda_decompose
from wearemo.signals.ppg import Beats, PPGFiducials, ppg_beats, ppg_fiducials
from wearemo.signals.quality import PPG_SQI_MIN, ppg_template_sqi
from wearemo.signals.rr import RR_MAX_MS, RR_MIN_MS, CleanRR, rr_clean
from wearemo.signals.temp import TempLevel, linear_slope_per_min, temp_level
from wearemo.signals.tracks import BeatWindow, EDATrack, EDAWindow, PPGTrack

__all__ = [
    "ECG_METHODS",
    "MOTION_THRESHOLD_G",
    "PPG_SQI_MIN",
    "RR_MAX_MS",
    "RR_MIN_MS",
    "SCR_MIN_AMPLITUDE_US",
    "AccMotion",
    "BeatWindow",
    "Beats",
    "CleanRR",
    "EDAComponents",
    "EDATrack",
    "EDAWindow",
    "EcgBeats",
    "PPGFiducials",
    "PPGTrack",
    "TempLevel",
    "acc_motion",
    "ecg_beats",
    "eda_decompose",
    "linear_slope_per_min",
    "ppg_beats",
    "ppg_fiducials",
    "ppg_template_sqi",
    "rr_clean",
    "temp_level",
]
