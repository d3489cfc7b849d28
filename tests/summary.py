"""A nose2 plugin that ends the run with the line ``N passed, N failed[, N skipped]``.

Before that line it lists why tests were skipped (one line per reason, with
how many tests and which), so that a run against ``INDICO_MONGODB_URI`` says
what it did not test. The closing line is also written to ``.test-summary``
so that ``make test`` (``tests/run_suite.py``) can add up its runs and print
the total last, after the coverage report; there (``SUITE_STEP`` set) the
run's own line is printed with the step's name before it.
"""

import collections
import os

from nose2 import result
from nose2.events import Plugin

SUMMARY_FILE = ".test-summary"


class Summary(Plugin):
    """Count outcomes, list skip reasons and print the closing line."""

    configSection = "summary"
    alwaysOn = True

    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.skip_reasons = collections.defaultdict(list)

    def testOutcome(self, event):
        if event.outcome == result.SUBTEST:
            # A passing subtest is part of its test's pass; a failing one is a failure.
            self.failed += event.exc_info is not None
        elif event.outcome == result.SKIP:
            self.skipped += 1
            self.skip_reasons[str(event.reason or "no reason given")].append(event.test.id())
        elif event.outcome == result.PASS and event.expected:
            self.passed += 1
        else:
            self.failed += 1

    def afterSummaryReport(self, event):
        for reason, tests in sorted(self.skip_reasons.items()):
            names = ", ".join(test.rsplit(".", 1)[-1] for test in tests[:3])
            more = f", and {len(tests) - 3} more" if len(tests) > 3 else ""
            event.stream.writeln(f"skipped {len(tests)}: {reason} ({names}{more})")
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        step = os.environ.get("SUITE_STEP")
        # Within make test, a run's line is not the closing one: run_suite prints the total.
        event.stream.writeln(f"[{step}] {line}" if step else line)
        with open(SUMMARY_FILE, "w") as handle:
            handle.write(line + "\n")
