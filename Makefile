VENV := .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install lint clean

$(STAMP): req.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r req.txt -e .
	touch $(STAMP)

install: $(STAMP)

## run: set everything up, then serve the API on the embedded database
run: $(STAMP)
	$(PY) -m indico.server

## test: set everything up, then run the whole suite twice (embedded database with branch
## coverage; a separately started database by INDICO_MONGODB_URI): see tests/run_suite.py
test: $(STAMP)
	@$(PY) -m tests.run_suite

lint: $(STAMP)
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check --line-length 100 indico tests config.py benchmarks

clean:
	rm -rf $(VENV) var .coverage .coverage.* .test-summary
