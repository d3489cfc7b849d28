"""The job service's own machinery: lease renewal, stopping the runner.

The HTTP path of a job (create, run, wait, finish, 202 and 422) is tested in
tests/routes/test_portfolio.py; here are the parts no request reaches.
"""

import asyncio
import logging
import unittest
import uuid

from indico.db import create_client
from indico.db.embedded import _free_port
from indico.services import build_services
from indico.services.jobs import JobRunner, JobService
from tests.harness import (
    CPU_EXECUTOR,
    Stop,
    database_uri,
    recording_sleep,
    shared_pool,
    test_config,
)


def job_service(db, config, **options):
    services = build_services(config, db, CPU_EXECUTOR, shared_pool())
    return JobService(db, config, services.prices, services.events, shared_pool(), **options)


class LeaseWhileTheDatabaseIsDownTest(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self):
        # Nothing listens there: every operation fails after 0.2 s of server selection.
        self.client = create_client(f"mongodb://127.0.0.1:{_free_port()}/", timeout=0.2)
        self.db = self.client["down"]

    async def asyncTearDown(self):
        await self.client.close()

    async def test_a_failed_renewal_is_one_line_and_renewal_goes_on(self):
        sleep, waits = recording_sleep(4)
        service = job_service(self.db, test_config(database="down", job_lease=30.0),
                              sleep=sleep)
        with (self.assertLogs("indico.services.jobs", logging.WARNING) as logs,
              self.assertRaises(Stop)):
            await service.keep_lease("a-job", asyncio.Event())
        # Every third of the lease, then at most a second apart until it works again.
        self.assertEqual(waits, [10.0, 1.0, 1.0, 1.0])
        self.assertEqual(len(logs.records), 3)
        for record in logs.records:
            message = record.getMessage()
            self.assertIsNone(record.exc_info, message)
            self.assertTrue(message.startswith(
                "job a-job: lease renewal failed (ServerSelectionTimeoutError (timeout): "),
                message)
            self.assertTrue(message.endswith("; next try in 1 s"), message)


class LeaseTest(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self):
        self.client = create_client(database_uri(), timeout=5)
        self.db = self.client[f"test_{uuid.uuid4().hex[:20]}"]
        self.config = test_config(database=self.db.name)

    async def asyncTearDown(self):
        await self.client.drop_database(self.db.name)
        await self.client.close()

    async def test_renewal_ends_when_the_job_is_not_ours_or_has_ended(self):
        sleep, waits = recording_sleep(10)
        service = job_service(self.db, self.config, sleep=sleep)
        await service.keep_lease("no-such-job", asyncio.Event())  # nothing to renew: returns
        self.assertEqual(len(waits), 1)
        ended = asyncio.Event()
        ended.set()
        await service.keep_lease("no-such-job", ended)
        self.assertEqual(len(waits), 1)


class SwallowingService(JobService):
    """Claims nothing, swallowing one cancellation as Python 3.11's wait_for can."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.claiming = asyncio.Event()

    async def claim_and_run(self):
        self.claiming.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # as asyncio.wait_for does when the operation ends in the same step
        return False


class RunnerStopTest(unittest.IsolatedAsyncioTestCase):

    async def test_stop_returns_although_a_cancellation_was_swallowed(self):
        config = test_config()
        services = build_services(config, None, CPU_EXECUTOR, shared_pool())
        service = SwallowingService(None, config, services.prices, services.events,
                                    shared_pool())
        runner = JobRunner(service, interval=3600.0)
        runner.start()
        await service.claiming.wait()
        # With one cancel() the loop went on to a 3600 s sleep and stop never returned.
        await asyncio.wait_for(runner.stop(), 60)
        self.assertTrue(runner.task.done())


if __name__ == "__main__":
    unittest.main()
