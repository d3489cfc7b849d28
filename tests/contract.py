"""Contract fuzzing: schemathesis against a real indico server, every operation.

``python -m tests.contract [--examples N] [--seed S]`` starts ``python -m
indico.server`` on a free port with a data directory of its own (the embedded
database, the sample prices), signs up one account, and runs ``schemathesis
run --checks all`` over ``/openapi.json``: every generated request, valid or
not, must get an answer that the document allows (status, content type, body
schema, headers), never a 5xx, valid data accepted and invalid data refused.

Two things are arranged so that the run tests the API rather than itself:

- every request carries the account's bearer token, except ``auth/logout``,
  which gets a token of its own: it would otherwise revoke the fuzzer's;
- ``positive_data_acceptance`` ("a request the schema allows gets a 2xx") is
  off for the five operations whose acceptance depends on rules a JSON schema
  cannot state: ``portfolio/optimize``, ``portfolio/frontier`` and
  ``portfolio/backtest`` (``startDate`` before ``endDate``, and what the stored
  prices allow: known symbols, enough history, a feasible problem),
  ``portfolio/cancel`` (the id of a queued or running job of the caller's) and
  ``portfolio/list`` (a ``cursor`` must be one that ``portfolio/list`` gave).
  Every other check stays on for them.

Exit status 0 when schemathesis found nothing. The last line is
``contract: N passed, N failed`` (one per operation), which ``make test``
adds to its total.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from indico.db.embedded import _free_port as free_port
from tests.processes import stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Examples per operation and phase: enough to reach every field's edge cases
# (the coverage phase enumerates them whatever this number), small enough for CI.
DEFAULT_EXAMPLES = 40
SERVER_START_TIMEOUT = 60.0
# The server answers each request in milliseconds; this only bounds a hang.
REQUEST_TIMEOUT = 30.0

CONFIG = """\
base-url = "{base}"
headers = {{ Authorization = "Bearer {token}" }}
request-timeout = {timeout}
seed = {seed}

# Every check (the CLI's --checks all); set here, not on the command line,
# because command-line options would override the per-operation settings below.
[checks]
enabled = true

[generation]
max-examples = {examples}
deterministic = true

# Ids of saved results, so that portfolio/result and portfolio/delete reach
# their success paths (and their answers' schemas) too, not only the 404.
# (Each its own: portfolio/delete runs first and would leave result only 404s.)
[dictionaries.results]
values = {result_ids}

[dictionaries.deletable]
values = {deletable_ids}

[[operations]]
include-operation-id = "portfolio_result"
parameters = {{ "body.id" = {{ dictionary = "results", probability = 0.5 }} }}

[[operations]]
include-operation-id = "portfolio_delete"
parameters = {{ "body.id" = {{ dictionary = "deletable", probability = 0.5 }} }}

[[operations]]
include-operation-id = "auth_logout"
headers = {{ Authorization = "Bearer {logout_token}" }}

# startDate before endDate, known symbols and a feasible problem: acceptance of
# schema-valid data depends on rules (and stored prices) a JSON schema cannot state.
[[operations]]
include-operation-id = "portfolio_optimize"
checks.positive_data_acceptance.enabled = false

# The same rules as portfolio/optimize.
[[operations]]
include-operation-id = "portfolio_frontier"
checks.positive_data_acceptance.enabled = false

# The same rules as portfolio/optimize, and enough stored history before startDate.
[[operations]]
include-operation-id = "portfolio_backtest"
checks.positive_data_acceptance.enabled = false

# A job id must be one of the caller's queued or running jobs; a JSON schema cannot say so.
[[operations]]
include-operation-id = "portfolio_cancel"
checks.positive_data_acceptance.enabled = false

# A cursor must be one that portfolio/list gave; a JSON schema cannot say so.
[[operations]]
include-operation-id = "portfolio_list"
checks.positive_data_acceptance.enabled = false
"""


def post(base, route, body, token=None):
    """POST ``body`` as JSON; return the parsed answer (raises on a non-2xx)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + route, data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        return json.loads(response.read())


def start_server(directory, port):
    """Start ``python -m indico.server`` on ``port`` with its own data directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    # Cheapest Argon2 parameters (the default is OWASP's): the fuzzer signs up and
    # logs in thousands of times, and the hashing cost is not what it tests.
    env.update({"INDICO_DATA_DIR": directory, "INDICO_ARGON2_MEMORY_KIB": "8",
                "INDICO_ARGON2_TIME_COST": "1", "INDICO_LOG_LEVEL": "WARNING"})
    log_path = os.path.join(directory, "server.log")
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, "-m", "indico.server", f"--port={port}"],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}; "
                               f"see {log_path}")
        try:
            urllib.request.urlopen(base + "/healthCheck", timeout=2).close()
            return process, base
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the server did not answer /healthCheck in time") from None
            time.sleep(0.2)


def operation_outcomes(report_path):
    """``{operation: passed?}`` from schemathesis's NDJSON event stream."""
    outcomes = {}
    with open(report_path) as handle:
        for line in handle:
            event = json.loads(line)
            finished = event.get("ScenarioFinished")
            label = ((finished or {}).get("recorder") or {}).get("label")
            if not label:
                continue
            status = finished.get("status")
            # An operation passes only if every phase that ran it passed.
            ok = status in ("success", "skip")
            outcomes[label] = outcomes.get(label, True) and ok
    return outcomes


def run(examples, seed, keep):
    directory = tempfile.mkdtemp(prefix="indico-contract-")
    process, base = start_server(directory, free_port())
    try:
        account = {"email": "fuzzer@example.com", "password": "correct horse battery"}
        token = post(base, "/auth/signup", {**account, "name": "Fuzzer"})["data"]["token"]
        logout_token = post(base, "/auth/login", account)["data"]["token"]
        seed_request = {"symbols": ["AAPL", "MSFT", "JPM"], "startDate": "01-01-12",
                        "endDate": "03-20-16", "initialInvestment": 1000.0}
        saved = [post(base, "/portfolio/optimize", {**seed_request, "objective": objective},
                      token)["data"]["id"]
                 for objective in ("max_sharpe", "min_volatility", "equal_weight") * 2]
        config_path = os.path.join(directory, "schemathesis.toml")
        with open(config_path, "w") as handle:
            handle.write(CONFIG.format(base=base, token=token, logout_token=logout_token,
                                       examples=examples, seed=seed, timeout=REQUEST_TIMEOUT,
                                       result_ids=json.dumps(saved[:3]),
                                       deletable_ids=json.dumps(saved[3:])))
        report = os.path.join(directory, "events.ndjson")
        command = [os.path.join(os.path.dirname(sys.executable), "schemathesis"),
                   "--config-file", config_path, "run", base + "/openapi.json",
                   "--workers", "1", "--report", "ndjson",
                   "--report-ndjson-path", report]
        code = subprocess.call(command, cwd=directory)
        outcomes = operation_outcomes(report) if os.path.exists(report) else {}
        passed = sum(outcomes.values())
        failed = len(outcomes) - passed + (1 if code and passed == len(outcomes) else 0)
        print(f"contract: {passed} passed, {failed} failed")
        return 0 if code == 0 and failed == 0 else 1
    finally:
        stop_process(process)  # the server stops its embedded database itself
        if keep or process.returncode not in (0, None):
            print(f"contract: server files kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.contract", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                        help=f"examples per operation and phase (default {DEFAULT_EXAMPLES})")
    parser.add_argument("--seed", type=int, default=20261201,
                        help="schemathesis seed, for a reproducible run")
    parser.add_argument("--keep", action="store_true", help="keep the server's files")
    args = parser.parse_args(argv)
    return run(args.examples, args.seed, args.keep)


if __name__ == "__main__":
    sys.exit(main())
