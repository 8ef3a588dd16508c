# Every target installs first: `make train` and `make test` work from a fresh clone with only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install install-bench train eval predict test bench bench-tune reproduce clean

install: $(INSTALLED)

# torch is pinned to 2.13.0, the CPU wheel on this machine's disk: an open range would make pip pull a
# multi-GB CUDA build from PyPI.
$(INSTALLED): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check 'torch==2.13.0'
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

train: install  ## train the default model on data/sample into runs/latest (replacing it)
	$(BIN)/lstmcli train --layers 2 --bidirectional --overwrite $(ARGS)

eval: install  ## metrics of runs/latest on its test split
	$(BIN)/lstmcli eval $(ARGS)

predict: install  ## label TEXT with runs/latest
	$(BIN)/lstmcli predict "$(or $(TEXT),a wonderful, moving film)"

# One test worker per core (pytest-xdist); a file's tests stay on one worker, so each module-scoped fixture
# (a torchrun job, a killed run) is built once. ARGS="-n 0" runs them in this process.
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile $(ARGS)

install-bench: install  ## fastText, the anchor the benchmarks compare against
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,bench]'

bench: install-bench  ## speed figures (over 90 minutes on 2 cores; ARGS=--quick: under 3, into bench/results-quick.json); writes bench/results.json
	$(BIN)/python bench/run.py $(ARGS)

bench-tune: install-bench  ## lstmcli tune vs fastText's autotune, same budgets and splits, lstmcli over seeds 0/1/2 (about 100 minutes); writes bench/tune-results.json
	$(BIN)/python bench/tune.py $(ARGS)

reproduce: install-bench  ## train every recipe, evaluate it, compare with fastText; writes RESULTS.md
	$(BIN)/python bench/reproduce.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache build lstmcli.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
