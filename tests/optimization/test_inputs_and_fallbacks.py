"""Input normalisation, guaranteed fallback paths and edge cases of the engine.

The fast primal-dual path of the frontier solver is checked against the guaranteed
primal active-set method (``solve`` and ``walk``) on the same problems.
"""

import types
import unittest

import numpy as np
import pandas as pd
from numpy.testing import assert_allclose

from indico.error import OptimizationError
from indico.optimization import data as data_module
from indico.optimization import optimize
from indico.optimization.allocation import AllocationMethod, allocate_shares
from indico.optimization.data import align_benchmark, prepare_prices
from indico.optimization.frontier import Frontier, kkt_residual
from indico.optimization.risk_parity import bounded_risk_parity
from tests.optimization.sample import sample_index, sample_prices


class GuaranteedPathTest(unittest.TestCase):
    """The fast primal-dual path against the guaranteed primal active-set method."""

    def solvers(self, bounds):
        data = prepare_prices(sample_prices().loc["2012":"2016"])
        low, high = np.full(20, bounds[0]), np.full(20, bounds[1])
        return data, (lambda: Frontier(data.mu, data.solver_covariance(), low, high))

    def test_both_methods_agree_along_the_frontier(self):
        for bounds in ((0.0, 1.0), (0.02, 0.25)):
            data, make = self.solvers(bounds)
            for t in (0.0, 0.01, 0.05, 0.2, 0.5, 1.0):
                with self.subTest(bounds=bounds, t=t):
                    fast = make().solve_by_rule(lambda q0, q2, r0, t=t: t)
                    self.assertIsNotNone(fast)
                    segment, at = fast
                    assert_allclose(at, t)
                    slow = make().solve(t)
                    assert_allclose(slow.weights(t), segment.weights(t), atol=1e-9)
            # Far along a capped frontier the fast path may give up; the method
            # the engine falls back on still answers within the bounds.
            far = make().solve(3.0).weights(3.0)
            assert_allclose(far.sum(), 1.0, atol=1e-12)
            self.assertTrue(np.all(far >= bounds[0] - 1e-12) and np.all(far <= bounds[1] + 1e-12))

    def test_the_walk_finds_the_fast_paths_tangency(self):
        rf = 0.0
        for bounds in ((0.0, 1.0), (0.02, 0.25)):
            with self.subTest(bounds=bounds):
                data, make = self.solvers(bounds)
                fast = optimize(sample_prices().loc["2012":"2016"], "max_sharpe",
                                weight_bounds=bounds)
                segment, t = make().walk(
                    root=lambda s: s.q0 / (s.r0 - rf) if s.r0 > rf else np.inf,
                    below=lambda s, t: t * (s.expected_return(t) - rf) - s.variance(t) < 0,
                )
                assert_allclose(segment.weights(t), fast.weights, atol=1e-9)

    def test_kkt_residual_at_a_vertex(self):
        mu = np.array([0.1, 0.2, 0.3])
        cov = np.diag([0.04, 0.05, 0.06])
        weights = np.array([0.0, 0.0, 1.0])
        self.assertEqual(kkt_residual(weights, mu, cov, np.zeros(3), np.ones(3), 100.0), 0.0)
        self.assertGreater(kkt_residual(weights, mu, cov, np.zeros(3), np.ones(3), 0.0), 0.0)


class InputTest(unittest.TestCase):
    def test_string_and_timezone_dates_are_accepted(self):
        prices = sample_prices().loc["2019", ["AAPL", "KO", "XOM"]]
        as_text = prices.set_axis(prices.index.strftime("%Y-%m-%d"))
        aware = prices.tz_localize("America/New_York")
        expected = optimize(prices, "max_sharpe").weights
        assert_allclose(optimize(as_text, "max_sharpe").weights, expected, atol=1e-14)
        assert_allclose(optimize(aware, "max_sharpe").weights, expected, atol=1e-14)

    def test_bad_frames(self):
        prices = sample_prices().loc["2019", ["AAPL", "KO"]]
        cases = {
            "No symbols": prices.iloc[:, :0],
            "more than once": prices.set_axis(["AAPL", "AAPL"], axis=1),
            "duplicate dates": pd.concat([prices, prices.iloc[:1]]),
            "indexed by date": prices.set_axis(range(len(prices))).set_axis(
                [object()] * len(prices)),
            "numeric": prices.astype(object).assign(KO="n/a"),
        }
        for words, frame in cases.items():
            with self.subTest(words=words):
                with self.assertRaises(OptimizationError) as caught:
                    optimize(frame)
                self.assertIn(words, caught.exception.message)

    def test_duplicate_series_under_two_names_uses_a_ridge(self):
        prices = sample_prices().loc["2019", ["AAPL", "KO"]].copy()
        prices["KO2"] = prices["KO"]
        for objective in ("min_volatility", "max_sharpe", "risk_parity"):
            with self.subTest(objective=objective):
                result = optimize(prices, objective)
                assert_allclose(result.weights.sum(), 1.0, atol=1e-12)
                # The two copies are interchangeable: the ridge splits them evenly.
                assert_allclose(result.allocations["KO"], result.allocations["KO2"],
                                atol=1e-6)

    def test_fewer_dates_than_assets(self):
        prices = sample_prices().loc["2019-01-02":"2019-01-10"]
        self.assertLess(len(prices), 20)
        result = optimize(prices, "min_volatility")
        assert_allclose(result.weights.sum(), 1.0, atol=1e-12)
        self.assertGreaterEqual(result.weights.min(), 0.0)

    def test_benchmark_alignment(self):
        prices = sample_prices().loc["2019", ["AAPL", "KO"]]
        index = sample_index().loc["2019"]
        plain = optimize(prices, "equal_weight", benchmark=index).benchmark
        with_gap = index.drop(index.index[10:15])
        as_frame = index.to_frame()
        as_text = index.set_axis(index.index.strftime("%Y-%m-%d"))
        repeated = pd.concat([index, index.iloc[:3]])
        aware = index.tz_localize("UTC")
        for variant in (with_gap, as_frame, as_text, repeated, aware):
            result = optimize(prices, "equal_weight", benchmark=variant).benchmark
            assert_allclose(result["cumulative_return"], plain["cumulative_return"],
                            rtol=1e-12)
        with self.assertRaises(OptimizationError):
            optimize(prices, "equal_weight",
                     benchmark=index.set_axis([object()] * len(index)))

    def test_a_benchmark_already_on_the_frames_dates_gives_what_the_general_path_gives(self):
        # The catalog hands the engine benchmarks aligned on the frame's dates,
        # which skip the reindex; anything less than that takes the general path.
        prices = sample_prices().loc["2019", ["AAPL", "KO"]]
        index = sample_index().loc["2019"]
        self.assertTrue(index.index.equals(prices.index))
        data = prepare_prices(prices)
        self.assertIsNotNone(data_module._already_aligned(index, data.dates))
        general = align_benchmark(index.iloc[:-1], data)  # misses the last date: filled
        aligned = align_benchmark(index, data)
        assert_allclose(aligned, index.to_numpy(), rtol=0)
        assert_allclose(general[:-1], aligned[:-1], rtol=0)
        aligned[0] = -1.0  # a copy: the caller's series is not written
        self.assertGreater(index.iloc[0], 0)
        holed = index.copy()
        holed.iloc[[3, 4]] = [np.nan, 0.0]
        shifted = index.set_axis(index.index + pd.Timedelta(hours=1))
        in_seconds = index.set_axis(index.index.as_unit("s"))
        for other in (holed, index.astype("float32"), shifted, in_seconds, index.iloc[:-1]):
            self.assertIsNone(data_module._already_aligned(other, data.dates))
        assert_allclose(align_benchmark(in_seconds, data), index.to_numpy(), rtol=0)
        expected = index.to_numpy().copy()
        expected[[3, 4]] = expected[2]  # forward-filled, as before
        assert_allclose(align_benchmark(holed, data), expected, rtol=0)
        assert_allclose(align_benchmark(index.astype("float32"), data),
                        index.to_numpy().astype("float32"), rtol=0)
        with self.assertRaises(OptimizationError):  # no level on any of the frame's dates
            align_benchmark(shifted, data)

    def test_single_portfolio_targets(self):
        prices = sample_prices().loc["2019", ["AAPL", "KO", "XOM", "PG"]]
        data = prepare_prices(prices)
        only = np.full(4, 0.25)
        volatility = float(np.sqrt(only @ data.cov @ only))
        result = optimize(prices, "efficient_risk", weight_bounds=(0.25, 1.0),
                          target_volatility=volatility + 0.01)
        assert_allclose(result.weights, only, atol=1e-15)
        with self.assertRaises(OptimizationError):
            optimize(prices, "efficient_risk", weight_bounds=(0.25, 1.0),
                     target_volatility=volatility / 2)
        result = optimize(prices, "efficient_return", weight_bounds=(0.0, 0.25),
                          target_return=float(data.mu @ only))
        assert_allclose(result.weights, only, atol=1e-15)

    def test_per_symbol_bounds(self):
        prices = sample_prices().loc["2015":"2019"]
        result = optimize(prices, "max_sharpe", weight_bounds={"AAPL": (0.1, 0.15),
                                                                 "MSFT": (0.0, 0.05)})
        self.assertGreaterEqual(result.allocations["AAPL"], 0.1 - 1e-12)
        self.assertLessEqual(result.allocations["AAPL"], 0.15 + 1e-12)
        self.assertLessEqual(result.allocations["MSFT"], 0.05 + 1e-12)
        with self.assertRaises(OptimizationError):
            optimize(prices, weight_bounds={"AAPL": (0.1, float("inf"))})


class RiskParityTest(unittest.TestCase):
    def test_floors_bind(self):
        prices = sample_prices().loc["2015":"2019", ["JNJ", "KO", "PG", "AMD", "RRC"]]
        data = prepare_prices(prices)
        lower, upper = np.full(5, 0.15), np.full(5, 1.0)
        weights = bounded_risk_parity(data.cov, lower, upper)
        assert_allclose(weights.sum(), 1.0, atol=1e-12)
        floored = weights <= 0.15 + 1e-12
        self.assertTrue(floored.any())
        contributions = weights * (data.cov @ weights)
        free = contributions[~floored]
        assert_allclose(free, free[0], rtol=1e-8)


class AllocationFallbackTest(unittest.TestCase):
    @staticmethod
    def solver_answering(status, x):
        """A stand-in for scipy's milp that ends with ``status`` and point ``x``."""
        def solve(*args, **kwargs):
            return types.SimpleNamespace(status=status, x=x)
        return solve

    # Targets 55 and 45: rounding to the nearest share (6 and 2) would spend 120;
    # with no nodes for the branch and bound these cases go to the MILP.
    WEIGHTS, PRICES, TOTAL = np.array([0.55, 0.45]), np.array([10.0, 30.0]), 100.0

    def test_greedy_when_milp_fails(self):
        shares, leftover, method = allocate_shares(
            self.WEIGHTS, self.PRICES, self.TOTAL, solver=self.solver_answering(4, None),
            node_limit=0)
        self.assertEqual(method, AllocationMethod.GREEDY)
        self.assertEqual(shares.tolist(), [6, 1])
        assert_allclose(leftover, 10.0)

    def test_time_limit_keeps_best_point(self):
        shares, leftover, method = allocate_shares(
            self.WEIGHTS, self.PRICES, self.TOTAL,
            solver=self.solver_answering(1, np.array([4.0, 2.0, 0.0, 0.0])), node_limit=0)
        self.assertEqual(method, AllocationMethod.MILP_TIME_LIMIT)
        self.assertEqual(shares.tolist(), [4, 2])
        self.assertEqual(leftover, 0.0)

    def test_branch_and_bound_and_milp_agree_there(self):
        for node_limit, expected in ((None, AllocationMethod.BRANCH_AND_BOUND),
                                     (0, AllocationMethod.MILP)):
            shares, leftover, method = allocate_shares(self.WEIGHTS, self.PRICES, self.TOTAL,
                                                       node_limit=node_limit)
            self.assertEqual(method, expected)
            # [5, 1] and [6, 1] both deviate by 20, the least any affordable choice reaches.
            self.assertIn(shares.tolist(), ([5, 1], [6, 1]))
            assert_allclose(np.abs(self.PRICES * shares - self.WEIGHTS * self.TOTAL).sum(),
                            20.0)

    def test_branch_and_bound_matches_the_milp_on_random_problems(self):
        rng = np.random.default_rng(11)
        for _ in range(150):
            n = int(rng.integers(2, 25))
            weights = rng.dirichlet(np.ones(n) * rng.choice([0.3, 1.0, 3.0]))
            prices = rng.uniform(5, 800, n)
            total = float(rng.choice([500, 1_000, 10_000, 100_000]) * rng.uniform(0.5, 2))
            fast = allocate_shares(weights, prices, total)
            slow = allocate_shares(weights, prices, total, node_limit=0)
            self.assertLessEqual(prices @ fast[0], total * (1 + 1e-12))
            deviation = [np.abs(prices * shares - weights * total).sum()
                         for shares in (fast[0], slow[0])]
            self.assertLessEqual(deviation[0], deviation[1] + 1e-9 * total)


if __name__ == "__main__":
    unittest.main()
