"""The public interface: result shape, JSON form, allocation, series, workers."""

import concurrent.futures
import dataclasses
import itertools
import json
import math
import pickle
import unittest

import numpy as np
from numpy.testing import assert_allclose

from indico.optimization import (
    WORKER_BLAS_THREADS,
    Objective,
    OptimizationResult,
    configure_worker,
    optimize,
)
from indico.optimization.allocation import AllocationMethod, allocate_shares, greedy_shares
from tests.optimization.sample import sample_index, sample_prices

TARGETS = {
    Objective.EFFICIENT_RETURN: {"target_return": 0.2},
    Objective.EFFICIENT_RISK: {"target_volatility": 0.15},
}


def _plain_values(value):
    """Yield every leaf of a JSON-like structure."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _plain_values(item)
    elif isinstance(value, list):
        for item in value:
            yield from _plain_values(item)
    else:
        yield value


def _optimize_in_worker(prices):
    return optimize(prices, "max_sharpe", initial_investment=1000.0).to_dict()


class ResultTest(unittest.TestCase):
    def test_every_objective_gives_a_valid_json_result(self):
        prices = sample_prices().loc["2015":"2019"]
        benchmark = sample_index()
        for objective in Objective:
            with self.subTest(objective=objective.value):
                result = optimize(prices, objective, initial_investment=10_000.0,
                                  benchmark=benchmark, weight_bounds=(0.0, 0.3),
                                  **TARGETS.get(objective, {}))
                self.assertIsInstance(result, OptimizationResult)
                assert_allclose(result.weights.sum(), 1.0, atol=1e-9)
                self.assertTrue(np.all(result.weights >= 0))
                self.assertTrue(np.all(result.weights <= 0.3 + 1e-12))
                document = result.to_dict()
                text = json.dumps(document, allow_nan=False)
                self.assertEqual(json.loads(text), document)
                for leaf in _plain_values(document):
                    self.assertIn(type(leaf), (str, int, float, bool, type(None)))
                self.assertEqual(document["objective"], objective.value)
                self.assertEqual(list(document["allocations"]), list(prices.columns))
                self.assertEqual(set(document["shares"]), set(prices.columns))
                self.assertEqual(set(document["stats"]),
                                 {"expected_return", "volatility", "sharpe",
                                  "risk_contributions", "cvar"})
                portfolio = document["performance"]["portfolio"]
                self.assertEqual(set(portfolio), {
                    "cumulative_return", "mean_daily_return", "std_daily_return",
                    "sharpe", "max_drawdown", "final_value"})
                self.assertEqual(set(document["performance"]["benchmark"]), set(portfolio))
                series = document["performance"]["series"]
                self.assertLessEqual(len(series["dates"]), 500)
                self.assertEqual(len(series["portfolio"]), len(series["dates"]))
                self.assertEqual(len(series["benchmark"]), len(series["dates"]))
                self.assertEqual(series["dates"][0], "2015-01-02")
                self.assertEqual(series["dates"][-1], "2019-12-31")
                self.assertGreaterEqual(document["leftover"], 0.0)

    def test_path_statistics_and_money(self):
        prices = sample_prices().loc["2015":"2019"]
        result = optimize(prices, "equal_weight", initial_investment=10_000.0,
                          benchmark=sample_index(), risk_free_rate=0.01)
        path = (prices / prices.iloc[0]).mean(axis=1).to_numpy()
        daily = path[1:] / path[:-1] - 1
        portfolio = result.portfolio
        assert_allclose(portfolio["cumulative_return"], path[-1] - 1, rtol=1e-12)
        assert_allclose(portfolio["mean_daily_return"], daily.mean(), rtol=1e-12)
        assert_allclose(portfolio["std_daily_return"], daily.std(ddof=1), rtol=1e-12)
        assert_allclose(portfolio["sharpe"],
                        math.sqrt(252) * (daily.mean() - 0.01 / 252) / daily.std(ddof=1),
                        rtol=1e-12)
        peak = np.maximum.accumulate(path)
        assert_allclose(portfolio["max_drawdown"], np.max(1 - path / peak), rtol=1e-12)
        assert_allclose(portfolio["final_value"], 10_000.0 * path[-1], rtol=1e-12)
        index = sample_index().loc["2015":"2019"].to_numpy()
        assert_allclose(result.benchmark["cumulative_return"], index[-1] / index[0] - 1,
                        rtol=1e-12)
        assert_allclose(result.series_portfolio[0], 10_000.0)
        spent = float(prices.iloc[-1].to_numpy() @ result.shares)
        assert_allclose(spent + result.leftover, 10_000.0, rtol=1e-12)

    def test_series_points_that_are_not_finite_are_null_in_the_json_form(self):
        result = optimize(sample_prices().loc["2019"], "max_sharpe", benchmark=sample_index())
        portfolio = result.series_portfolio.copy()
        portfolio[[1, 3]] = [np.nan, np.inf]
        benchmark = result.series_benchmark.copy()
        benchmark[-1] = -np.inf
        series = dataclasses.replace(result, series_portfolio=portfolio,
                                     series_benchmark=benchmark).to_dict()["performance"]["series"]
        expected = result.series_portfolio.tolist()
        expected[1] = expected[3] = None
        self.assertEqual(series["portfolio"], expected)
        self.assertEqual(series["benchmark"], result.series_benchmark.tolist()[:-1] + [None])
        plain = result.to_dict()["performance"]["series"]
        self.assertEqual(plain["portfolio"], result.series_portfolio.tolist())
        self.assertTrue(all(type(value) is float for value in plain["portfolio"]))

    def test_series_dates_are_written_as_numpy_writes_them(self):
        result = optimize(sample_prices().loc["2019"], "min_volatility")
        stamps = np.array(["1900-02-28T23:59:59.999", "1969-12-31T12:00", "1970-01-01",
                           "2000-02-29T06:00", "NaT", "2262-04-11"], dtype="datetime64[ns]")
        for dates in (stamps, stamps.astype("datetime64[us]"), stamps.astype("datetime64[D]"),
                      stamps[:0]):
            with self.subTest(dtype=str(dates.dtype), size=dates.size):
                expected = np.datetime_as_string(dates, unit="D").tolist()
                for _ in range(2):  # made, then remembered
                    document = dataclasses.replace(result, series_dates=dates).to_dict()
                    self.assertEqual(document["performance"]["series"]["dates"], expected)

    def test_without_investment_or_benchmark(self):
        document = optimize(sample_prices().loc["2019"], "min_volatility").to_dict()
        self.assertEqual(document["shares"], {})
        self.assertIsNone(document["leftover"])
        self.assertIsNone(document["performance"]["portfolio"]["final_value"])
        self.assertIsNone(document["performance"]["benchmark"])
        self.assertIsNone(document["performance"]["series"]["benchmark"])
        self.assertAlmostEqual(document["performance"]["series"]["portfolio"][0], 1.0, places=12)

    def test_short_series_keeps_every_date_and_tiny_weights_are_clean(self):
        prices = sample_prices().loc["2019-01":"2019-03"]
        result = optimize(prices, "max_sharpe")
        self.assertEqual(len(result.series_dates), len(prices))
        zero = result.weights[result.weights < 1e-6]
        self.assertTrue(np.all(zero == 0.0))
        self.assertTrue(all(w >= 0 for w in result.to_dict()["allocations"].values()))

    def test_unsorted_dates_and_string_objective(self):
        prices = sample_prices().loc["2018":"2019", ["AAPL", "KO", "XOM"]]
        shuffled = prices.sample(frac=1.0, random_state=0)
        assert_allclose(optimize(shuffled, "max_sharpe").weights,
                        optimize(prices, Objective.MAX_SHARPE).weights, atol=1e-14)

    def test_single_feasible_portfolio(self):
        prices = sample_prices().loc["2019", ["AAPL", "KO", "XOM", "PG"]]
        for objective in ("min_volatility", "max_sharpe", "buy_and_hold_sharpe"):
            result = optimize(prices, objective, weight_bounds=(0.0, 0.25))
            assert_allclose(result.weights, np.full(4, 0.25), atol=1e-15)

    def test_result_pickles_and_runs_in_a_process_pool(self):
        prices = sample_prices().loc["2017":"2019"]
        local = optimize(prices, "max_sharpe", initial_investment=1000.0)
        self.assertEqual(pickle.loads(pickle.dumps(local)).to_dict(), local.to_dict())
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=1, initializer=configure_worker
        ) as pool:
            remote = pool.submit(_optimize_in_worker, prices).result(timeout=60)
        self.assertEqual(remote, local.to_dict())
        self.assertEqual(WORKER_BLAS_THREADS, 1)


class AllocationTest(unittest.TestCase):
    def test_allocation_is_optimal_against_enumeration(self):
        prices = np.array([173.5, 61.2, 412.9])
        weights = np.array([0.45, 0.35, 0.20])
        total = 1500.0
        shares, leftover, method = allocate_shares(weights, prices, total)
        self.assertIn(method, (AllocationMethod.ROUNDING, AllocationMethod.BRANCH_AND_BOUND))
        best = min(
            (float(np.abs(prices * np.array(x) - weights * total).sum()), x)
            for x in itertools.product(*(range(int(total // p) + 1) for p in prices))
            if prices @ np.array(x) <= total
        )
        found = float(np.abs(prices * shares - weights * total).sum())
        assert_allclose(found, best[0], rtol=1e-9)
        assert_allclose(leftover, total - prices @ shares, rtol=1e-12)
        self.assertGreaterEqual(leftover, 0.0)

    def test_optimal_against_enumeration_with_zero_weights_and_below_floor_optima(self):
        # Pruning zero-weight assets and capping shares at ceil(target / price)
        # must not change the optimum: check random small problems exhaustively.
        rng = np.random.default_rng(7)
        cases = [(np.array([10 / 109.9, 99.9 / 109.9]), np.array([1.0, 100.0]), 109.9)]
        for _ in range(25):
            weights = rng.dirichlet(np.ones(4))
            weights[rng.integers(4)] = 0.0
            cases.append((weights / weights.sum(), rng.uniform(20, 300, 4),
                          float(rng.uniform(200, 900))))
        methods = set()
        for (weights, prices, total), node_limit in itertools.product(cases, (None, 0)):
            # node_limit 0 sends what rounding cannot settle to the MILP instead.
            shares, leftover, method = allocate_shares(weights, prices, total,
                                                       node_limit=node_limit)
            methods.add(method)
            self.assertTrue(np.all(shares[weights == 0] == 0))
            best = min(
                float(np.abs(prices * np.array(x) - weights * total).sum())
                for x in itertools.product(*(range(int(total // p) + 1) for p in prices))
                if prices @ np.array(x) <= total
            )
            found = float(np.abs(prices * shares - weights * total).sum())
            assert_allclose(found, best, rtol=1e-9, atol=1e-9)
            self.assertGreaterEqual(leftover, 0.0)
        # Every exact path was exercised.
        self.assertEqual(methods, {AllocationMethod.ROUNDING, AllocationMethod.BRANCH_AND_BOUND,
                                   AllocationMethod.MILP})
        # The first case needs one share below the floor of the cheap asset.
        self.assertEqual(allocate_shares(*cases[0])[0].tolist(), [9, 1])

    def test_greedy_fallback_never_overspends(self):
        rng = np.random.default_rng(0)
        for _ in range(50):
            weights = rng.dirichlet(np.ones(8))
            prices = rng.uniform(5, 500, 8)
            total = float(rng.uniform(100, 20_000))
            shares = greedy_shares(weights, prices, total)
            self.assertTrue(np.all(shares >= 0))
            self.assertLessEqual(prices @ shares, total + 1e-9)

    def test_budget_smaller_than_any_price(self):
        shares, leftover, _ = allocate_shares(np.array([0.5, 0.5]), np.array([300.0, 400.0]),
                                              100.0)
        self.assertEqual(shares.tolist(), [0, 0])
        self.assertEqual(leftover, 100.0)


if __name__ == "__main__":
    unittest.main()
