"""A virtual wearable on bumble's BLE stack, replaying a recording or a simulation.

Example
-------
>>> from firmware_bridge.virtual_wearable import SimulatedSource, VirtualWearable
>>> vw = VirtualWearable(SimulatedSource(seed=0, duration_s=5), name="vw-demo", speed=20)
>>> vw.address
'E6:E4:08:73:3D:6C'
"""

from firmware_bridge.virtual_wearable.sources import (
    BeatSeries,
    RecordingSource,
    RegularSignal,
    SignalSource,
    SimulatedSource,
)
from firmware_bridge.virtual_wearable.wearable import (
    FAULT_KINDS,
    FRAME_SECONDS,
    PMD_FACTORS,
    VirtualWearable,
)

__all__ = [
    "FAULT_KINDS",
    "FRAME_SECONDS",
    "PMD_FACTORS",
    "BeatSeries",
    "RecordingSource",
    "RegularSignal",
    "SignalSource",
    "SimulatedSource",
    "VirtualWearable",
]
