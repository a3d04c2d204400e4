"""Add content fingerprints of the training recordings to a model artifact's manifest.

``wearemo train`` writes ``training_fingerprints`` itself; this adds them to an artifact
trained before it did (the shipped default model), from the same data folder. The folder must
hash to the manifest's ``data_hash``, so the fingerprints are those of the data the model was
trained on:

    .venv/bin/python scripts/add_training_fingerprints.py wearemo/model/default \\
        ../shared/data/stress-predict

Only ``manifest.json`` changes (its checksum covers ``model.skops``, which is untouched).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wearemo.batch import _data_hash, manifest_fingerprints, recording_fingerprints
from wearemo.datasets import find_recordings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="artifact folder (with manifest.json)")
    ap.add_argument("data", type=Path, help="the recordings the model was trained on")
    a = ap.parse_args()
    path = a.model / "manifest.json"
    manifest = json.loads(path.read_text())
    digest = _data_hash(find_recordings(a.data))
    if digest != manifest.get("data_hash"):
        sys.exit(f"{a.data} hashes to {digest}, not the manifest's data_hash "
                 f"{manifest.get('data_hash')}: not the data this model was trained on")
    subjects = manifest["training_subjects"]
    fps = recording_fingerprints(a.data, subjects=subjects)
    missing = sorted(set(subjects) - set(fps))
    if missing:
        sys.exit(f"training subjects without a recording folder in {a.data}: {missing}")
    manifest["training_fingerprints"] = manifest_fingerprints(fps)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{path}: fingerprints of {len(fps)} training recordings "
          f"({sum(len(d) for c in fps.values() for d in c.values())} blocks)")


if __name__ == "__main__":
    main()
