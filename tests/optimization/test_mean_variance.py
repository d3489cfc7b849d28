"""Mean-variance objectives on the shipped sample prices.

Cross-checks against independent methods: a dense grid over the simplex (3 assets),
SciPy SLSQP from many starts, and the closed-form minimum-variance portfolio; plus
KKT checks and pinned values.
"""

import math
import unittest

import numpy as np
import pandas as pd
from numpy.testing import assert_allclose
from scipy.optimize import minimize

from indico.optimization import Objective, optimize
from indico.optimization.data import prepare_prices
from indico.optimization.frontier import Frontier, kkt_residual
from tests.optimization.sample import sample_prices


def window(symbols=None, start="2015-01-01", end="2019-12-31"):
    prices = sample_prices().loc[start:end]
    return prices if symbols is None else prices[list(symbols)]


def sharpe(weights, mu, cov, rf=0.0):
    return (mu @ weights - rf) / math.sqrt(weights @ cov @ weights)


def slsqp_best(fun, n, lower, upper, starts=20, extra=(), seed=0):
    """Best SLSQP optimum of ``fun`` over the bounded simplex from random starts."""
    rng = np.random.default_rng(seed)
    constraints = [{"type": "eq", "fun": lambda w: w.sum() - 1.0}, *extra]
    best = None
    for _ in range(starts):
        start = np.clip(rng.dirichlet(np.ones(n)), lower, upper)
        result = minimize(
            fun, start, method="SLSQP", bounds=[(lower, upper)] * n,
            constraints=constraints, options={"ftol": 1e-15, "maxiter": 2000},
        )
        if result.success and (best is None or result.fun < best.fun):
            best = result
    return best


class MaxSharpeTest(unittest.TestCase):
    def test_three_assets_matches_dense_simplex_grid(self):
        symbols = ("AAPL", "JNJ", "XOM")
        prices = window(symbols)
        data = prepare_prices(prices)
        result = optimize(prices, Objective.MAX_SHARPE)
        # Every portfolio on a 0.001 grid of the simplex.
        steps = 1000
        a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
        keep = a + b <= steps
        grid = np.stack((a[keep], b[keep], steps - a[keep] - b[keep]), axis=1) / steps
        values = (grid @ data.mu) / np.sqrt(np.einsum("ij,jk,ik->i", grid, data.cov, grid))
        best = int(np.argmax(values))
        found = sharpe(result.weights, data.mu, data.cov)
        self.assertGreaterEqual(found, values[best] - 1e-12)
        # The grid's best point is within one grid step of the exact optimum.
        assert_allclose(result.weights, grid[best], atol=1.5e-3)

    def test_capped_twenty_assets_matches_slsqp_multistart(self):
        prices = window()
        data = prepare_prices(prices)
        result = optimize(prices, "max_sharpe", weight_bounds=(0.0, 0.3), risk_free_rate=0.02)
        reference = slsqp_best(
            lambda w: -sharpe(w, data.mu, data.cov, 0.02), 20, 0.0, 0.3, starts=5
        )
        found = sharpe(result.weights, data.mu, data.cov, 0.02)
        self.assertGreaterEqual(found, -reference.fun - 1e-9)
        assert_allclose(result.weights, reference.x, atol=2e-4)
        self.assertLessEqual(result.weights.max(), 0.3 + 1e-12)
        assert_allclose(result.stats["sharpe"], found, rtol=1e-12)

    def test_a_fixed_weight_matches_slsqp(self):
        # BAC fixed at 0.3: its multiplier once bounded the frontier's segments, and
        # max_sharpe stopped at Sharpe 1.475 where 1.854 is reachable.
        prices = window(["BAC", "JNJ", "JPM"], "1991-01-01", "1992-12-31")
        data = prepare_prices(prices)
        bounds = {"BAC": (0.3, 0.3), "JNJ": (0.0, 0.6), "JPM": (0.0, 0.6)}
        result = optimize(prices, "max_sharpe", weight_bounds=bounds, risk_free_rate=0.05)
        rng = np.random.default_rng(0)
        best = None
        for _ in range(10):
            start = np.array([0.3, *rng.dirichlet([1, 1]) * 0.7])
            found = minimize(lambda w: -sharpe(w, data.mu, data.cov, 0.05), start,
                             method="SLSQP", bounds=[(0.3, 0.3), (0, 0.6), (0, 0.6)],
                             constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                             options={"ftol": 1e-15, "maxiter": 2000})
            if found.success and (best is None or found.fun < best.fun):
                best = found
        self.assertAlmostEqual(result.stats["sharpe"], -best.fun, delta=1e-8)
        self.assertEqual(result.allocations["BAC"], 0.3)
        assert_allclose(result.weights, best.x, atol=1e-5)

    def test_kkt_conditions_hold_at_the_frontier_point(self):
        data = prepare_prices(window())
        lower, upper = np.zeros(20), np.full(20, 0.25)
        solver = Frontier(data.mu, data.cov, lower, upper)
        segment, t = solver.solve_by_rule(lambda q0, q2, r0: q0 / r0)
        weights = segment.weights(t)
        self.assertLess(kkt_residual(weights, data.mu, data.cov, lower, upper, t), 1e-12)
        # And the Sharpe ratio is stationary in t along the frontier there.
        assert_allclose(t, segment.variance(t) / segment.expected_return(t), rtol=1e-12)

    def test_guaranteed_walk_agrees_with_fast_path(self):
        data = prepare_prices(window(end="2016-06-30"))
        lower, upper = np.zeros(20), np.full(20, 0.2)
        fast = Frontier(data.mu, data.cov, lower, upper)
        segment, t = fast.solve_by_rule(lambda q0, q2, r0: q0 / r0)
        slow = Frontier(data.mu, data.cov, lower, upper)
        walked, t_walk = slow.walk(
            root=lambda s: s.q0 / s.r0 if s.r0 > 0 else np.inf,
            below=lambda s, t: t * s.expected_return(t) - s.variance(t) < 0,
        )
        assert_allclose(walked.weights(t_walk), segment.weights(t), atol=1e-10)

    def test_cold_start_with_some_assets_free_reaches_the_same_optimum(self):
        data = prepare_prices(window())
        for upper_bound in (1.0, 0.2):
            lower, upper = np.zeros(20), np.full(20, upper_bound)
            plain = Frontier(data.mu, data.cov, lower, upper)
            segment, t = plain.solve_by_rule(lambda q0, q2, r0: q0 / r0)
            for free in (data.mu > 0, np.arange(20) < 3, np.zeros(20, dtype=bool)):
                with self.subTest(upper=upper_bound, free=free.sum()):
                    started = Frontier(data.mu, data.cov, lower, upper)
                    found, at = started.solve_by_rule(lambda q0, q2, r0: q0 / r0,
                                                      cold_free=free)
                    assert_allclose(found.weights(at), segment.weights(t), rtol=0,
                                    atol=1e-14)
                    self.assertLess(kkt_residual(found.weights(at), data.mu, data.cov,
                                                 lower, upper, at), 1e-12)

    def test_markowitz_step_past_each_corner_finds_the_next_segment(self):
        data = prepare_prices(window())
        lower, upper = np.zeros(20), np.full(20, 0.2)
        stepping = Frontier(data.mu, data.cov, lower, upper)
        segment = stepping.solve(0.0)
        stepped = ties = 0
        while np.isfinite(segment.t_hi):
            following = stepping.solve_past(segment.t_hi * (1 + 1e-9) + 1e-12)
            if following is None:
                # Two conditions end the segment at once (here a released asset and
                # the last free one reaching its bound): the step declines.
                ties += 1
                following = stepping.solve(segment.t_hi * (1 + 1e-6))
            else:
                stepped += 1
            assert_allclose(following.t_lo, segment.t_hi, rtol=1e-9)
            # The optimum there, as a cold solve finds it (its working set may differ
            # where the optimum is degenerate: a free weight exactly at a bound).
            for inside in (following.t_lo * (1 + 1e-6), 2.0 * following.t_lo + 1e-3):
                if inside <= following.t_hi:
                    expected = Frontier(data.mu, data.cov, lower, upper).solve(inside)
                    assert_allclose(following.weights(inside), expected.weights(inside),
                                    rtol=0, atol=1e-12)
            segment = following
        self.assertGreater(stepped, 15)
        self.assertLessEqual(ties, 2)
        # The last segment (the maximum-return portfolio) has no end to step past.
        self.assertIsNone(stepping.solve_past(2.0 * segment.t_lo + 1.0))

    def test_bear_market_windows_agree_with_the_guaranteed_walk(self):
        # Windows of 252 trading days in 2008-2010, when most assets lost: the
        # minimum-variance end of the frontier returns less than the risk-free rate and
        # the fast path's guesses can land on working sets where the Sharpe ratio is
        # still rising. 2008-05-30 to 2009-05-29 held JPM alone at the maximum (Sharpe
        # 0.4248); the fast path once stopped at JPM, KO and WMT (0.3377).
        prices = sample_prices()
        for end in pd.date_range("2008-01-31", "2010-12-31", freq="ME"):
            with self.subTest(end=end.date()):
                last = prices.index.get_indexer([end], method="ffill")[0]
                frame = prices.iloc[last - 251:last + 1]
                data = prepare_prices(frame)
                n = len(data.symbols)
                walked, t = Frontier(data.mu, data.cov, np.zeros(n), np.ones(n)).walk(
                    root=lambda s: s.q0 / s.r0 if s.r0 > 0 else np.inf,
                    below=lambda s, t: t * s.expected_return(t) - s.variance(t) < 0)
                expected = walked.w0 if math.isinf(t) else walked.weights(t)
                result = optimize(frame, "max_sharpe")
                weights = np.array([result.allocations[s] for s in data.symbols])
                assert_allclose(weights, expected, atol=1e-9)
                self.assertGreaterEqual(sharpe(weights, data.mu, data.cov),
                                        sharpe(expected, data.mu, data.cov) - 1e-12)
        frame = prices.loc["2008-05-30":"2009-05-29"]
        result = optimize(frame, "max_sharpe")
        self.assertEqual({s: w for s, w in result.allocations.items() if w > 0}, {"JPM": 1.0})
        assert_allclose(result.stats["sharpe"], 0.42476417, rtol=1e-7)

    def test_pinned_values(self):
        result = optimize(window(), "max_sharpe")
        assert_allclose(result.stats["sharpe"], 1.7203901030950215, rtol=1e-9)
        assert_allclose(result.stats["expected_return"], 0.30324681201813636, rtol=1e-9)
        assert_allclose(result.stats["volatility"], 0.17626630813127112, rtol=1e-9)
        allocations = result.allocations
        self.assertEqual(set(allocations), set(window().columns))
        assert_allclose(sum(allocations.values()), 1.0, atol=1e-12)


class MinVolatilityTest(unittest.TestCase):
    def test_matches_closed_form_when_no_bound_binds(self):
        symbols = ("JNJ", "KO", "PG", "WMT")
        prices = window(symbols)
        data = prepare_prices(prices)
        inverse_ones = np.linalg.solve(data.cov, np.ones(4))
        closed_form = inverse_ones / inverse_ones.sum()
        self.assertTrue(np.all(closed_form > 0))
        result = optimize(prices, "min_volatility")
        assert_allclose(result.weights, closed_form, atol=1e-12)

    def test_matches_slsqp_with_binding_bounds(self):
        prices = window()
        data = prepare_prices(prices)
        result = optimize(prices, "min_volatility", weight_bounds=(0.01, 0.15))
        reference = slsqp_best(lambda w: w @ data.cov @ w, 20, 0.01, 0.15, starts=3)
        self.assertLessEqual(result.stats["volatility"] ** 2, reference.fun + 1e-12)
        assert_allclose(result.weights, reference.x, atol=1e-4)
        self.assertGreaterEqual(result.weights.min(), 0.01 - 1e-12)


class TargetsTest(unittest.TestCase):
    def test_efficient_return_hits_target_with_least_volatility(self):
        prices = window()
        data = prepare_prices(prices)
        result = optimize(prices, "efficient_return", target_return=0.22)
        assert_allclose(result.stats["expected_return"], 0.22, rtol=1e-10)
        reference = slsqp_best(
            lambda w: w @ data.cov @ w, 20, 0.0, 1.0, starts=3,
            extra=[{"type": "ineq", "fun": lambda w: data.mu @ w - 0.22}],
        )
        self.assertLessEqual(result.stats["volatility"] ** 2, reference.fun + 1e-10)

    def test_efficient_return_below_minimum_variance_return_gives_min_volatility(self):
        prices = window()
        low = optimize(prices, "efficient_return", target_return=0.05)
        minimum = optimize(prices, "min_volatility")
        assert_allclose(low.weights, minimum.weights, atol=1e-12)

    def test_efficient_risk_hits_target_with_most_return(self):
        prices = window()
        data = prepare_prices(prices)
        result = optimize(prices, "efficient_risk", target_volatility=0.14)
        assert_allclose(result.stats["volatility"], 0.14, rtol=1e-10)
        reference = slsqp_best(
            lambda w: -(data.mu @ w), 20, 0.0, 1.0, starts=3,
            extra=[{"type": "ineq", "fun": lambda w: 0.14**2 - w @ data.cov @ w}],
        )
        self.assertGreaterEqual(result.stats["expected_return"], -reference.fun - 1e-9)

    def test_efficient_risk_above_reach_gives_maximum_return(self):
        prices = window()
        result = optimize(prices, "efficient_risk", target_volatility=5.0)
        data = prepare_prices(prices)
        assert_allclose(result.stats["expected_return"], data.mu.max(), rtol=1e-12)

    def test_max_sharpe_lies_on_the_frontier(self):
        prices = window()
        tangency = optimize(prices, "max_sharpe")
        same_risk = optimize(
            prices, "efficient_risk", target_volatility=tangency.stats["volatility"]
        )
        assert_allclose(same_risk.weights, tangency.weights, atol=1e-7)


class OtherObjectivesTest(unittest.TestCase):
    def test_risk_parity_equalises_risk_contributions(self):
        prices = window()
        data = prepare_prices(prices)
        weights = optimize(prices, "risk_parity").weights
        contributions = weights * (data.cov @ weights) / (weights @ data.cov @ weights)
        assert_allclose(contributions, np.full(20, 1 / 20), atol=1e-10)

    def test_risk_parity_within_caps_budgets_risk_equally_among_free_assets(self):
        prices = window(("JNJ", "KO", "PG", "AMD"))
        data = prepare_prices(prices)
        unconstrained = optimize(prices, "risk_parity").weights
        self.assertGreater(unconstrained.max(), 0.3)
        weights = optimize(prices, "risk_parity", weight_bounds=(0.0, 0.3)).weights
        assert_allclose(weights.sum(), 1.0, atol=1e-12)
        self.assertLessEqual(weights.max(), 0.3 + 1e-12)
        contributions = weights * (data.cov @ weights)
        capped = weights >= 0.3 - 1e-12
        self.assertTrue(capped.any() and not capped.all())
        free = contributions[~capped]
        assert_allclose(free, free[0], rtol=1e-8)
        # A capped asset would like more weight: it contributes less than the others.
        self.assertTrue(np.all(contributions[capped] < free[0]))

    def test_equal_weight(self):
        result = optimize(window(), "equal_weight")
        assert_allclose(result.weights, np.full(20, 0.05), atol=1e-15)

    def test_equal_weight_respects_per_symbol_bounds(self):
        result = optimize(window(), "equal_weight", weight_bounds={"AAPL": (0.2, 0.3)})
        self.assertAlmostEqual(result.allocations["AAPL"], 0.2, places=12)
        assert_allclose(result.weights.sum(), 1.0, atol=1e-12)


if __name__ == "__main__":
    unittest.main()
