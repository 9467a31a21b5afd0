# Two entry points (README): `make demo` runs the platform in embedded mode, `make test` runs the tests.
# Both create and fill .venv by themselves. CPU installs pin torch==2.13.0 (a CPU build; other specs pull CUDA).
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]' "$(TORCH_SPEC)"
	touch $@

.PHONY: demo test lint bench
demo: $(VENV)/.installed
	$(VENV)/bin/flowdppo up --demo

test: $(VENV)/.installed
	bash scripts/system-deps.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

bench: $(VENV)/.installed
	$(PY) bench/rl_quality.py
	$(PY) bench/trainer_overhead.py
