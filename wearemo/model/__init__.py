"""Model stage: per-subject state estimation from feature windows.

Example
-------
>>> from wearemo.model import load_model
>>> model = load_model("default")  # doctest: +SKIP
>>> state = model.for_subject("s1").update(window)  # doctest: +SKIP
"""

from wearemo.model.artifact import ModelVersionError, StressModel, load_model
from wearemo.model.baseline import BaselineConfig, PersonalBaseline
from wearemo.model.estimator import DEFAULT_FEATURES, GateConfig, SubjectEstimator
from wearemo.model.state import StateEstimate, StateLabel

__all__ = [
    "DEFAULT_FEATURES",
    "BaselineConfig",
    "GateConfig",
    "ModelVersionError",
    "PersonalBaseline",
    "StateEstimate",
    "StateLabel",
    "StressModel",
    "SubjectEstimator",
    "load_model",
]
