# Every target sets up .venv itself, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CROSSOVER := $(VENV)/bin/crossover
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

# Without an NVIDIA GPU, install the CPU build of torch first so pip does not pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev,eval]'
	touch $(STAMP)

# pytest exits 5 when it collects no tests: that is a failure here, never a pass.
test: setup
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

demo: setup
	@for spec in study_specs/*.yaml; do $(CROSSOVER) plan $$spec || exit $$?; done

lint: setup
	$(VENV)/bin/ruff check crossover tests bench
	$(VENV)/bin/ruff format --check crossover tests bench

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit $$?; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
