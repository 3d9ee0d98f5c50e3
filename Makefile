# Two commands: `make demo` (install + run the platform with the digits demo) and `make test`.
# The venv is reinstalled only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
# torch is pinned to the local CPU wheel; every pip call passes the constraints (see README).
PIP_INSTALL := $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test lint bench clean

demo: $(VENV)/.installed-examples
	$(VENV)/bin/modelport up --demo

test: $(VENV)/.installed-dev
	@bash scripts/ensure-services.sh
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: $(VENV)/.installed-dev
	$(VENV)/bin/python benchmarks/gateway_overhead.py

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-examples: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[examples]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[dev]'
	@touch $@ $(VENV)/.installed-examples

clean:
	rm -rf $(VENV) build *.egg-info
