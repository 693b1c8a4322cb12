# Every target does its own set-up from a fresh clone: it creates .venv when missing and
# installs the project (with the tested torch/torchvision pair) before it runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo bench reproduce lint clean

$(STAMP): pyproject.toml constraints-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m treelstm.demo

bench: $(STAMP)
	$(PY) -m benchmarks.batching --json runs/bench/batching.json --plot runs/bench/batching.png

reproduce: $(STAMP)
	$(PY) -m treelstm.reproduce table sst --seeds 5 --out runs/tables
	$(PY) -m treelstm.reproduce table sick --seeds 5 --out runs/tables

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
