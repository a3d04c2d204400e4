"""The tutorial notebooks as committed: readable on GitHub without running them.

nbmake executes them (``pytest notebooks --nbmake``); this checks what a reader sees: every
code cell was run, in order, with its outputs saved, and the figures are inline images.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_saved_with_its_outputs_and_inline_figures(path: Path) -> None:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), \
        "run every cell once, top to bottom, and save (jupyter execute --inplace)"
    assert all(c["outputs"] for c in code), "a code cell without saved output"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert errors == []
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    figures = [c for c in code if "plt.subplots" in "".join(c["source"])]
    assert len(images) >= len(figures) > 0  # each figure shown inline, not only saved

