# The two commands: `make demo` (main job end to end on the embedded store) and `make test`.
PYTHON ?= python3
VENV := .venv
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: env demo test lint typecheck unit servers clean

$(UV): scripts/bootstrap.sh
	PYTHON=$(PYTHON) bash scripts/bootstrap.sh

$(VENV)/.synced: pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --python $(PYTHON)
	touch $@

env: $(VENV)/.synced

demo: env
	$(VENV)/bin/wearemo demo --summary out/demo-summary.json

lint: env
	$(VENV)/bin/ruff check wearemo firmware_bridge tests benchmarks scripts

typecheck: env
	$(VENV)/bin/mypy

unit: env
	$(VENV)/bin/pytest tests notebooks --nbmake

servers:
	bash scripts/servers.sh

test: lint typecheck servers unit

clean:
	rm -rf $(VENV) .tools out .pytest_cache .mypy_cache .ruff_cache
