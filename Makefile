# Every target builds the pinned .venv it needs by itself, so both commands work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-triton-full lint build-native docs-serve bench bench-quick gpu-check soak clean

$(STAMP): requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cafusion demo

lint: $(STAMP)
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts
	$(PY) -m mypy
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The documentation site (topic pages and the API reference) at http://127.0.0.1:8000, rebuilt on edits.
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# The C++ kernels compile (once per machine, ~1 min on 2 cores) while the linters run.
build-native: $(STAMP)
	$(PY) -m cafusion build-native

test: $(STAMP)
	$(MAKE) --no-print-directory -j2 lint build-native
	$(PY) -m pytest -n 2 -q

# cafusion bench: image table, shape sweep, bf16 autocast and whole networks, in a default process
# (docs/performance.md, "Benchmark"); bench-quick is the small variant (small shapes, fp32, 5 rounds, no compile).
bench: $(STAMP)
	$(PY) -m cafusion bench

bench-quick: $(STAMP)
	$(PY) -m cafusion bench --quick

# 30 consecutive two-process torchrun trainings on the CPU; prints the failure count (must be 0). Not CI: minutes.
soak: $(STAMP)
	$(PY) scripts/soak_torchrun.py --runs 30

gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py --out bench-results/gpu

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

# The Triton interpreter sweeps in full (make test runs a fixed sample of their cases); minutes on a CPU.
test-triton-full: $(STAMP)
	CAFUSION_TRITON_FULL=1 $(PY) -m pytest -q tests/test_triton_kernels.py tests/test_triton_small.py tests/test_backends.py -k "interpreter"
