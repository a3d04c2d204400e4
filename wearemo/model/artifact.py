"""Model artifacts: fitted variants plus the manifest that says what they are.

An artifact is a folder with ``model.skops`` (one scikit-learn classifier per channel variant,
serialised with skops so loading never unpickles arbitrary code), ``manifest.json`` (format,
target and classes, the variants with their channel groups, features and class priors, library
versions, gating and baseline settings, training subjects, data hash, leave-one-subject-out
scores) and ``MODEL_CARD.md``. The package ships one as ``default`` (target ``stress``).

Loading an artifact written with another scikit-learn or NeuroKit2 minor version, or in another
artifact format, fails with a :class:`ModelVersionError` instead of silently producing different
numbers.

Example
-------
>>> model = load_model("default")  # doctest: +SKIP
>>> est = model.for_subject("s1")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import skops.io as sio

from wearemo.model.baseline import RELATIVE_FEATURES, BaselineConfig
from wearemo.model.estimator import (
    ABSOLUTE_FEATURES,
    GateConfig,
    Head,
    SubjectEstimator,
    Variant,
    VariantSpec,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "DEFAULT_MODEL_DIR",
    "ModelVersionError",
    "StressModel",
    "library_versions",
    "load_model",
]

DEFAULT_MODEL_DIR = Path(__file__).with_name("default")

#: Layout version of ``manifest.json`` + ``model.skops`` (2: one classifier per variant).
ARTIFACT_FORMAT = 2

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
    """A state model (target ``stress``, ``affect``, ``task`` or ``valence``) with its channel
    variants, gating, baseline settings and manifest.

    Example
    -------
    >>> m = load_model("default")                     # doctest: +SKIP
    >>> m.target, [v.spec.name for v in m.variants]   # doctest: +SKIP
    ('stress', ['full', 'hr_eda', 'cardiac', 'eda'])
    """

    variants: list[Variant]
    target: str = "stress"
    classes: tuple[str, ...] = ("non_stress", "stress")
    gate: GateConfig = field(default_factory=GateConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Model version: name plus a hash of the serialised classifiers."""
        return str(self.manifest.get("version", "unsaved"))

    @property
    def feature_names(self) -> list[str]:
        """Every input any variant uses, in first-use order."""
        return list(dict.fromkeys(n for v in self.variants for n in v.spec.feature_names))

    @property
    def head(self) -> Head:
        """What this model contributes to a subject's estimator."""
        return Head(self.target, tuple(self.classes), tuple(self.variants), self.version)

    def variant(self, name: str) -> Variant:
        """The variant called ``name``; ``KeyError`` listing the options otherwise."""
        for v in self.variants:
            if v.spec.name == name:
                return v
        raise KeyError(f"model {self.version} has no variant {name!r}; options: "
                       f"{[v.spec.name for v in self.variants]}")

    def for_subject(
        self, subject_id: str, *, extra: Sequence[StressModel] = ()
    ) -> SubjectEstimator:
        """A fresh online estimator (with its own personal baseline) for one subject.

        ``extra`` adds the heads of other models (an affect or valence model) that score the
        same windows against the same baseline; they must share this model's gate and
        baseline settings and each target may appear once.
        """
        models = [self, *extra]
        targets = [_head_target(m.target) for m in models]
        if len(set(targets)) != len(targets):
            raise ValueError(f"each output may come from one model, got targets "
                             f"{[m.target for m in models]}")
        for m in extra:
            if (m.gate, m.baseline) != (self.gate, self.baseline):
                raise ValueError(
                    f"model {m.version} was trained with other gate/baseline settings than "
                    f"{self.version} ({m.gate}, {m.baseline} vs {self.gate}, {self.baseline}); "
                    "train both with the same settings")
        return SubjectEstimator.with_baseline(
            subject_id, heads=[m.head for m in models], gate=self.gate, baseline=self.baseline
        )

    def save(self, out_dir: Path, *, name: str | None = None, card: str | None = None) -> Path:
        """Write ``model.skops``, ``manifest.json`` (and ``MODEL_CARD.md``) into ``out_dir``."""
        name = name or f"wearemo-{self.target}"
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = out_dir / "model.skops"
        sio.dump({v.spec.name: v.classifier for v in self.variants}, model_path, compression=8)
        digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
        self.manifest.update(
            {
                "format": ARTIFACT_FORMAT,
                "name": name,
                "version": f"{name}-{digest[:12]}",
                "sha256": digest,
                "target": self.target,
                "classes": list(self.classes),
                "variants": [
                    {"name": v.spec.name, "requires": list(v.spec.requires),
                     "feature_names": list(v.spec.feature_names), "priors": list(v.priors)}
                    for v in self.variants
                ],
                "feature_names": self.feature_names,
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
        """Load an artifact folder; refuses other formats, mismatched library versions and
        altered files."""
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest.get("format") != ARTIFACT_FORMAT:
            raise ModelVersionError(
                f"{path}: artifact format {manifest.get('format', 1)} (written by an older "
                f"wearemo); this wearemo reads format {ARTIFACT_FORMAT}: retrain with "
                "`wearemo train`")
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
        _check_variants(path, manifest["variants"])
        classifiers = sio.load(model_path, trusted=_trusted_types(model_path))
        variants = [
            Variant(VariantSpec(v["name"], tuple(v["requires"]), tuple(v["feature_names"])),
                    classifiers[v["name"]], tuple(float(p) for p in v["priors"]))
            for v in manifest["variants"]
        ]
        return cls(
            variants=variants,
            target=str(manifest["target"]),
            classes=tuple(manifest["classes"]),
            gate=GateConfig(**manifest["gate"]),
            baseline=BaselineConfig(**manifest["baseline"]),
            manifest=manifest,
        )


def _check_variants(path: Path, variants: list[dict[str, Any]]) -> None:
    """Refuse variants whose inputs or channel groups this wearemo does not compute: such a
    model would see NaN for them in every window and silently score something else."""
    known = {*RELATIVE_FEATURES, *(f"rel_{n}" for n in RELATIVE_FEATURES), *ABSOLUTE_FEATURES}
    for v in variants:
        unknown = [n for n in v["feature_names"] if n not in known]
        groups = [g for g in v["requires"] if g not in ("beats", "eda", "hr")]
        if unknown or groups:
            raise ValueError(
                f"{path}: variant {v['name']!r} uses inputs {unknown} / channel groups {groups} "
                "that this wearemo does not compute (a model from another version?)")


def _head_target(target: str) -> str:
    # affect and task models both fill the state's affect output.
    return "affect" if target == "task" else target


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
