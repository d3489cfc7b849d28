"""buy_and_hold_sharpe: its gradient and Hessian, global search and the seed's algorithm.

The global search is cross-checked against many random-start SLSQP runs (with the
analytic gradient) on windows of the sample data known to have several local
maxima, and against a re-implementation of the seed (SLSQP from 1/n).
"""

import unittest

import numpy as np
from numpy.testing import assert_allclose
from scipy.optimize import minimize

from indico.optimization import optimize
from indico.optimization.buy_and_hold import BuyAndHoldSharpe, local_maximum
from indico.optimization.simplex import project_to_bounded_simplex
from tests.optimization.sample import sample_prices


def slsqp(problem, start, upper=1.0):
    """Local SLSQP maximisation of the buy-and-hold Sharpe (analytic gradient)."""
    n = problem.n

    def negative(w):
        return -problem.value(w), -problem.gradient(w)

    result = minimize(
        negative, start, jac=True, method="SLSQP", bounds=[(0.0, upper)] * n,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                      "jac": lambda w: np.ones(n)}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    return -result.fun


class DerivativesTest(unittest.TestCase):
    def test_gradient_and_hessian_match_finite_differences(self):
        prices = sample_prices().loc["2015":"2019"].to_numpy()
        problem = BuyAndHoldSharpe(prices, risk_free_rate=0.02)
        rng = np.random.default_rng(1)
        weights = rng.dirichlet(np.ones(20))
        direction = rng.normal(size=20)
        gradient, hessian = problem.gradient(weights), problem.hessian(weights)
        h = 1e-6
        numeric = (problem.value(weights + h * direction)
                   - problem.value(weights - h * direction)) / (2 * h)
        assert_allclose(gradient @ direction, numeric, rtol=1e-6)
        plus = problem.gradient(weights + h * direction)
        minus = problem.gradient(weights - h * direction)
        assert_allclose(hessian @ direction, (plus - minus) / (2 * h), rtol=1e-4, atol=1e-4)
        block = np.array([2, 5, 7])
        assert_allclose(problem.hessian(weights, block), hessian[np.ix_(block, block)],
                        rtol=1e-12)

    def test_projection_onto_bounded_simplex(self):
        lower, upper = np.zeros(5), np.full(5, 0.3)
        point = np.array([0.9, 0.5, -0.2, 0.1, 0.05])
        projected = project_to_bounded_simplex(point, lower, upper)
        assert_allclose(projected.sum(), 1.0, atol=1e-15)
        self.assertTrue(np.all(projected >= 0) and np.all(projected <= 0.3))
        # Optimality of a Euclidean projection: point - projected = tau on free entries.
        free = (projected > 0) & (projected < 0.3)
        shift = (point - projected)[free]
        assert_allclose(shift, shift[0], atol=1e-12)


class GlobalSearchTest(unittest.TestCase):
    def check_against_random_starts(self, prices, starts, seed=7):
        result = optimize(prices, "buy_and_hold_sharpe")
        problem = BuyAndHoldSharpe(prices.to_numpy())
        rng = np.random.default_rng(seed)
        n = prices.shape[1]
        best_random = max(
            slsqp(problem, rng.dirichlet(np.full(n, 0.5))) for _ in range(starts)
        )
        seed_value = slsqp(problem, np.full(n, 1.0 / n))
        found = result.portfolio["sharpe"]
        self.assertGreaterEqual(found, best_random - 1e-9)
        self.assertGreaterEqual(found, seed_value - 1e-9)
        assert_allclose(found, problem.value(result.weights), rtol=1e-12)
        return found, best_random, seed_value

    def test_twenty_assets_twenty_years_finds_rare_basin(self):
        # Only ~2 % of random starts reach the global maximum here, and the seed's
        # start (1/n) ends at a worse local maximum (0.8403).
        prices = sample_prices().iloc[250:5250]
        found, _, seed_value = self.check_against_random_starts(prices, starts=40)
        assert_allclose(found, 0.8566800586, rtol=1e-8)
        self.assertGreater(found, seed_value + 0.01)

    def test_five_assets_thirty_years_beats_seed(self):
        prices = sample_prices().iloc[73:8073][["WMT", "XOM", "BBY", "RRC", "KO"]]
        found, _, seed_value = self.check_against_random_starts(prices, starts=60)
        assert_allclose(found, 0.6762963187, rtol=1e-8)
        self.assertGreater(found, seed_value + 0.01)

    def test_vertex_optimum(self):
        # The global maximum is a single stock (JPM).
        prices = sample_prices().iloc[2296:7296][["PFE", "JPM", "MRK", "KO", "LLY"]]
        found, _, _ = self.check_against_random_starts(prices, starts=60)
        result = optimize(prices, "buy_and_hold_sharpe")
        assert_allclose(result.allocations["JPM"], 1.0, atol=1e-12)
        assert_allclose(found, 0.3545657, rtol=1e-6)

    def test_five_year_window_pinned(self):
        prices = sample_prices().loc["2015":"2019"]
        found, _, seed_value = self.check_against_random_starts(prices, starts=10)
        assert_allclose(found, 1.5554986728, rtol=1e-9)
        assert_allclose(found, seed_value, rtol=1e-8)

    def test_capped_weights_and_risk_free_rate(self):
        prices = sample_prices().loc["2010":"2014"]
        result = optimize(prices, "buy_and_hold_sharpe", weight_bounds=(0.0, 0.2),
                          risk_free_rate=0.01)
        self.assertLessEqual(result.weights.max(), 0.2 + 1e-12)
        assert_allclose(result.weights.sum(), 1.0, atol=1e-12)
        problem = BuyAndHoldSharpe(prices.to_numpy(), 0.01)
        rng = np.random.default_rng(3)
        lower, upper = np.zeros(20), np.full(20, 0.2)
        for _ in range(10):
            start = project_to_bounded_simplex(rng.dirichlet(np.ones(20)), lower, upper)
            _, value = local_maximum(problem, start, lower, upper)
            self.assertGreaterEqual(result.portfolio["sharpe"], value - 1e-9)


if __name__ == "__main__":
    unittest.main()
