"""tests/log_guard.py: a test that logs an unexpected ERROR record fails, with the record."""

import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

from tests.harness import REPO

SAMPLE = textwrap.dedent('''
    import logging
    import unittest

    log = logging.getLogger("sample")


    class Sample(unittest.TestCase):

        def test_logs_an_unexpected_error(self):
            log.error("the disk is on fire")

        def test_expects_its_error(self):
            with self.assertLogs("sample", "ERROR"):
                log.error("expected")

        def test_warns_only(self):
            log.warning("a warning is not a failure")

        def test_logs_in_a_cleanup(self):
            self.addCleanup(log.critical, "late and bad")
''')


AFTER_THE_LAST_TEST = textwrap.dedent('''
    import logging
    import unittest


    def tearDownModule():
        logging.getLogger("sample").error("a task died after the tests")


    class Sample(unittest.TestCase):

        def test_passes(self):
            pass
''')


def run_sample(source):
    """Run nose2 with the project's plugins on a module of ``source``; its CompletedProcess."""
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "test_sample.py"), "w") as handle:
            handle.write(source)
        return subprocess.run(
            [sys.executable, "-m", "nose2", "-c", os.path.join(REPO, "setup.cfg"),
             "--start-dir", directory, "--top-level-directory", directory],
            cwd=directory, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": REPO, "SUITE_STEP": ""})


class LogGuardTest(unittest.TestCase):

    def test_only_the_tests_with_unexpected_errors_fail(self):
        run = run_sample(SAMPLE)
        output = run.stderr + run.stdout
        self.assertNotEqual(run.returncode, 0, output)
        self.assertIn("2 passed, 2 failed", output)
        self.assertIn("FAIL: test_logs_an_unexpected_error", output)
        self.assertIn("FAIL: test_logs_in_a_cleanup", output)
        self.assertIn("unexpected log record(s) at ERROR or above", output)
        self.assertIn("ERROR sample: the disk is on fire", output)
        self.assertIn("CRITICAL sample: late and bad", output)

    def test_a_record_after_the_last_test_fails_the_run(self):
        run = run_sample(AFTER_THE_LAST_TEST)
        output = run.stderr + run.stdout
        self.assertEqual(run.returncode, 1, output)
        self.assertIn("1 passed, 0 failed", output)
        self.assertIn("logged at ERROR after the last test (the run fails)", output)
        self.assertIn("ERROR sample: a task died after the tests", output)
