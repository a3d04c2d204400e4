"""The one-way data flow of ARCHITECTURE.md, enforced on the source tree.

Each module's imports are read from its AST (including imports inside functions) and checked
against the stage order: a stage may import the shared vocabulary and stages to its left only;
``firmware_bridge`` may import ``wearemo.samples`` and nothing else of ``wearemo``; ``wearemo``
never imports ``firmware_bridge``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Left to right; a stage may import any stage of a lower rank. Sources (ingest, datasets) share
# a rank: both are entry points and neither imports the other.
RANK = {
    "samples": 0,
    "settings": 1,
    "metrics": 1,
    "logs": 1,
    "ingest": 2,
    "datasets": 2,
    "signals": 3,
    "features": 4,
    "model": 5,
    "store": 6,
    "batch": 7,
    "importer": 7,
    "pipeline": 7,
    "alerts": 7,
    "api": 8,
    "cli": 9,
    "__main__": 10,
    "__init__": 10,
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _stage(module_path: Path, package: str) -> str:
    rel = module_path.relative_to(ROOT / package)
    return rel.parts[0].removesuffix(".py")


def _violations() -> list[str]:
    out: list[str] = []
    for path in sorted((ROOT / "wearemo").rglob("*.py")):
        stage = _stage(path, "wearemo")
        for line, name in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if name.split(".")[0] == "firmware_bridge":
                out.append(f"{where}: wearemo never imports firmware_bridge")
            elif name.startswith("wearemo."):
                target = name.split(".")[1]
                if target == stage:
                    continue
                if target not in RANK:
                    out.append(f"{where}: unknown stage {target!r} (add it to RANK)")
                elif RANK[target] >= RANK.get(stage, 0):
                    out.append(f"{where}: stage {stage!r} may not import stage {target!r}")
    for path in sorted((ROOT / "firmware_bridge").rglob("*.py")):
        for line, name in _imports(path):
            if name.startswith("wearemo") and name != "wearemo.samples":
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}: "
                           "firmware_bridge may import wearemo.samples only")
    return out


def test_data_flows_one_way() -> None:
    assert _violations() == []


def test_checker_catches_a_backward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The checker itself must be able to fail: plant a backward import in a copy of the layout.
    fake = tmp_path / "wearemo" / "signals"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from wearemo.api import app\nimport firmware_bridge\n")
    (tmp_path / "firmware_bridge").mkdir()
    (tmp_path / "firmware_bridge" / "x.py").write_text("from wearemo.features import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _violations()
    assert len(found) == 3, found
