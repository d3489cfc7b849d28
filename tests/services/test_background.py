"""The background loops (job runner, job-event poller, expiry purge) while the database is down.

The database is a real client pointed at a port where nothing listens, so
every call fails as it does after ``kill -9`` of the database: a server
selection timeout. Each failure must be one warning line with no traceback,
followed by a longer wait; a bug (any other exception) keeps its traceback.
Sleeps are injected where the loop takes them, so no test waits for real.
"""

import logging
import unittest

from pymongo.errors import ServerSelectionTimeoutError

from indico.db import ExpiryPurge, create_client
from indico.db.embedded import _free_port
from indico.services import build_services
from indico.services.events import JobEvents
from indico.services.jobs import JobRunner, JobService
from tests.harness import CPU_EXECUTOR, Stop, recording_sleep, shared_pool, test_config


class BrokenService(JobService):
    """A job service with a bug in claiming: not a database failure."""

    async def claim_and_run(self):
        raise RuntimeError("a bug")


class FlakyEvents(JobEvents):
    """A job-event poller whose database reads fail or succeed as ``outcomes`` says, in turn."""

    def __init__(self, outcomes, **kwargs):
        super().__init__(None, **kwargs)
        self.outcomes = list(outcomes)

    async def changed_jobs(self, since):
        if self.outcomes.pop(0):
            return []
        raise ServerSelectionTimeoutError("the database is down")


class DatabaseDownTest(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self):
        # Nothing listens there: every operation fails after 0.2 s of server selection.
        self.client = create_client(f"mongodb://127.0.0.1:{_free_port()}/", timeout=0.2)
        self.db = self.client["down"]
        self.config = test_config(database="down")

    async def asyncTearDown(self):
        await self.client.close()

    def jobs(self, service_class=JobService):
        services = build_services(self.config, self.db, CPU_EXECUTOR, shared_pool())
        return service_class(self.db, self.config, services.prices, services.events,
                             shared_pool())

    def assert_one_line_each(self, records, prefix, waits):
        self.assertEqual(len(records), len(waits), [record.getMessage() for record in records])
        for record, wait in zip(records, waits, strict=True):
            message = record.getMessage()
            self.assertEqual(record.levelno, logging.WARNING)
            self.assertIsNone(record.exc_info, message)
            self.assertTrue(
                message.startswith(f"{prefix} (ServerSelectionTimeoutError (timeout): "), message)
            self.assertTrue(message.endswith(f"; next try in {wait:g} s"), message)
            self.assertNotIn("Topology", message)

    async def test_job_runner_logs_one_line_per_failure_and_backs_off(self):
        sleep, waits = recording_sleep(6)
        runner = JobRunner(self.jobs(), interval=1.0, max_backoff=10.0, sleep=sleep)
        with (self.assertLogs("indico.services.jobs", logging.WARNING) as logs,
              self.assertRaises(Stop)):
            await runner.run()
        self.assertEqual(waits, [2.0, 4.0, 8.0, 10.0, 10.0, 10.0])
        self.assert_one_line_each(logs.records, "job runner: claim failed", waits)

    async def test_job_runner_keeps_the_traceback_of_a_bug(self):
        sleep, waits = recording_sleep(2)
        runner = JobRunner(self.jobs(BrokenService), interval=1.0, sleep=sleep)
        with (self.assertLogs("indico.services.jobs", logging.ERROR) as logs,
              self.assertRaises(Stop)):
            await runner.run()
        self.assertEqual(waits, [1.0, 1.0])
        self.assertEqual([record.getMessage() for record in logs.records],
                         ["job runner: claim failed"] * 2)
        self.assertIsInstance(logs.records[0].exc_info[1], RuntimeError)

    async def test_event_poller_logs_one_line_per_failure_and_backs_off(self):
        sleep, waits = recording_sleep(4)
        events = JobEvents(self.db, interval=1.0, sleep=sleep)
        self.addAsyncCleanup(events.stop)
        with (self.assertLogs("indico.services.events", logging.WARNING) as logs,
              self.assertRaises(Stop)):
            events.subscribe("someone", lambda message: None)
            await events.task
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0])
        self.assert_one_line_each(logs.records, "job events: poll failed", waits[1:])

    async def test_event_poller_backs_off_at_most_32_intervals_and_recovers(self):
        # Six failed polls, one that succeeds, then one more failure.
        sleep, waits = recording_sleep(9)
        events = FlakyEvents([False] * 6 + [True, False], interval=1.0, sleep=sleep)
        self.addAsyncCleanup(events.stop)
        with (self.assertLogs("indico.services.events", logging.WARNING) as logs,
              self.assertRaises(Stop)):
            events.subscribe("someone", lambda message: None)
            await events.task
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0, 1.0, 2.0])
        self.assertEqual(len(logs.records), 7)
        self.assertEqual(events.outcomes, [])

    async def test_purge_logs_one_line_per_failure_and_backs_off(self):
        sleep, waits = recording_sleep(6)
        with self.assertLogs("indico.db", logging.WARNING) as logs, self.assertRaises(Stop):
            await ExpiryPurge(self.db, interval=60.0, retry=5.0, sleep=sleep).run()
        self.assertEqual(waits, [5.0, 10.0, 20.0, 40.0, 60.0, 60.0])
        self.assert_one_line_each(logs.records, "purge of expired documents failed", waits)

    async def test_purge_keeps_the_traceback_of_a_bug(self):
        sleep, waits = recording_sleep(2)
        with self.assertLogs("indico.db", logging.ERROR) as logs, self.assertRaises(Stop):
            await ExpiryPurge(None, interval=60.0, sleep=sleep).run()  # not a database handle
        self.assertEqual(waits, [60.0, 60.0])
        self.assertIsNotNone(logs.records[0].exc_info)


class PurgeTest(unittest.IsolatedAsyncioTestCase):

    async def test_purge_waits_the_interval_after_a_successful_round(self):
        config = test_config()
        client = create_client(config.mongodb_uri, timeout=5)
        self.addAsyncCleanup(client.close)
        sleep, waits = recording_sleep(2)
        with self.assertRaises(Stop):
            await ExpiryPurge(client["purge_test_empty"], interval=60.0, sleep=sleep).run()
        self.assertEqual(waits, [60.0, 60.0])


if __name__ == "__main__":
    unittest.main()
