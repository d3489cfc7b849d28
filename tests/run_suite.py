"""``make test``: every step of the test run, and one closing line for all of them.

The steps, in order (:data:`STEPS`; adding one is one line):

1. the whole suite under coverage (branches, the floor in setup.cfg) against
   the embedded database the harness starts;
2. the whole suite again with ``INDICO_MONGODB_URI`` set to a standalone
   nx-27017 started here, separately, on a free port in a temporary
   directory, so that the URI path (a database indico did not start) is
   exercised on every change;
3. contract fuzzing: schemathesis against a real server (``tests/contract.py``);
4. the browser tests of the page at ``/app/`` (``tests/browser/flow.py``): a real
   headless Chromium, Debian's, installed here with apt when it is missing
   (:func:`tests.browser.chromium.ensure_chromium`); they are skipped, with the
   reason printed, only when it cannot be installed.

Every step runs even when an earlier one failed. The output ends with one line
``N passed, N failed[, N skipped]`` that adds up the steps (a step that failed
without a failing test, coverage under the floor say, counts as one failure),
and the exit status is 0 only when every step passed.

Run as ``python -m tests.run_suite`` from the repository (the Makefile does).
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from tests.processes import stop_process
from tests.summary import SUMMARY_FILE

NOSE2 = ["-m", "nose2", "-c", "setup.cfg", "--start-dir", "tests", "--top-level-directory", "."]
SUMMARY = re.compile(r"^(?:[\w-]+: )?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")
# How long the separately started database may take to answer.
DATABASE_START = 60.0


@dataclasses.dataclass
class Outcome:
    """What one step counted, and whether it passed as a whole."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    ok: bool = True
    note: str = ""

    def line(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed"
        return text + (f", {self.skipped} skipped" if self.skipped else "")


def run(argv: list[str], env: dict | None = None) -> int:
    """Run ``argv`` (output straight through); return its exit status."""
    return subprocess.call(argv, env={**os.environ, **(env or {})})


def nose2_outcome(status: int) -> Outcome:
    """The counts a nose2 run left in SUMMARY_FILE, and its exit status."""
    try:
        with open(SUMMARY_FILE) as handle:
            match = SUMMARY.match(handle.read().strip())
    except OSError:
        match = None
    if not match:
        return Outcome(ok=False, note="the run ended without its summary")
    passed, failed, skipped = (int(group or 0) for group in match.groups())
    return Outcome(passed, failed, skipped, ok=status == 0 and failed == 0)


def command_step(argv: list[str], env: dict | None = None) -> Outcome:
    """A step that is one command ending with a line ``[word:] N passed, N failed[, N skipped]``.

    Its output goes straight through; the last such line gives the counts
    (none: one failure when the command failed, one pass when it did not).
    """
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    match = None
    for line in process.stdout:
        sys.stdout.write(line)
        match = SUMMARY.match(line.strip()) or match
    status = process.wait()
    if match is None:
        return Outcome(passed=int(status == 0), ok=status == 0,
                       note="" if status == 0 else f"exit status {status}")
    passed, failed, skipped = (int(group or 0) for group in match.groups())
    return Outcome(passed, failed, skipped, ok=status == 0 and failed == 0)


def suite_with_coverage() -> Outcome:
    """The suite under coverage against the embedded database, then the coverage report."""
    for name in os.listdir("."):
        if name == SUMMARY_FILE or name == ".coverage" or name.startswith(".coverage."):
            os.remove(name)
    outcome = nose2_outcome(run([sys.executable, "-m", "coverage", "run", *NOSE2],
                                {"SUITE_STEP": "embedded database"}))
    run([sys.executable, "-m", "coverage", "combine", "-q"])
    if run([sys.executable, "-m", "coverage", "report"]) != 0:
        outcome.ok, outcome.note = False, "coverage is under the floor (setup.cfg)"
    return outcome


def start_database(directory: str) -> tuple[subprocess.Popen, str]:
    """Start nx-27017 on a free port with its files in ``directory``; return it and its URI.

    Raises:
        RuntimeError: it exited or did not answer within DATABASE_START seconds.
    """
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    from indico.db.embedded import _free_port

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "indico.db.embedded", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", directory, "--log-file", os.path.join(directory, "nx-27017.log"),
         "--pid-file", os.path.join(directory, "nx-27017.pid")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    uri = f"mongodb://127.0.0.1:{port}/"
    deadline = time.monotonic() + DATABASE_START
    while True:
        client = MongoClient(uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500)
        try:
            client.admin.command("ping")
            return process, uri
        except PyMongoError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError(f"the database for the second run did not start "
                                   f"(see {directory}/nx-27017.log)") from None
            time.sleep(0.1)
        finally:
            client.close()


def suite_on_a_separate_database() -> Outcome:
    """The suite with INDICO_MONGODB_URI set to a standalone nx-27017 started here."""
    directory = tempfile.mkdtemp(prefix="indico-suite-db-")
    try:
        try:
            process, uri = start_database(directory)
        except RuntimeError as exc:
            return Outcome(ok=False, note=str(exc))
        print(f"second run: INDICO_MONGODB_URI={uri} (nx-27017, pid {process.pid})",
              flush=True)
        try:
            if os.path.exists(SUMMARY_FILE):
                os.remove(SUMMARY_FILE)
            return nose2_outcome(run([sys.executable, *NOSE2],
                                     {"INDICO_MONGODB_URI": uri,
                                      "SUITE_STEP": "INDICO_MONGODB_URI"}))
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def browser_tests() -> Outcome:
    """The page's browser tests, after installing Chromium if it is missing."""
    from tests.browser.chromium import ensure_chromium

    reason = ensure_chromium()
    if reason:
        print(f"browser tests: {reason}; they are skipped", flush=True)
    if os.path.exists(SUMMARY_FILE):
        os.remove(SUMMARY_FILE)
    return nose2_outcome(run([sys.executable, *NOSE2, "tests.browser.flow"],
                             {"SUITE_STEP": "browser"}))


# (name, step): each step returns its Outcome. A command that ends with a
# summary line is one more entry, e.g.
# ("contract fuzzing", lambda: command_step([sys.executable, "-m", "tests.contract"])).
STEPS: list[tuple[str, Callable[[], Outcome]]] = [
    ("the suite on the embedded database, with coverage", suite_with_coverage),
    ("the suite on a separately started database (INDICO_MONGODB_URI)",
     suite_on_a_separate_database),
    ("contract fuzzing (schemathesis, every check, every operation)",
     lambda: command_step([sys.executable, "-m", "tests.contract"])),
    ("the page at /app/ in headless Chromium (tests/browser)", browser_tests),
]


def main() -> int:
    """Run every step; print each one's counts, then the total. Returns the exit status."""
    outcomes = []
    for name, step in STEPS:
        print(f"== {name}", flush=True)
        outcomes.append((name, step()))
    total = Outcome()
    print("== results")
    for name, outcome in outcomes:
        if not outcome.ok and outcome.failed == 0:
            outcome.failed = 1  # the step failed without a failing test
        state = "ok" if outcome.ok else "FAILED"
        note = f" ({outcome.note})" if outcome.note else ""
        print(f"{state} - {name} - {outcome.line()}{note}")
        total.passed += outcome.passed
        total.failed += outcome.failed
        total.skipped += outcome.skipped
        total.ok = total.ok and outcome.ok
    # The closing line, last, alone: CI reads it.
    print(total.line(), flush=True)
    with open(SUMMARY_FILE, "w") as handle:
        handle.write(total.line() + "\n")
    return 0 if total.ok else 1


if __name__ == "__main__":
    sys.exit(main())
