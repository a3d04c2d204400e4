"""Model artifacts: a fitted classifier plus the manifest that says what it is.

An artifact is a folder with ``model.skops`` (the scikit-learn estimator, serialised with skops so
loading never unpickles arbitrary code), ``manifest.json`` (library versions, feature names,
gating and baseline settings, training subjects, data hash, leave-one-subject-out scores) and
``MODEL_CARD.md``. The package ships one as ``default``.

Loading an artifact written with another scikit-learn or NeuroKit2 minor version fails with a
:class:`ModelVersionError` instead of silently producing different numbers.

Example
-------
>>> model = load_model("default")  # doctest: +SKIP
>>> est = model.for_subject("s1")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import skops.io as sio

from wearemo.model.baseline import BaselineConfig
from wearemo.model.estimator import GateConfig, ProbabilisticClassifier, SubjectEstimator

__all__ = [
    "DEFAULT_MODEL_DIR",
    "ModelVersionError",
    "StressModel",
    "library_versions",
    "load_model",
]

DEFAULT_MODEL_DIR = Path(__file__).with_name("default")

#: Libraries whose minor version must match for an artifact to load (their numbers change
#: between minor releases: tree internals, filter designs, peak detectors).
_PINNED = ("scikit-learn", "neurokit2")
_REPORTED = ("scikit-learn", "neurokit2", "numpy", "scipy", "skops", "wearemo")


class ModelVersionError(RuntimeError):
    """The artifact was trained with library versions that differ from the installed ones."""


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that determine a model's numbers.

    >>> "scikit-learn" in library_versions()
    True
    """
    return {name: metadata.version(name) for name in _REPORTED}


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _trusted_types(path: Path) -> list[str]:
    # skops lists every type it would have to construct; accept only scikit-learn, NumPy and
    # SciPy internals and our own classifier, and refuse anything else rather than trusting
    # the file blindly.
    untrusted = sio.get_untrusted_types(file=path)
    allowed = ("sklearn.", "numpy.", "scipy.", "builtins.")
    ours = {"wearemo.model.classifier.StressClassifier", "wearemo.model.selection.ModelSearch"}
    bad = [t for t in untrusted if not (t.startswith(allowed) or t in ours)]
    if bad:
        raise ValueError(f"{path}: refuses to load untrusted types {bad}")
    return untrusted


@dataclass(slots=True)
class StressModel:
    """A stress vs non-stress model with its gating, baseline settings and manifest."""

    classifier: ProbabilisticClassifier
    feature_names: list[str]
    gate: GateConfig = field(default_factory=GateConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Model version: name plus a hash of the serialised estimator."""
        return str(self.manifest.get("version", "unsaved"))

    def for_subject(self, subject_id: str) -> SubjectEstimator:
        """A fresh online estimator (with its own personal baseline) for one subject."""
        return SubjectEstimator.with_baseline(
            subject_id,
            classifier=self.classifier,
            feature_names=self.feature_names,
            version=self.version,
            gate=self.gate,
            baseline=self.baseline,
        )

    def save(self, out_dir: Path, *, name: str = "wearemo-stress", card: str | None = None) -> Path:
        """Write ``model.skops``, ``manifest.json`` (and ``MODEL_CARD.md``) into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = out_dir / "model.skops"
        sio.dump(self.classifier, model_path, compression=8)
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        self.manifest.update(
            {
                "name": name,
                "version": f"{name}-{digest[:12]}",
                "sha256": digest,
                "feature_names": list(self.feature_names),
                "gate": asdict(self.gate),
                "baseline": asdict(self.baseline),
                "versions": library_versions(),
            }
        )
        (out_dir / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
        if card is not None:
            (out_dir / "MODEL_CARD.md").write_text(card)
        return out_dir

    @classmethod
    def load(cls, path: Path, *, check_versions: bool = True) -> StressModel:
        """Load an artifact folder; refuses mismatched library versions and altered files."""
        manifest = json.loads((path / "manifest.json").read_text())
        model_path = path / "model.skops"
        if hashlib.sha256(model_path.read_bytes()).hexdigest() != manifest["sha256"]:
            raise ValueError(f"{model_path}: checksum does not match manifest.json")
        if check_versions:
            installed = library_versions()
            for lib in _PINNED:
                want = manifest["versions"][lib]
                if _minor(want) != _minor(installed[lib]):
                    raise ModelVersionError(
                        f"model {manifest['version']} was trained with {lib} {want}, but "
                        f"{installed[lib]} is installed; install {lib}=={want} or retrain with "
                        f"`wearemo train`"
                    )
        classifier = sio.load(model_path, trusted=_trusted_types(model_path))
        return cls(
            classifier=classifier,
            feature_names=list(manifest["feature_names"]),
            gate=GateConfig(**manifest["gate"]),
            baseline=BaselineConfig(**manifest["baseline"]),
            manifest=manifest,
        )


def load_model(name_or_path: str | Path = "default") -> StressModel:
    """Load the shipped ``"default"`` model or an artifact folder.

    Example
    -------
    >>> load_model("default").feature_names[0]  # doctest: +SKIP
    'rel_hr_mean_bpm'
    """
    path = DEFAULT_MODEL_DIR if str(name_or_path) == "default" else Path(name_or_path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"no model artifact at {path} (expected manifest.json)")
    return StressModel.load(path)
