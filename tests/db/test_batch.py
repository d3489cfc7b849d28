"""db.batch: concurrent calls share commands; each item is answered by a later command.

No test waits on the clock: a command is held by an event until the test
releases it, and a test waits for a command to be out by stepping the loop.
"""

import asyncio
import unittest

from pymongo.errors import NetworkTimeout

from indico.db.batch import Batcher


class Recorder:
    """A ``run`` that records the batches it gets and answers each item doubled.

    Args:
        held: hold every command until :attr:`release` is set (a slow database);
            otherwise answer at once.
    """

    def __init__(self, held=False):
        self.batches = []
        self.release = asyncio.Event()
        if not held:
            self.release.set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, items):
        self.batches.append(list(items))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
        finally:
            self.in_flight -= 1
        return [item * 2 for item in items]


async def until(condition, steps=1000):
    """Step the event loop until ``condition()`` holds (steps, not time)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"still not true after {steps} loop steps")


class BatcherTest(unittest.IsolatedAsyncioTestCase):

    async def test_concurrent_calls_share_one_command_and_keep_their_order(self):
        run = Recorder()
        batcher = Batcher(run)
        results = await asyncio.gather(*(batcher.submit(number) for number in range(10)))
        self.assertEqual(results, [number * 2 for number in range(10)])
        self.assertEqual(run.batches, [list(range(10))])

    async def test_a_lone_call_waits_for_nothing_else(self):
        run = Recorder()
        batcher = Batcher(run)
        self.assertEqual(await batcher.submit(21), 42)
        self.assertEqual(await batcher.submit(5), 10)
        self.assertEqual(run.batches, [[21], [5]])

    async def test_an_item_submitted_during_a_command_goes_in_a_later_one(self):
        run = Recorder(held=True)
        batcher = Batcher(run, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit(1))
        await until(lambda: run.in_flight)  # the first command is out now
        self.assertEqual(run.batches, [[1]])
        late = [asyncio.ensure_future(batcher.submit(number)) for number in (2, 3)]
        await asyncio.sleep(0)
        run.release.set()
        self.assertEqual(await first, 2)
        self.assertEqual(await asyncio.gather(*late), [4, 6])
        self.assertEqual(run.batches, [[1], [2, 3]])

    async def test_size_and_commands_in_flight_are_bounded(self):
        run = Recorder(held=True)
        batcher = Batcher(run, max_size=3, max_in_flight=2)
        callers = asyncio.gather(*(batcher.submit(number) for number in range(10)))
        await until(lambda: run.in_flight == 2)
        for _ in range(10):  # a third command would be out by now
            await asyncio.sleep(0)
        self.assertEqual((run.in_flight, len(run.batches)), (2, 2))
        run.release.set()
        results = await callers
        self.assertEqual(results, [number * 2 for number in range(10)])
        self.assertEqual(sorted(item for batch in run.batches for item in batch), list(range(10)))
        self.assertLessEqual(max(len(batch) for batch in run.batches), 3)
        self.assertEqual(run.most_in_flight, 2)
        self.assertEqual(batcher.senders, set())

    async def test_an_error_for_one_item_reaches_only_its_caller(self):
        async def run(items):
            return [ValueError(f"bad {item}") if item == 2 else item for item in items]
        batcher = Batcher(run)
        results = await asyncio.gather(*(batcher.submit(number) for number in range(4)),
                                       return_exceptions=True)
        self.assertEqual([results[0], results[1], results[3]], [0, 1, 3])
        self.assertIsInstance(results[2], ValueError)
        self.assertEqual(str(results[2]), "bad 2")

    async def test_a_failed_command_fails_each_of_its_items_and_the_next_command_runs(self):
        calls = []

        async def run(items):
            calls.append(list(items))
            if len(calls) == 1:
                raise ConnectionError("database down")
            return items
        batcher = Batcher(run)
        results = await asyncio.gather(batcher.submit("a"), batcher.submit("b"),
                                       return_exceptions=True)
        self.assertEqual([type(result) for result in results], [ConnectionError] * 2)
        self.assertEqual(str(results[0]), "database down")
        self.assertIsNot(results[0], results[1])  # each caller its own traceback
        self.assertEqual(await batcher.submit("c"), "c")

    async def test_a_run_that_answers_the_wrong_number_of_items_fails_them(self):
        async def run(items):
            return items[:-1]
        batcher = Batcher(run)
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2),
                                       return_exceptions=True)
        for result in results:
            self.assertIsInstance(result, RuntimeError)
            self.assertIn("gave 1 results for 2 items", str(result))

    async def test_a_cancelled_caller_does_not_disturb_the_others(self):
        run = Recorder(held=True)
        batcher = Batcher(run)
        doomed = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await until(lambda: run.in_flight)
        doomed.cancel()
        await asyncio.sleep(0)
        run.release.set()
        self.assertEqual(await kept, 4)
        with self.assertRaises(asyncio.CancelledError):
            await doomed
        self.assertEqual(run.batches, [[1, 2]])

    async def test_an_item_whose_caller_left_before_the_command_is_not_sent(self):
        run = Recorder(held=True)
        batcher = Batcher(run, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit(1))
        await until(lambda: run.in_flight)  # the first command is out
        gone = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        run.release.set()
        self.assertEqual((await first, await kept), (2, 6))
        self.assertEqual(run.batches, [[1], [3]])

    async def test_a_sender_cancelled_mid_command_cancels_its_callers(self):
        run = Recorder(held=True)
        batcher = Batcher(run)
        callers = [asyncio.ensure_future(batcher.submit(number)) for number in (1, 2)]
        await until(lambda: run.in_flight)
        [sender] = batcher.senders
        sender.cancel()
        results = await asyncio.gather(*callers, return_exceptions=True)
        self.assertEqual([type(result) for result in results], [asyncio.CancelledError] * 2)
        await asyncio.sleep(0)
        self.assertEqual(batcher.senders, set())

    async def test_an_item_submitted_as_every_sender_ends_is_still_sent(self):
        # Both senders end in the same IOLoop step; the caller they woke first
        # submits again before their done callbacks have run. The senders
        # still counted then, so no sender was started and the item waited
        # until some later call came (forever, when none did: the last request
        # of a load, a draining backend's last one).
        gate = asyncio.get_running_loop().create_future()

        async def run(items):
            await gate
            return [item * 2 for item in items]

        batcher = Batcher(run, max_size=1)

        async def twice():
            first = await batcher.submit(1)
            return first, await batcher.submit(3)

        caller = asyncio.ensure_future(twice())
        other = asyncio.ensure_future(batcher.submit(2))
        for _ in range(3):
            await asyncio.sleep(0)
        self.assertEqual(len(batcher.senders), 2)  # one command each, both waiting
        gate.set_result(None)
        done, _ = await asyncio.wait({caller}, timeout=10.0)  # a deadline, not a timing
        self.assertEqual(done, {caller}, "the item submitted last was never sent")
        self.assertEqual(caller.result(), (2, 6))
        self.assertEqual(await other, 4)


class Gate:
    """A ``run`` that holds every command until ``open`` is set (a silent database)."""

    def __init__(self):
        self.open = asyncio.Event()
        self.batches = []

    async def __call__(self, items):
        self.batches.append(list(items))
        await self.open.wait()
        return [item * 2 for item in items]


class BatcherTimeoutTest(unittest.IsolatedAsyncioTestCase):

    async def test_a_caller_waits_at_most_the_timeout_even_behind_other_commands(self):
        run = Gate()
        batcher = Batcher(run, max_in_flight=1, timeout=0.05)
        sent = asyncio.ensure_future(batcher.submit(1))
        while not run.batches:  # until its command is out (loop steps, not time)
            await asyncio.sleep(0)
        queued = asyncio.ensure_future(batcher.submit(2))  # behind the command in flight
        for call in (sent, queued):
            with self.assertRaises(NetworkTimeout) as caught:
                await call
            self.assertTrue(caught.exception.timeout)  # the API maps it to a 503
        run.open.set()
        await asyncio.gather(*batcher.senders)
        # The queued item's caller had left: it was never sent.
        self.assertEqual(run.batches, [[1]])
        self.assertEqual(await batcher.submit(3), 6)

    async def test_an_answer_in_time_is_returned(self):
        run = Gate()
        run.open.set()
        batcher = Batcher(run, timeout=5.0)
        self.assertEqual(await asyncio.gather(batcher.submit(1), batcher.submit(2)), [2, 4])
