VENV := .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-browser install lint clean deploy-up deploy-down deploy-restart deploy-test

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

## test-browser: only the page's browser tests (make test runs them too; see tests/browser/flow.py)
test-browser: $(STAMP)
	@$(PY) -c 'import sys; from tests.browser.chromium import ensure_chromium; r = ensure_chromium(); r and print("browser tests:", r)'
	$(PY) -m nose2 -c setup.cfg --top-level-directory . tests.browser.flow

## deploy-up: supervisord (BACKENDS indico processes, nx-27017) and nginx on 127.0.0.1:PORT, in DIR
PORT ?= 8080
BACKENDS ?= 2
SETTINGS ?=
deploy-up: $(STAMP)
	@test -n "$(DIR)" || { echo "usage: make deploy-up PORT=8080 DIR=/tmp/x [BACKENDS=2]"; exit 2; }
	$(PY) deploy/stack.py up --dir "$(DIR)" --port $(PORT) --backends $(BACKENDS) $(foreach s,$(SETTINGS),--set $(s))

## deploy-down: stop the stack in DIR; no process is left
deploy-down: $(STAMP)
	@test -n "$(DIR)" || { echo "usage: make deploy-down DIR=/tmp/x"; exit 2; }
	$(PY) deploy/stack.py down --dir "$(DIR)"

## deploy-restart: restart the backends of the stack in DIR one at a time
deploy-restart: $(STAMP)
	@test -n "$(DIR)" || { echo "usage: make deploy-restart DIR=/tmp/x"; exit 2; }
	$(PY) deploy/stack.py restart --dir "$(DIR)"

## deploy-test: load, scaling and fault scenarios through nginx (docs/RELIABILITY.md)
deploy-test: $(STAMP)
	$(PY) deploy/reliability.py

## lint: ruff over the code (rules in ruff.toml; ruff comes with the venv, pinned in req.txt),
## then mypy over indico/services and indico/db (setup.cfg's [mypy]); both run, and lint fails
## if either finds something
lint: $(STAMP)
	status=0; \
	$(VENV)/bin/ruff check indico tests benchmarks deploy config.py setup.py || status=1; \
	$(VENV)/bin/mypy indico/services indico/db || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) var .coverage .coverage.* .test-summary
