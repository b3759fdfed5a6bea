# Every target sets up .venv itself, so a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CROSSOVER := $(VENV)/bin/crossover
PLANNER := $(VENV)/.planner
STAMP := $(VENV)/.installed

.PHONY: setup test test-long demo lint bench clean

setup: $(STAMP)

# pip byte-compiles what it installs, and that stays: with PYTHONDONTWRITEBYTECODE set (as on our machines) nothing
# else ever compiles, and every process would compile torch, ray and mlflow again at each import (measured: an
# install with --no-compile saved 66 s and made the suite take over half as long again).
# What `crossover plan` needs (pyproject.toml's `planner` dependency group: the spec and CLI packages, PyTorch and psutil
# for the throughput it measures), installed first so that `make demo` shows the plan and its estimated duration within
# a minute (tests/test_planner_install.py builds this target in a fresh venv). Without an NVIDIA GPU, the CPU build of
# torch goes in first so pip does not pull a multi-GB CUDA build. pip installs dependency groups since 25.1.
$(PLANNER): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q --group planner
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-deps -e .
	touch $(PLANNER)

$(STAMP): $(PLANNER)
	PYTHONWARNINGS=ignore $(PY) -m pip install -q -e '.[dev,eval]'
	touch $(STAMP)

# pytest exits 5 when it collects no tests: that is a failure here, never a pass. Two workers (tests/conftest.py says
# which tests share one): the Ray tests mostly wait, and the rest fill those waits. The slowest 40 are listed at the end,
# so a CI log says where the suite's time goes.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=40 -m "not long"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

# The tests left out of `make test` to keep the suite near 25 minutes on 2 cores (marked `long`): those on a simulated
# autoscaling cluster (Ray's fake multi-node provider: real raylets on this machine), a node lost from a three-node
# cluster, and the longest studies of growth and faults; about 15-18 minutes more here.
test-long: setup
	$(PY) -m pytest -q -m long --durations=10

# A real small study end to end on the embedded defaults: the stdlib corpus, a local Ray instance, SQLite MLflow.
DEMO_STORE := sqlite:///$(CURDIR)/mlflow.db
demo: $(PLANNER)
	$(CROSSOVER) plan study_specs/smoke.yaml
	$(MAKE) --no-print-directory setup
	$(CROSSOVER) validate study_specs/*.yaml
	$(CROSSOVER) data prepare study_specs/smoke.yaml
	$(CROSSOVER) run study_specs/smoke.yaml --fresh --tracking-uri $(DEMO_STORE) --storage $(CURDIR)/.crossover/ray_results
	@echo ""
	@echo "MLflow store: $(CURDIR)/mlflow.db   open it with: .venv/bin/crossover ui   (then the link below)"
	$(CROSSOVER) analyze smoke --tracking-uri $(DEMO_STORE) --out $(CURDIR)/reports/smoke

lint: setup
	$(VENV)/bin/ruff check crossover tests bench
	$(VENV)/bin/ruff format --check crossover tests bench

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit $$?; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
