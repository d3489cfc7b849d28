"""efficient_frontier: its points, corners and special portfolios against the engine's
own exact objectives, on the shipped sample prices."""

import math
import unittest

import numpy as np
from numpy.testing import assert_allclose

from indico.error import OptimizationError
from indico.optimization import efficient_frontier, optimize
from indico.optimization.data import prepare_prices
from indico.optimization.estimators import estimate
from tests.optimization.sample import sample_prices

BOUNDS = [(0.0, 1.0), (0.0, 0.2), (0.02, 0.3)]


def window(symbols=None, start="2015-01-01", end="2019-12-31"):
    prices = sample_prices().loc[start:end]
    return prices if symbols is None else prices[list(symbols)]


def weights(portfolio, symbols):
    return np.array([portfolio["weights"][s] for s in symbols])


class FrontierPointsTest(unittest.TestCase):

    def test_points_are_the_efficient_return_portfolios_one_by_one(self):
        prices = window()
        for bounds in BOUNDS:
            with self.subTest(bounds=bounds):
                curve = efficient_frontier(prices, points=20, weight_bounds=bounds)
                self.assertEqual(len(curve["points"]), 20)
                for point in curve["points"]:
                    exact = optimize(prices, "efficient_return", weight_bounds=bounds,
                                     target_return=point["expected_return"])
                    assert_allclose(weights(point, prices.columns), exact.weights,
                                    rtol=0, atol=1e-9)
                    self.assertAlmostEqual(point["volatility"], exact.stats["volatility"],
                                           delta=1e-10)

    def test_points_are_evenly_spaced_from_min_volatility_to_max_return(self):
        prices = window()
        curve = efficient_frontier(prices, points=50, weight_bounds=(0.0, 0.25))
        returns = np.array([point["expected_return"] for point in curve["points"]])
        assert_allclose(np.diff(returns), np.full(49, (returns[-1] - returns[0]) / 49),
                        rtol=0, atol=1e-12)
        self.assertEqual(curve["points"][0], curve["min_volatility"])
        least = optimize(prices, "min_volatility", weight_bounds=(0.0, 0.25))
        assert_allclose(weights(curve["min_volatility"], prices.columns), least.weights,
                        rtol=0, atol=1e-9)
        data = estimate(prepare_prices(prices), "mean", 500, "sample", 180, 0.0)
        # The last point is the maximum-return portfolio: the four best at 0.25 each.
        best = np.sort(data.mu)[-4:].sum() * 0.25
        self.assertAlmostEqual(returns[-1], best, delta=1e-12)
        volatilities = [point["volatility"] for point in curve["points"]]
        self.assertTrue(all(b >= a - 1e-12 for a, b in zip(volatilities, volatilities[1:],
                                                            strict=False)))

    def test_max_sharpe_is_the_engines(self):
        prices = window()
        for bounds in BOUNDS:
            for rate in (0.0, 0.03):
                with self.subTest(bounds=bounds, rate=rate):
                    curve = efficient_frontier(prices, points=2, weight_bounds=bounds,
                                               risk_free_rate=rate)
                    exact = optimize(prices, "max_sharpe", weight_bounds=bounds,
                                     risk_free_rate=rate)
                    assert_allclose(weights(curve["max_sharpe"], prices.columns),
                                    exact.weights, rtol=0, atol=1e-9)
                    self.assertAlmostEqual(curve["max_sharpe"]["sharpe"],
                                           exact.stats["sharpe"], delta=1e-12)
                    self.assertGreaterEqual(
                        curve["max_sharpe"]["sharpe"],
                        max(p["sharpe"] for p in curve["points"]) - 1e-12)

    def test_estimators_reach_the_frontier(self):
        prices = window()
        options = {"returns_model": "ema", "risk_model": "ledoit_wolf"}
        curve = efficient_frontier(prices, points=5, **options)
        for point in curve["points"]:
            exact = optimize(prices, "efficient_return", target_return=point["expected_return"],
                             **options)
            assert_allclose(weights(point, prices.columns), exact.weights, rtol=0, atol=1e-9)
        plain = efficient_frontier(prices, points=5)
        self.assertNotAlmostEqual(plain["points"][0]["volatility"],
                                  curve["points"][0]["volatility"], places=6)

    def test_no_portfolio_beating_the_risk_free_rate_leaves_max_sharpe_out(self):
        curve = efficient_frontier(window(), points=3, risk_free_rate=5.0)
        self.assertIsNone(curve["max_sharpe"])
        self.assertEqual(len(curve["points"]), 3)

    def test_a_single_allowed_portfolio_is_the_whole_frontier(self):
        prices = window(["AAPL", "MSFT", "JPM", "KO"])
        curve = efficient_frontier(prices, points=3, weight_bounds=(0.25, 0.25))
        self.assertEqual(len(curve["points"]), 3)
        self.assertEqual(curve["corners"], [curve["min_volatility"]])
        assert_allclose(weights(curve["points"][2], prices.columns), np.full(4, 0.25))

    def test_invalid_points_and_bounds_say_what_to_change(self):
        for points in (1, 201, 2.5, True):
            with self.subTest(points=points), self.assertRaisesRegex(
                    OptimizationError, r"points must be an integer within \[2, 200\]"):
                efficient_frontier(window(), points=points)
        with self.assertRaisesRegex(OptimizationError, "weightBounds cannot sum to 1"):
            efficient_frontier(window(["AAPL", "MSFT"]), weight_bounds=(0.0, 0.3))


class CornersTest(unittest.TestCase):

    def active_set(self, portfolio, symbols, bounds):
        w = weights(portfolio, symbols)
        return tuple(np.where(w <= bounds[0] + 1e-9, -1, np.where(w >= bounds[1] - 1e-9, 1, 0)))

    def test_corners_lie_on_the_frontier_and_weights_are_linear_between_them(self):
        prices = window()
        symbols = list(prices.columns)
        for bounds in BOUNDS:
            with self.subTest(bounds=bounds):
                curve = efficient_frontier(prices, points=200, weight_bounds=bounds)
                corners = curve["corners"]
                self.assertGreater(len(corners), 3)
                self.assertEqual(corners[0], curve["min_volatility"])
                assert_allclose(weights(corners[-1], symbols),
                                weights(curve["points"][-1], symbols), rtol=0, atol=1e-9)
                returns = [c["expected_return"] for c in corners]
                self.assertTrue(all(b > a for a, b in zip(returns, returns[1:], strict=False)))
                for corner in corners:
                    exact = optimize(prices, "efficient_return", weight_bounds=bounds,
                                     target_return=corner["expected_return"])
                    assert_allclose(weights(corner, symbols), exact.weights, rtol=0, atol=1e-9)
                # Every point between two consecutive corners is their interpolation
                # in return, and the set of weights at a bound changes at each corner.
                for point in curve["points"]:
                    r = point["expected_return"]
                    k = max(0, min(int(np.searchsorted(returns, r)) - 1, len(corners) - 2))
                    share = (r - returns[k]) / (returns[k + 1] - returns[k])
                    between = ((1 - share) * weights(corners[k], symbols)
                               + share * weights(corners[k + 1], symbols))
                    assert_allclose(weights(point, symbols), between, rtol=0, atol=1e-9)
                # The set of weights at a bound is constant between two corners and
                # changes at each: midway between consecutive pairs it differs.
                middles = []
                for one, other in zip(corners, corners[1:], strict=False):
                    middle = 0.5 * (one["expected_return"] + other["expected_return"])
                    exact = optimize(prices, "efficient_return", weight_bounds=bounds,
                                     target_return=middle)
                    middles.append(self.active_set({"weights": exact.allocations}, symbols,
                                                   bounds))
                for one, other in zip(middles, middles[1:], strict=False):
                    self.assertNotEqual(one, other)

    def test_corners_of_a_two_asset_frontier(self):
        # Two assets: min volatility is interior, and the frontier ends at the
        # better asset alone: two corners.
        prices = window(["KO", "AAPL"])
        curve = efficient_frontier(prices, points=4)
        self.assertEqual(len(curve["corners"]), 2)
        self.assertEqual(curve["corners"][-1]["weights"], {"KO": 0.0, "AAPL": 1.0})
        self.assertTrue(math.isclose(curve["points"][-1]["weights"]["AAPL"], 1.0))


if __name__ == "__main__":
    unittest.main()
