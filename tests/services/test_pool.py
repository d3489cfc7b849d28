"""The worker processes (indico.services.pool): the pool, and the workers' frame cache.

``WorkerPool``: a pool whose idle worker died is replaced, a shut-down pool
refuses work. (A task over its time limit has only its own worker killed: the
route tests show it, tests/routes/test_portfolio.py ``TimeLimitTest``.)

The frame cache (``FrameTokens``, ``run_on_frame``, ``WorkerPool.run_on_frame``):
a frame travels to the optimization workers once; later tasks carry only its
token. These tests check that a token always means the same prices: a price
import that changes a frame (same symbols, same dates) gives the next job the
new prices, never the frame a worker kept.
"""

import asyncio
import logging
import os
import signal
import tempfile
import time
import unittest

import numpy as np
import pandas as pd

from indico.error import OptimizationError
from indico.services.pool import (
    FrameMissing,
    FrameTokens,
    WorkerFrame,
    WorkerPool,
    _same_buffer,
    _worker_frames,
    run_frontier,
    run_on_frame,
    run_optimization,
)
from indico.services.price_import import PriceImporter
from tests.harness import ServerTest

PARAMS = {"objective": "max_sharpe", "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0],
          "target_return": None, "target_volatility": None, "initial_investment": 10000.0}


def frame(seed=0):
    """Prices of three symbols over 60 business days, from a seeded random walk."""
    dates = pd.bdate_range("2020-01-01", periods=60, name="date")
    steps = np.random.default_rng(seed).normal(0.001, 0.02, size=(60, 3))
    return pd.DataFrame(100 * np.exp(np.cumsum(steps, axis=0)), index=dates,
                        columns=["AAA", "BBB", "CCC"])


class FrameTokensTest(unittest.TestCase):
    """The server side: a token per distinct frame and benchmark, by value."""

    def test_equal_frames_share_a_token_and_any_change_makes_a_new_one(self):
        tokens = FrameTokens()
        prices, benchmark = frame(), frame(1)["AAA"]
        first, known = tokens.token(prices, benchmark)
        self.assertFalse(known)
        self.assertEqual(tokens.token(prices.copy(), benchmark.copy()), (first, True))
        changed = prices.copy()
        changed.iloc[30, 1] *= 1.01  # one price of one symbol: same shape, same dates
        second, known = tokens.token(changed, benchmark)
        self.assertFalse(known)
        self.assertNotEqual(second, first)
        third, known = tokens.token(changed, None)  # the benchmark differs
        self.assertFalse(known)
        self.assertNotIn(third, (first, second))
        renamed = changed.set_axis(["AAA", "BBB", "DDD"], axis=1)
        self.assertFalse(tokens.token(renamed, None)[1])

    def test_shallow_copies_share_a_token_and_a_change_to_one_does_not(self):
        # The catalog hands out shallow copies of its cached frame: views of
        # one buffer, recognised without comparing each price. Copy-on-write
        # keeps that sound: a change to a copy is written to a buffer of its own.
        tokens = FrameTokens()
        prices, benchmark = frame(), frame(1)["AAA"]
        first, _ = tokens.token(prices.copy(deep=False), benchmark.copy(deep=False))
        self.assertEqual(tokens.token(prices.copy(deep=False), benchmark.copy(deep=False)),
                         (first, True))
        changed = prices.copy(deep=False)
        changed.iloc[30, 1] *= 1.01
        second, known = tokens.token(changed, benchmark.copy(deep=False))
        self.assertFalse(known)
        bumped = benchmark.copy(deep=False)
        bumped.iloc[5] += 1
        third, known = tokens.token(prices.copy(deep=False), bumped)
        self.assertFalse(known)
        self.assertEqual(len({first, second, third}), 3)
        # A writeable array is compared price by price, even with itself.
        writeable = prices.to_numpy().copy()
        self.assertFalse(_same_buffer(writeable, writeable))
        values = prices.to_numpy()
        self.assertTrue(_same_buffer(values, prices.copy(deep=False).to_numpy()))
        self.assertFalse(_same_buffer(values, values[1:]))
        self.assertFalse(_same_buffer(values, values.T))

    def test_an_equal_frame_in_other_memory_takes_the_place_of_the_one_kept(self):
        # Two requests that build the catalog's frame at once get equal frames
        # in two buffers, and the catalog keeps the second: from then on its
        # copies are recognised by their buffer, not compared price by price.
        class Counting(FrameTokens):
            comparisons = 0

            def _compare_prices(self, one, other):
                Counting.comparisons += 1
                return super()._compare_prices(one, other)

        tokens = Counting()
        first, second = frame(), frame()  # equal prices, two buffers
        benchmark = frame(1)["AAA"]
        token, _ = tokens.token(first.copy(deep=False), benchmark.copy(deep=False))
        self.assertEqual(tokens.token(second.copy(deep=False), benchmark.copy(deep=False)),
                         (token, True))
        self.assertEqual(Counting.comparisons, 1)
        for _ in range(3):
            self.assertEqual(tokens.token(second.copy(deep=False), benchmark.copy(deep=False)),
                             (token, True))
        self.assertEqual(Counting.comparisons, 1)
        # A change the caller makes to the frame it passed does not reach the one kept.
        tokens = FrameTokens()
        passed = first.copy(deep=False)
        token, _ = tokens.token(passed, None)
        passed.iloc[0, 0] *= 2
        self.assertEqual(tokens.token(first.copy(deep=False), None), (token, True))
        self.assertFalse(tokens.token(passed, None)[1])

    def test_missing_prices_match_only_missing_prices(self):
        tokens = FrameTokens()
        prices = frame()
        prices.iloc[3, 0] = np.nan
        first, _ = tokens.token(prices, None)
        self.assertEqual(tokens.token(prices.copy(), None), (first, True))
        filled = prices.copy()
        filled.iloc[3, 0] = 1.0
        self.assertFalse(tokens.token(filled, None)[1])
        self.assertFalse(tokens.token(prices, frame(1)["AAA"])[1])
        self.assertFalse(tokens.token(prices["AAA"].to_frame(), None)[1])


class RunOnFrameTest(unittest.TestCase):
    """The worker side, called in this process: it keeps what it is sent, by token."""

    def setUp(self):
        _worker_frames.clear()
        self.addCleanup(_worker_frames.clear)

    def test_a_token_without_its_frame_asks_for_the_frame(self):
        with self.assertRaises(FrameMissing):
            run_on_frame(run_optimization, 7, PARAMS)

    def test_the_frame_sent_once_serves_the_next_tasks(self):
        prices = frame()
        expected = run_optimization(WorkerFrame(prices, None), PARAMS)
        self.assertEqual(run_on_frame(run_optimization, 7, PARAMS, prices, None), expected)
        self.assertEqual(run_on_frame(run_optimization, 7, PARAMS), expected)
        with self.assertRaises(FrameMissing):
            run_on_frame(run_optimization, 8, PARAMS)

    def test_a_kept_frames_moments_are_made_once_and_serve_every_later_task(self):
        prices, benchmark = frame(), frame(1)["AAA"]
        fresh = run_optimization(WorkerFrame(prices, benchmark), PARAMS)
        self.assertEqual(run_on_frame(run_optimization, 7, PARAMS, prices, benchmark), fresh)
        kept = _worker_frames[7]
        market = kept.__dict__.get("market")  # made by that optimization, kept
        self.assertIsNotNone(market)
        self.assertFalse(market.cov.flags.writeable)  # shared by the tasks: read-only
        for objective in ("min_volatility", "hrp", "max_sharpe"):
            params = {**PARAMS, "objective": objective}
            self.assertEqual(run_on_frame(run_optimization, 7, params),
                             run_optimization(WorkerFrame(prices, benchmark), params))
        self.assertIs(kept.market, market)
        self.assertIs(_worker_frames[7], kept)
        frontier = {"points": 5, "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0],
                    "returns_model": "mean", "returns_span": 500, "risk_model": "sample",
                    "risk_span": 180, "groups": None}
        self.assertEqual(run_on_frame(run_frontier, 7, frontier),
                         run_frontier(WorkerFrame(prices, None), frontier))
        self.assertIs(kept.market, market)
        # A frontier makes the moments of a frame it gets first, too.
        run_on_frame(run_frontier, 11, frontier, prices, None)
        self.assertIn("market", _worker_frames[11].__dict__)

    def test_prices_that_cannot_be_optimized_fail_every_task_on_them(self):
        prices = frame()
        prices.iloc[10, 1] = np.nan
        for _ in range(2):
            with self.assertRaisesRegex(OptimizationError, "Missing prices for BBB"):
                run_on_frame(run_optimization, 9, PARAMS, prices, None)
        with self.assertRaisesRegex(OptimizationError, "Missing prices for BBB"):
            run_on_frame(run_optimization, 9, PARAMS)


class PriceImportTest(ServerTest):
    """Through HTTP and the real workers: an import that changes prices changes the result."""

    def import_prices(self, prices):
        handle, path = tempfile.mkstemp(suffix=".csv", prefix="indico-frames-")
        os.close(handle)
        self.addCleanup(os.remove, path)
        prices.rename_axis("Date").to_csv(path)
        self.io_loop.run_sync(lambda: PriceImporter(self.db).import_file(path))

    def optimize(self, token):
        status, body = self.post("/portfolio/optimize", {
            "symbols": ["AAA", "BBB", "CCC"], "startDate": "2020-01-01",
            "endDate": "2020-12-31", "initialInvestment": 10000}, token=token)
        self.assertEqual(status, 200, body)
        return body["data"]

    def test_the_workers_serve_the_imported_prices_not_the_frame_they_kept(self):
        token = self.signup()
        before = frame()
        self.import_prices(before)
        # Both workers get the frame (a task may land on either), then its token only.
        first = [self.optimize(token) for _ in range(4)]
        self.assertTrue(all(result["allocations"] == first[0]["allocations"]
                            for result in first))
        after = before.copy()
        after.iloc[30:, 0] *= 1.5  # AAA jumps: same symbols, same dates, other prices
        self.import_prices(after)
        expected = run_optimization(WorkerFrame(after, None), PARAMS)
        for _ in range(4):
            result = self.optimize(token)
            self.assertEqual(result["allocations"], expected["allocations"])
            self.assertEqual(result["shares"], expected["shares"])
            self.assertEqual(result["performance"]["series"],
                             expected["performance"]["series"])
        self.assertNotEqual(first[0]["allocations"], expected["allocations"])


class WorkerPoolTest(unittest.IsolatedAsyncioTestCase):

    async def test_a_pool_whose_idle_worker_died_is_replaced(self):
        pool = WorkerPool(1)
        self.addCleanup(pool.shutdown, wait=True)
        pid = await pool.run(os.getpid)
        broken = pool.pool
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while broken.active:  # pebble gives such a pool up within a tenth of a second
            self.assertLess(time.monotonic(), deadline, "pebble never noticed")
            await asyncio.sleep(0.05)
        with self.assertLogs("indico.services.pool", logging.WARNING) as logs:
            new_pid = await pool.run(os.getpid)
        self.assertNotEqual(new_pid, pid)
        self.assertIsNot(pool.pool, broken)
        self.assertEqual([record.getMessage() for record in logs.records],
                         ["the worker pool broke; starting a new one"])

    async def test_a_shut_down_pool_refuses_work(self):
        pool = WorkerPool(1)
        pool.shutdown(wait=True)
        with self.assertRaises(RuntimeError):
            await pool.run(os.getpid)


if __name__ == "__main__":
    unittest.main()
