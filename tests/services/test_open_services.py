"""``open_services``: the executor, the worker pool, the services, the job runner, their end."""

import asyncio
import os
import shutil
import tempfile
import time
import unittest
import uuid

from indico.db import jobs, open_database
from indico.db.embedded import _pid_alive
from indico.services import open_services
from tests.harness import CPU_EXECUTOR, shared_pool, test_config

# A job whose symbol has no prices: the runner claims it and it fails at once,
# without the engine.
PARAMS = {"symbols": ["GONE", "MSFT"], "start_date": "2012-01-01", "end_date": "2016-03-20",
          "initial_investment": 1000.0, "objective": "max_sharpe", "risk_free_rate": 0.0,
          "weight_bounds": [0.0, 1.0], "target_return": None, "target_volatility": None}


class OpenServicesTest(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self) -> None:
        self.name = f"test_{uuid.uuid4().hex[:20]}"
        data_dir = tempfile.mkdtemp(prefix="indico-services-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        self.config = test_config(database=self.name, data_dir=data_dir, workers=1,
                                  db_timeout=30.0)
        self.database = await self.enterAsyncContext(open_database(self.config))
        self.addAsyncCleanup(self.database.client.drop_database, self.name)

    async def wait_for(self, condition, message: str, timeout: float = 60.0) -> None:
        """Poll ``await condition()`` until it is true, with a generous deadline."""
        deadline = time.monotonic() + timeout
        while not await condition():
            self.assertLess(time.monotonic(), deadline, message)
            await asyncio.sleep(0.05)

    async def test_the_runner_claims_jobs_and_everything_stops_after_the_block(self) -> None:
        db = self.database.db
        async with open_services(self.config, db) as services:
            runner, pool = services.runner, services.jobs.pool
            executor = services.auth.passwords.executor
            self.assertFalse(runner.task.done())
            job = await jobs.create_job(db, "someone", PARAMS, 5)

            async def failed() -> bool:
                stored = await db.jobs.find_one({"_id": job.id})
                return stored["status"] == "failed"
            await self.wait_for(failed, "the runner never claimed the queued job")
            worker = await pool.run(os.getpid, timeout=60)  # a worker process of the pool
            self.assertTrue(_pid_alive(worker))
        self.assertTrue(runner.task.done())
        self.assertTrue(services.events.stopping.is_set())
        # The pool's workers have exited when the block is left, not some time later.
        self.assertTrue(pool.closed)
        self.assertFalse(_pid_alive(worker), "a worker process outlived open_services")
        with self.assertRaisesRegex(RuntimeError, "shut down"):
            await pool.run(os.getpid)
        with self.assertRaisesRegex(RuntimeError, "after shutdown"):
            executor.submit(int)

    async def test_what_the_caller_gives_is_left_to_the_caller(self) -> None:
        pool = shared_pool()
        async with open_services(self.config, self.database.db, cpu_executor=CPU_EXECUTOR,
                                 pool=pool, run_jobs=False) as services:
            self.assertIsNone(services.runner)
            self.assertIs(services.jobs.pool, pool)
        self.assertFalse(pool.closed)
        self.assertEqual(CPU_EXECUTOR.submit(int, "7").result(timeout=60), 7)

    async def test_a_failure_while_opening_stops_what_was_started(self) -> None:
        # The change marks cannot be opened: a directory where their file goes.
        os.makedirs(self.config.marks_path)
        before = set(asyncio.all_tasks())
        with self.assertRaises(IsADirectoryError):
            async with open_services(self.config, self.database.db):
                self.fail("the block ran")
        self.assertEqual(set(asyncio.all_tasks()), before)


if __name__ == "__main__":
    unittest.main()
