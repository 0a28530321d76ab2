# The two commands a newcomer runs are `make demo` (when it exists) and `make test`.
# Both create .venv and install what is missing, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: system-deps setup demo test lint typecheck unit bench vectors clean soak

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Reinstall when the project definition changes; the strict editable mode builds
# a link tree mapping safepassage.crypto -> crypto/ and so on.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=69" wheel
	$(BIN)/python -m pip install --quiet -e ".[dev]" --config-settings editable_mode=strict \
		> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	touch $(STAMP)

system-deps:
	@scripts/ensure-system-deps

setup: system-deps $(STAMP)
	@# New source files need a fresh link tree; this is quick once deps are there.
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=strict \
		> $(VENV)/relink.log 2>&1 || { cat $(VENV)/relink.log; exit 1; }

demo: setup
	$(BIN)/safepassage demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy -p safepassage.crypto -p safepassage.server -p safepassage.client

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

bench: setup
	$(BIN)/python -m bench.envelope
	$(BIN)/python -m bench.intake --store sqlite
	$(BIN)/python -m bench.intake --store postgresql
	$(BIN)/python -m bench.audit --store sqlite
	$(BIN)/python -m bench.audit --store postgresql
	$(BIN)/python -m bench.attachment
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.bulk --store sqlite
	$(BIN)/python -m bench.bulk --store postgresql

# The flood test for five minutes instead of twenty seconds, and the kill -9 tests again.
soak: setup
	CI=true SAFEPASSAGE_FLOOD_SECONDS=300 $(BIN)/pytest -q -s tests/test_flood.py tests/test_durability.py tests/test_durability_staff.py

vectors: setup
	$(BIN)/python -m tests.vectors.generate

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
