# Two commands do all the set-up on a fresh machine:
#   make sweep   - venv + install + the default sweep.yaml on the bundled digits data (CPU or every GPU)
#   make test    - venv + install + the test suite
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
HPO    := $(VENV)/bin/hpo
ARGS   ?=
# Test processes (pytest-xdist): 2 fits the 2-core CI machine; a test file runs whole in one process (its
# module fixtures share sweeps between its tests). JOBS=0 runs the suite in this process.
JOBS   ?= 2

.PHONY: setup sweep test test-fast stress bench bench-quality dashboard mlflow-ui clean constraints

setup: $(VENV)/.installed

# constraints.txt pins every package to the versions the tests passed with: a fresh machine gets the same set.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

sweep: setup
	$(HPO) run sweep.yaml $(ARGS)

test: setup
	$(PY) -m pytest -q -ra --durations=25 -n $(JOBS) --dist loadfile $(ARGS)

# The long randomized fault loops (thirty power cuts: 6 min); `make test` runs their deterministic cases.
stress: setup
	$(PY) -m pytest -q -ra -m stress $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow" $(ARGS)

bench: setup
	$(PY) bench/bench_default_sweep.py
	$(PY) bench/bench_overhead.py
	$(PY) bench/program_mode.py
	$(PY) bench/bench_speed.py
	$(PY) bench/bench_ray.py --trials 32 --epochs 27 --reps 3
	$(PY) bench/bench_models.py
	$(PY) bench/bench_scale.py --trials 10000 30000
	$(PY) bench/bench_multi.py
	$(PY) bench/bench_ops.py
	$(PY) bench/bench_gpu.py

# Search quality (issue 25): every contender on 6 LCBench tasks + Hartmann-6 (YAHPO's surrogate data in
# $YAHPO_DATA, default ../shared/data/yahpo_data); ARGS: a work folder (finished runs there are skipped).
bench-quality: setup
	YAHPO_DATA=$${YAHPO_DATA:-../shared/data/yahpo_data} PY=$(PY) bench/quality/run_full.sh $(ARGS)

dashboard: setup
	$(HPO) dashboard sweep.yaml

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///runs/digits-mlp/mlflow.db --host 127.0.0.1

clean:
	rm -rf runs .pytest_cache

# After changing dependencies: re-resolve, run the tests, then commit the new pins.
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^hpo' > constraints.txt
