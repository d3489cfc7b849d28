"""The job-event hub: each event of a stored job sent once, bounded memory, clock skew, stop.

Another machine's job is a document written straight into the real test
database, with ``updated`` and the events' ``at`` stamped by a clock that is
behind this one, as that machine's ``time.time()`` would stamp them. The
poller's clock and sleep are injected: the test lets it poll one round at a
time (:class:`SteppedSleep`), and time passes only when a round's wait ends.
"""

import asyncio
import dataclasses
import datetime
import unittest
import uuid

from indico.db import create_client
from indico.db.records import Job, JobEvent
from indico.services.events import EVENT_CLOCK_SKEW, SENT_LIMIT, SENT_MEMORY, JobEvents
from tests.harness import database_uri, recording_sleep

# Seconds a test waits at most for the poller to reach a point it is driven
# to: a guard against a hang, never a measurement.
HANG_GUARD = 60


class Clock:
    """An injectable clock (epoch seconds) that moves only when told."""

    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


class SteppedSleep:
    """An injectable sleep that waits until the test lets the poller run another round.

    Each wait is recorded in :attr:`waits` and moves ``clock`` on by its
    length when it ends, as a real sleep would.
    """

    def __init__(self, clock):
        self.clock = clock
        self.waits = []
        self.parked = asyncio.Queue()  # a future per sleep in progress: set it to wake up

    async def __call__(self, seconds):
        self.waits.append(seconds)
        wake = asyncio.get_running_loop().create_future()
        self.parked.put_nowait(wake)
        await wake
        self.clock.now += seconds

    async def run_polls(self, rounds):
        """Let the poller poll ``rounds`` times; returns once it sleeps before the next one."""
        wake = await asyncio.wait_for(self.parked.get(), HANG_GUARD)
        for _ in range(rounds):
            wake.set_result(None)
            wake = await asyncio.wait_for(self.parked.get(), HANG_GUARD)
        self.parked.put_nowait(wake)  # still asleep: the next call wakes it


CREATED = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)


def stored_job(owner, clock, *names, job_id=None):
    """A stored job's record, with one event per name stamped at ``clock()``."""
    events = [{"id": uuid.uuid4().hex, "event": name, "at": clock()} for name in names]
    return Job.from_document({
        "_id": job_id or uuid.uuid4().hex[:24], "owner": owner, "events": events,
        "status": names[-1], "params": {}, "created": CREATED, "updated": clock(),
        "result": {"objective": "max_sharpe", "allocations": {"AAPL": 1.0}, "stats": {}}})


class MessageTest(unittest.TestCase):

    def test_a_backtests_progress_and_done_messages(self):
        clock = Clock()
        entries = [{"id": "e1", "event": "running", "at": clock()},
                   {"id": "e2", "event": "progress", "at": clock(), "done": 3, "total": 8},
                   {"id": "e3", "event": "done", "at": clock()}]
        job = Job.from_document({
            "_id": "j2", "owner": "ada", "kind": "backtest", "events": entries,
            "status": "done", "params": {"objective": "min_volatility"}, "created": CREATED,
            "updated": clock(), "result": {
                "rebalances": [{"weights": {"AAPL": 1.0}}, {"weights": {"AAPL": 0.25}}],
                "stats": {"strategy": {"cagr": 0.1}}}})
        events = JobEvents(None, clock=clock)
        events.stopping.set()  # no poller: nothing to poll here
        received = []
        events.subscribe("ada", received.append)
        events.publish(job)
        self.assertEqual(received, [
            {"event": "running", "id": "j2", "kind": "backtest", "at": clock()},
            {"event": "progress", "id": "j2", "kind": "backtest", "at": clock(), "done": 3,
             "total": 8},
            # The allocations are the last rebalance's weights.
            {"event": "done", "id": "j2", "kind": "backtest", "at": clock(), "summary": {
                "objective": "min_volatility", "allocations": {"AAPL": 0.25},
                "stats": {"strategy": {"cagr": 0.1}}}},
        ])


class SentMemoryTest(unittest.TestCase):

    def test_memory_stays_bounded_when_nobody_listens(self):
        clock = Clock()
        events = JobEvents(None, clock=clock)
        for _ in range(10_000):  # one job a second, 3 events each
            events.publish(stored_job("nobody", clock, "queued", "running", "done"))
            clock.now += 1.0
        # Only the last SENT_MEMORY seconds' ids are kept (it was 30,000, forever).
        self.assertLessEqual(len(events.sent), 3 * (SENT_MEMORY + 1))

    def test_memory_is_capped_whatever_the_rate(self):
        clock = Clock()
        events = JobEvents(None, clock=clock)
        for _ in range(SENT_LIMIT // 3 + 1000):  # all at one moment
            events.publish(stored_job("nobody", clock, "queued", "running", "done"))
        self.assertEqual(len(events.sent), SENT_LIMIT)


class SwallowingEvents(JobEvents):
    """A poller whose database read swallows a cancellation, as 3.11's wait_for can."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading = asyncio.Event()

    async def changed_jobs(self, since):
        self.reading.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # lost, as 3.11's wait_for can lose one
        # Still reading: only another cancellation ends it (stopping is not looked at
        # here), so a stop that cancels once would wait forever.
        await asyncio.sleep(3600)
        return []


class ClockSkewTest(unittest.IsolatedAsyncioTestCase):

    async def asyncSetUp(self):
        self.client = create_client(database_uri(), timeout=5)
        self.db = self.client[f"test_{uuid.uuid4().hex[:20]}"]
        # A cleanup, not asyncTearDown: cleanups run last-in first-out after
        # it, so the tests' pollers (cleanups registered later) stop first.
        self.addAsyncCleanup(self.drop)

    async def drop(self):
        await self.client.drop_database(self.db.name)
        await self.client.close()

    async def write_remote_job(self, owner, clock, behind):
        """Insert a finished job as a machine whose clock is ``behind`` ``clock`` would."""
        stamp = clock() - behind
        job = {"_id": uuid.uuid4().hex[:24], "owner": owner, "status": "failed",
               "error": f"{behind} s behind", "updated": stamp, "params": {},
               "created": CREATED,
               "events": [{"id": uuid.uuid4().hex, "event": "failed", "at": stamp}]}
        await self.db.jobs.insert_one(job)
        return job["_id"]

    async def test_events_of_a_machine_whose_clock_is_behind_are_delivered(self):
        clock = Clock()
        sleep = SteppedSleep(clock)
        events = JobEvents(self.db, interval=1.0, clock=clock, sleep=sleep)
        received = []
        events.subscribe("remote-owner", received.append)
        self.addAsyncCleanup(events.stop)
        await sleep.run_polls(3)  # the next poll looks back from the last one's moment
        # Both written before the next poll, so the poll that finds the second saw both.
        lost = await self.write_remote_job("remote-owner", clock, behind=EVENT_CLOCK_SKEW + 20)
        kept = await self.write_remote_job("remote-owner", clock, behind=EVENT_CLOCK_SKEW / 2)
        await sleep.run_polls(1)
        self.assertEqual(len(received), 1)
        await sleep.run_polls(3)  # more polls: nothing more, and nothing twice
        self.assertEqual(sleep.waits, [1.0] * 8)
        self.assertEqual([(message["id"], message["event"], message["error"])
                          for message in received],
                         [(kept, "failed", f"{EVENT_CLOCK_SKEW / 2} s behind")])
        self.assertNotIn(lost, [message["id"] for message in received])

    def test_the_tolerance_stays_below_the_memory_of_sent_events(self):
        # A poll window reaching further back than the memory would resend events.
        self.assertLess(EVENT_CLOCK_SKEW + JobEvents(None).interval, SENT_MEMORY)

    async def test_each_event_of_the_stored_job_is_sent_once(self):
        clock = Clock()
        # The poller stays asleep: only these publish calls send.
        events = JobEvents(self.db, interval=1.0, clock=clock, sleep=SteppedSleep(clock))
        received = []
        events.subscribe("ada", received.append)
        self.addAsyncCleanup(events.stop)
        created = stored_job("ada", clock, "queued", "running", job_id="j1")
        events.publish(created)
        clock.now += 1.0
        done = JobEvent("e3", "done", datetime.datetime.fromtimestamp(clock(), datetime.UTC))
        finished = dataclasses.replace(created, status="done", events=created.events + (done,))
        events.publish(finished)
        events.publish(finished)  # again, as the poller would: nothing new
        events.publish(stored_job("bob", clock, "queued"))  # not Ada's
        self.assertEqual(received, [
            {"event": "queued", "id": "j1", "kind": "optimize", "at": clock() - 1.0},
            {"event": "running", "id": "j1", "kind": "optimize", "at": clock() - 1.0},
            {"event": "done", "id": "j1", "kind": "optimize", "at": clock(), "summary": {
                "objective": "max_sharpe", "allocations": {"AAPL": 1.0}, "stats": {}}},
        ])
        # Events older than the memory of sent ids are never sent: they were, or
        # they happened before anyone listened.
        old = stored_job("ada", clock, "failed")
        clock.now += SENT_MEMORY + 1
        events.publish(old)
        self.assertEqual(len(received), 3)

    async def test_stop_returns_although_a_cancellation_was_swallowed(self):
        sleep, _ = recording_sleep(1000)  # no wait before the read
        events = SwallowingEvents(self.db, interval=1.0, sleep=sleep)
        events.subscribe("someone", lambda message: None)
        await asyncio.wait_for(events.reading.wait(), HANG_GUARD)  # in its database read
        await asyncio.wait_for(events.stop(), 60)
        self.assertTrue(events.task.done())
        self.assertEqual(events.subscribers, {})


if __name__ == "__main__":
    unittest.main()
