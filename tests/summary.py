"""A nose2 plugin that ends the run with the line ``N passed, N failed``.

The line is also written to ``.test-summary`` so that ``make test`` can print
it last, after the coverage report.
"""

from nose2 import result
from nose2.events import Plugin


class Summary(Plugin):
    """Count outcomes and print the closing line."""

    configSection = "summary"
    alwaysOn = True

    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def testOutcome(self, event):
        if event.outcome == result.SUBTEST:
            # A passing subtest is part of its test's pass; a failing one is a failure.
            self.failed += event.exc_info is not None
        elif event.outcome == result.SKIP:
            self.skipped += 1
        elif event.outcome == result.PASS and event.expected:
            self.passed += 1
        else:
            self.failed += 1

    def afterSummaryReport(self, event):
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        event.stream.writeln(line)
        with open(".test-summary", "w") as handle:
            handle.write(line + "\n")
