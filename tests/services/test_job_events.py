"""The job-event poller and clock skew: events stamped by a machine whose clock is behind.

Another machine's job is a document written straight into the real test
database, with ``updated`` and the events' ``at`` stamped by a clock that is
behind this one, as that machine's ``time.time()`` would stamp them.
"""

import asyncio
import time
import unittest
import uuid

from indico.db import create_client
from indico.services.portfolio import EVENT_CLOCK_SKEW, JobEvents
from tests.harness import database_uri


class ClockSkewTest(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self):
        self.client = create_client(database_uri(), timeout=5)
        self.db = self.client[f"test_{uuid.uuid4().hex[:20]}"]

    async def asyncTearDown(self):
        await self.client.drop_database(self.db.name)
        await self.client.close()

    async def write_remote_job(self, owner, behind):
        """Insert a finished job as a machine whose clock is ``behind`` seconds late would."""
        stamp = time.time() - behind
        job = {"_id": uuid.uuid4().hex[:24], "owner": owner, "status": "failed",
               "error": f"{behind} s behind", "updated": stamp,
               "events": [{"id": uuid.uuid4().hex, "event": "failed", "at": stamp}]}
        await self.db.jobs.insert_one(job)
        return job["_id"]

    async def test_events_of_a_machine_whose_clock_is_behind_are_delivered(self):
        events = JobEvents(self.db, interval=0.01)
        received = []
        events.subscribe("remote-owner", received.append)
        self.addAsyncCleanup(events.stop)
        await asyncio.sleep(0.05)  # a few polls: the next ones look back from later
        # Beyond the tolerance first, so the poll that finds the second one saw both.
        lost = await self.write_remote_job("remote-owner", behind=EVENT_CLOCK_SKEW + 20)
        kept = await self.write_remote_job("remote-owner", behind=EVENT_CLOCK_SKEW / 2)
        for _ in range(500):  # up to 5 s
            if received:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # more polls: nothing more, and nothing twice
        self.assertEqual([(message["id"], message["event"], message["error"])
                          for message in received],
                         [(kept, "failed", f"{EVENT_CLOCK_SKEW / 2} s behind")])
        self.assertNotIn(lost, [message["id"] for message in received])

    def test_the_tolerance_stays_below_the_memory_of_sent_events(self):
        # Sent ids are remembered 60 s; a window reaching further would resend events.
        self.assertLess(EVENT_CLOCK_SKEW + JobEvents(None).interval, 60)


if __name__ == "__main__":
    unittest.main()
