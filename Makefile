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

## test: set everything up, then run the whole suite with branch coverage
test: $(STAMP)
	@rm -f .coverage .coverage.* .test-summary
	@status=0; \
	$(PY) -m coverage run -m nose2 -c setup.cfg --start-dir tests --top-level-directory . || status=1; \
	$(PY) -m coverage combine -q; \
	$(PY) -m coverage report || status=1; \
	cat .test-summary 2>/dev/null || { echo "0 passed, 1 failed"; status=1; }; \
	exit $$status

lint: $(STAMP)
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check --line-length 100 indico tests config.py benchmarks

clean:
	rm -rf $(VENV) var .coverage .coverage.* .test-summary
