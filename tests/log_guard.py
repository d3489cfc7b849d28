"""A nose2 plugin that fails a test during which something was logged at ERROR or above.

tornado's own suite fails on unexpected log lines (``--fail-if-logs``); here
the check is per test, so the failure names the test and shows the records.
A test that expects an ERROR says so with ``assertLogs`` (which takes the
records of its logger away from the root logger, where this guard listens).
A record logged between two tests (an asyncio task garbage-collected late,
say) fails the next test, and says so; one logged after the last test (a
module's teardown, say) is printed before the closing line and fails the run:
its exit status is 1 although every test passed.
"""

import logging
import threading

from nose2.events import Plugin


class Recorder(logging.Handler):
    """Keeps the records at ERROR or above that reach the root logger, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[logging.LogRecord, bool]] = []
        self.in_test = False
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.records.append((record, self.in_test))

    def take(self) -> list[tuple[logging.LogRecord, bool]]:
        """The records kept since the last call, each with whether a test was running."""
        with self.guard:
            records, self.records = self.records, []
        return records


def describe(records: list[tuple[logging.LogRecord, bool]]) -> str:
    """The records as the failure message shows them, tracebacks included."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    lines = []
    for record, in_test in records:
        where = "" if in_test else " (logged between tests, before this one started)"
        lines.append(formatter.format(record) + where)
    return "\n".join(lines)


class LogGuard(Plugin):
    """Fail the test that logged an unexpected ERROR record."""

    configSection = "log-guard"
    alwaysOn = True

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.late: list[tuple[logging.LogRecord, bool]] = []
        logging.getLogger().addHandler(self.recorder)

    def startTest(self, event) -> None:
        self.recorder.in_test = True
        add_cleanup = getattr(event.test, "addCleanup", None)
        if add_cleanup is not None:
            # Registered first, so it runs last: after tearDown and every other cleanup.
            add_cleanup(self.check, event.test)

    def stopTest(self, event) -> None:
        self.recorder.in_test = False

    def check(self, test) -> None:
        """Raise the test's failure when ERROR records were logged since the last check."""
        records = self.recorder.take()
        if records:
            raise test.failureException(
                f"{len(records)} unexpected log record(s) at ERROR or above (expect them "
                f"with assertLogs):\n{describe(records)}")

    def stopTestRun(self, event) -> None:
        # Before afterTestRun, where the reporter writes the reports and asks
        # wasSuccessful (once: nose2 keeps the answer).
        self.late = self.recorder.take()

    def wasSuccessful(self, event) -> None:
        if self.late:
            event.success = False

    def afterSummaryReport(self, event) -> None:
        if self.late:
            event.stream.writeln("logged at ERROR after the last test (the run fails):\n"
                                 + describe(self.late))
        records = self.recorder.take()
        if records:  # during the reports: too late to fail the run, but shown
            event.stream.writeln("logged at ERROR while the run was reported:\n"
                                 + describe(records))
