"""hrp, min_cvar, inverse_volatility, max_diversification, and the new statistics.

HRP against a 4-asset case worked by hand (with and without a binding bound) and
against the bisection written out recursively, cluster by cluster;
min_cvar against an independent LP (another formulation, another HiGHS algorithm),
weights included once a third LP certifies that they are unique, and the sorted-loss
closed form of CVaR; the other two against closed forms and multi-start SLSQP;
risk contributions against risk parity's equal shares.
"""

import math
import unittest

import numpy as np
from numpy.testing import assert_allclose
from scipy import sparse
from scipy.optimize import linprog, minimize

from indico.error import OptimizationError
from indico.optimization import Objective, optimize
from indico.optimization.cvar import historical_cvar, min_cvar_weights, risk_contributions
from indico.optimization.data import prepare_prices
from indico.optimization.hrp import ONE_PRODUCT_MAX, hrp_weights, quasi_diagonal_order
from indico.optimization.simplex import project_to_bounded_simplex
from tests.optimization.sample import sample_prices

SYMBOLS = ["AAPL", "JNJ", "XOM", "MSFT", "KO", "WMT"]


def window(start="2015-01-01", end="2019-12-31", symbols=SYMBOLS):
    return sample_prices().loc[start:end, list(symbols)]


def hand_covariance():
    """Inputs in the order A, C, B, D: A~B correlate 0.8 and C~D 0.6; the rest weakly."""
    vol = {"A": 0.1, "B": 0.2, "C": 0.3, "D": 0.4}
    rho = {("A", "B"): 0.8, ("C", "D"): 0.6, ("A", "C"): 0.2, ("A", "D"): 0.1,
           ("B", "C"): 0.15, ("B", "D"): 0.05}
    names = ["A", "C", "B", "D"]
    cov = np.empty((4, 4))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            r = 1.0 if a == b else rho.get((a, b), rho.get((b, a)))
            cov[i, j] = r * vol[a] * vol[b]
    return cov


def recursive_hrp(cov, order, lower, upper):
    """HRP weights by the module docstring's bisection, one cluster at a time."""
    weights = np.zeros(len(order))

    def variance(cluster):
        block = cov[np.ix_(cluster, cluster)]
        inverse = 1.0 / np.diag(block)
        inverse /= inverse.sum()
        return inverse @ block @ inverse

    def cut(cluster, total):
        if len(cluster) == 1:
            weights[cluster[0]] = total
            return
        left, right = cluster[:len(cluster) // 2], cluster[len(cluster) // 2:]
        alpha = 1.0 - variance(left) / (variance(left) + variance(right))
        low = max(lower[left].sum(), total - upper[right].sum())
        high = min(upper[left].sum(), total - lower[right].sum())
        share = min(max(alpha * total, low), high)
        cut(left, share)
        cut(right, total - share)

    cut(list(order), 1.0)
    return weights


class HierarchicalRiskParityTest(unittest.TestCase):
    # By hand: cluster {A, B}: inverse-variance weights (100, 25)/125 = (0.8, 0.2),
    # V = 0.64·0.01 + 0.04·0.04 + 2·0.8·0.2·(0.8·0.1·0.2) = 0.01312; cluster {C, D}:
    # (1/0.09, 1/0.16) normalised = (0.64, 0.36), V = 0.4096·0.09 + 0.1296·0.16
    # + 2·0.64·0.36·(0.6·0.3·0.4) = 0.0907776. {A, B} gets 1 - 0.01312/0.1038976;
    # inside it A gets 1 - 0.01/0.05 = 0.8, inside {C, D} C gets 1 - 0.09/0.25 = 0.64.
    ALPHA = 0.0907776 / 0.1038976

    def test_four_assets_by_hand(self):
        cov = hand_covariance()
        self.assertEqual(quasi_diagonal_order(cov), [0, 2, 1, 3])  # A, B, C, D
        weights = hrp_weights(cov, np.zeros(4), np.ones(4))
        a = self.ALPHA
        # Input order A, C, B, D.
        assert_allclose(weights, [0.8 * a, 0.64 * (1 - a), 0.2 * a, 0.36 * (1 - a)],
                        rtol=1e-14)

    def test_four_assets_by_hand_with_a_binding_cap(self):
        cov = hand_covariance()
        weights = hrp_weights(cov, np.zeros(4), np.full(4, 0.5))
        a = self.ALPHA  # 0.8737...: {A, B} can hold it (caps total 1.0).
        # A would get 0.8·a = 0.699 > 0.5: it gets the cap, B the rest of a.
        assert_allclose(weights, [0.5, 0.64 * (1 - a), a - 0.5, 0.36 * (1 - a)],
                        rtol=1e-14)

    def test_a_floor_moves_weight_down_the_tree(self):
        cov = hand_covariance()
        lower = np.array([0.0, 0.0, 0.0, 0.2])  # D at least 0.2
        weights = hrp_weights(cov, lower, np.ones(4))
        # {C, D} needs at least 0.2 and gets 1 - a = 0.126 unbounded: the cut moves.
        a = 1 - 0.2
        assert_allclose(weights, [0.8 * a, 0.0, 0.2 * a, 0.2], atol=1e-15)

    def test_every_cluster_as_the_recursive_bisection_weighs_it(self):
        # hrp_weights computes every cluster's variance at once; here each cut is
        # computed on its own, as the module docstring states it, for sizes that
        # split evenly and unevenly, with and without binding bounds.
        prices = sample_prices()
        rng = np.random.default_rng(13)
        for n in (2, 3, 5, 8, 13, 20):
            symbols = list(rng.choice(prices.columns, n, replace=False))
            cov = prepare_prices(prices.loc["2012":"2016", symbols]).cov
            order = quasi_diagonal_order(cov)
            for lower, upper in ((np.zeros(n), np.ones(n)),
                                 (np.zeros(n), np.full(n, 1.5 / n)),
                                 (np.full(n, 0.5 / n), np.ones(n))):
                expected = recursive_hrp(cov, order, lower, upper)
                with self.subTest(n=n, lower=lower[0], upper=upper[0]):
                    assert_allclose(hrp_weights(cov, lower, upper), expected,
                                    rtol=1e-13, atol=1e-15)

    def test_many_assets_weigh_each_cut_on_its_blocks_as_the_recursion(self):
        # Above hrp.ONE_PRODUCT_MAX assets the clusters are weighed cut by cut.
        rng = np.random.default_rng(5)
        n = ONE_PRODUCT_MAX + 3
        factors = rng.normal(size=(n, 4))
        cov = 0.04 * (factors @ factors.T / 4 + np.diag(rng.uniform(0.5, 1.5, n)))
        order = quasi_diagonal_order(cov)
        for lower, upper in ((np.zeros(n), np.ones(n)), (np.zeros(n), np.full(n, 1.5 / n))):
            with self.subTest(upper=upper[0]):
                assert_allclose(hrp_weights(cov, lower, upper),
                                recursive_hrp(cov, order, lower, upper), rtol=1e-12,
                                atol=1e-15)

    def test_one_asset_gets_everything(self):
        assert_allclose(optimize(window(symbols=["KO"]), "hrp").weights, [1.0])

    def test_engine_hrp_on_the_sample_within_bounds(self):
        prices = window()
        data = prepare_prices(prices)
        plain = optimize(prices, "hrp")
        assert_allclose(plain.weights, hrp_weights(data.cov, np.zeros(6), np.ones(6)),
                        rtol=1e-12)
        capped = optimize(prices, "hrp", weight_bounds=(0.05, 0.25))
        self.assertTrue(np.all(capped.weights >= 0.05 - 1e-12))
        self.assertTrue(np.all(capped.weights <= 0.25 + 1e-12))
        assert_allclose(capped.weights.sum(), 1.0, atol=1e-12)
        self.assertGreater(plain.weights.max(), 0.25)


def independent_min_cvar(returns, lower, upper, level):
    """min_cvar as another LP: L_t - a = p_t - m_t, p, m >= 0, by HiGHS's interior point."""
    count, n = returns.shape
    # Variables: w (n), a (1), p (T), m (T).
    cost = np.concatenate((np.zeros(n), [1.0], np.full(count, 1 / ((1 - level) * count)),
                           np.zeros(count)))
    eye = sparse.identity(count)
    equality = sparse.vstack((
        sparse.hstack((sparse.csr_matrix(-returns), sparse.csr_matrix(-np.ones((count, 1))),
                       -eye, eye)),
        sparse.csr_matrix(np.concatenate((np.ones(n), np.zeros(1 + 2 * count)))[None, :]),
    ), format="csr")
    rhs = np.concatenate((np.zeros(count), [1.0]))
    bounds = [*zip(lower, upper, strict=True), (None, None)] + [(0, None)] * (2 * count)
    solution = linprog(cost, A_eq=equality, b_eq=rhs, bounds=bounds, method="highs-ipm")
    assert solution.status == 0, solution.message
    return solution.x[:n], solution.fun


def optimal_weight_spread(returns, lower, upper, level, ceiling):
    """Per asset, max w_i - min w_i over the portfolios whose CVaR is at most ``ceiling``.

    The primal LP of indico.optimization.cvar in (w, a, u), its objective made a row
    ``<= ceiling``, maximised and minimised in each w_i by HiGHS's dual simplex with
    feasibility tolerances 1e-10. As a function of the ceiling each maximum is concave
    and each minimum convex (LP values in a right-hand side), so the spread is concave.
    """
    count, n = returns.shape
    cost = np.concatenate((np.zeros(n), [1.0], np.full(count, 1 / ((1 - level) * count))))
    inequality = sparse.vstack((
        sparse.hstack((sparse.csr_matrix(-returns), sparse.csr_matrix(-np.ones((count, 1))),
                       -sparse.identity(count))),
        sparse.csr_matrix(cost[None, :]),
    ), format="csr")
    limits = np.concatenate((np.zeros(count), [ceiling]))
    budget = np.concatenate((np.ones(n), np.zeros(1 + count)))[None, :]
    bounds = [*zip(lower, upper, strict=True), (None, None)] + [(0, None)] * count
    options = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    spread = np.empty(n)
    for i in range(n):
        extremes = []
        for sign in (1.0, -1.0):
            direction = np.zeros(n + 1 + count)
            direction[i] = sign
            solution = linprog(direction, A_ub=inequality, b_ub=limits, A_eq=budget, b_eq=[1.0],
                               bounds=bounds, method="highs-ds", options=options)
            assert solution.status == 0, solution.message
            extremes.append(solution.x[i])
        spread[i] = extremes[1] - extremes[0]
    return spread


class MinimumCVaRTest(unittest.TestCase):
    def test_historical_cvar_by_hand(self):
        returns = np.array([0.01, -0.05, 0.02, -0.03])
        assert_allclose(historical_cvar(returns, 0.5), 0.04, rtol=1e-15)  # worst 2 days
        # 0.6: k = 1.6 worst days, all of -5 % and 0.6 of -3 %.
        assert_allclose(historical_cvar(returns, 0.6), (0.05 + 0.6 * 0.03) / 1.6, rtol=1e-15)
        # k < 1: the worst day.
        assert_allclose(historical_cvar(returns, 0.9), 0.05, rtol=1e-15)

    def test_historical_cvar_is_the_rockafellar_uryasev_minimum(self):
        returns = prepare_prices(window()).returns @ np.full(6, 1 / 6)
        losses = -returns
        level = 0.95
        # The minimum over a is reached at one of the losses (piecewise linear, convex).
        values = [a + np.maximum(losses - a, 0).sum() / ((1 - level) * losses.size)
                  for a in losses]
        assert_allclose(historical_cvar(returns, level), min(values), rtol=1e-12)

    def test_min_cvar_matches_an_independent_lp(self):
        prices = window("2016-01-01", "2019-12-31")
        returns = prepare_prices(prices).returns
        for level, bounds in ((0.95, (0.0, 1.0)), (0.99, (0.0, 0.3)), (0.6, (0.1, 0.4))):
            with self.subTest(level=level, bounds=bounds):
                lower, upper = np.full(6, bounds[0]), np.full(6, bounds[1])
                weights, optimum = independent_min_cvar(returns, lower, upper, level)
                result = optimize(prices, "min_cvar", cvar_level=level, weight_bounds=bounds)
                self.assertTrue(np.all(result.weights >= lower - 1e-12))
                self.assertTrue(np.all(result.weights <= upper + 1e-12))
                assert_allclose(result.stats["cvar"], optimum, rtol=1e-8)
                assert_allclose(historical_cvar(returns @ result.weights, level), optimum,
                                rtol=1e-8)
                # The optimal weights are unique here, so the two LPs must agree on
                # them: the spread s(e) of the weights with CVaR <= optimum + e is
                # concave in e, so s(0) <= (s(e) - s(10 e) / 10) / 0.9, which is 0
                # when s grows linearly from e to 10 e (it does: about 1e3 e here).
                slack = 1e-9 * abs(optimum)
                near = optimal_weight_spread(returns, lower, upper, level, optimum + slack)
                far = optimal_weight_spread(returns, lower, upper, level, optimum + 10 * slack)
                self.assertGreater(near.max(), 1e-9)  # well above the solver's tolerances
                self.assertTrue(np.all((near - far / 10) / 0.9 <= 1e-9))
                assert_allclose(result.weights, weights, atol=1e-9)

    def test_min_cvar_beats_the_other_objectives_on_cvar(self):
        prices = window()
        best = optimize(prices, "min_cvar").stats["cvar"]
        for objective in ("min_volatility", "hrp", "equal_weight", "max_diversification"):
            with self.subTest(objective=objective):
                self.assertGreaterEqual(optimize(prices, objective).stats["cvar"],
                                        best - 1e-12)

    def test_a_failed_lp_says_what_to_change(self):
        # Bounds that cannot sum to 1 make the LP infeasible; the engine's own check
        # refuses them first, so call the solver directly.
        returns = prepare_prices(window()).returns
        with self.assertRaises(OptimizationError) as caught:
            min_cvar_weights(returns, np.zeros(6), np.full(6, 0.1))
        self.assertIn("min_cvar: the linear program was not solved", str(caught.exception))
        self.assertIn("widen weightBounds", str(caught.exception))

    def test_cvar_level_out_of_range_is_refused(self):
        for level in (0.49, 0.9995, float("nan")):
            with self.subTest(level=level):
                with self.assertRaises(OptimizationError) as caught:
                    optimize(window(), "min_cvar", cvar_level=level)
                self.assertIn("cvarLevel", str(caught.exception))


class InverseVolatilityTest(unittest.TestCase):
    def test_unbounded_is_one_over_sigma_normalised(self):
        prices = window()
        sigma = np.sqrt(np.diag(prepare_prices(prices).cov))
        result = optimize(prices, "inverse_volatility")
        assert_allclose(result.weights, (1 / sigma) / (1 / sigma).sum(), rtol=1e-12)

    def test_bounded_is_the_projection(self):
        prices = window()
        sigma = np.sqrt(np.diag(prepare_prices(prices).cov))
        raw = (1 / sigma) / (1 / sigma).sum()
        lower, upper = np.full(6, 0.1), np.full(6, 0.2)
        self.assertTrue(np.any(raw > 0.2) or np.any(raw < 0.1))
        result = optimize(prices, "inverse_volatility", weight_bounds=(0.1, 0.2))
        assert_allclose(result.weights, project_to_bounded_simplex(raw, lower, upper),
                        atol=1e-12)
        # The projection is clip(raw - tau): assets strictly inside moved equally.
        inside = (result.weights > 0.1 + 1e-9) & (result.weights < 0.2 - 1e-9)
        shifts = (raw - result.weights)[inside]
        assert_allclose(shifts, shifts[0], atol=1e-12)


def diversification_ratio(weights, cov):
    return float(np.sqrt(np.diag(cov)) @ weights / math.sqrt(weights @ cov @ weights))


class MaxDiversificationTest(unittest.TestCase):
    def test_interior_solution_is_the_closed_form(self):
        # For these four the budget-only optimum Σ^-1 σ / 1'Σ^-1 σ is positive.
        prices = window(symbols=["AAPL", "AMD", "BAC", "BBY"])
        cov = prepare_prices(prices).cov
        raw = np.linalg.solve(cov, np.sqrt(np.diag(cov)))
        self.assertTrue(np.all(raw > 0))
        result = optimize(prices, "max_diversification")
        assert_allclose(result.weights, raw / raw.sum(), atol=1e-10)

    def test_bounded_beats_multistart_slsqp(self):
        prices = window()
        cov = prepare_prices(prices).cov
        result = optimize(prices, "max_diversification", weight_bounds=(0.0, 0.3))
        found = diversification_ratio(result.weights, cov)
        rng = np.random.default_rng(1)
        for _ in range(10):
            start = project_to_bounded_simplex(rng.dirichlet(np.ones(6)), np.zeros(6),
                                               np.full(6, 0.3))
            other = minimize(lambda w: -diversification_ratio(w, cov), start, method="SLSQP",
                             bounds=[(0, 0.3)] * 6,
                             constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                             options={"ftol": 1e-14, "maxiter": 1000})
            if other.success:
                self.assertGreaterEqual(found, -other.fun - 1e-9)
        self.assertTrue(np.all(result.weights <= 0.3 + 1e-12))

    def test_a_single_allowed_portfolio(self):
        result = optimize(window(symbols=["AAPL", "KO"]), "max_diversification",
                          weight_bounds={"AAPL": (0.3, 0.3), "KO": (0.7, 0.7)})
        assert_allclose(result.weights, [0.3, 0.7])


class StatisticsTest(unittest.TestCase):
    def test_risk_contributions_sum_to_one_and_are_equal_for_risk_parity(self):
        prices = window()
        result = optimize(prices, Objective.RISK_PARITY)
        contributions = result.stats["risk_contributions"]
        self.assertEqual(list(contributions), SYMBOLS)
        assert_allclose(list(contributions.values()), np.full(6, 1 / 6), rtol=1e-9)
        for objective in ("max_sharpe", "hrp", "min_cvar"):
            with self.subTest(objective=objective):
                shares = optimize(prices, objective).stats["risk_contributions"]
                assert_allclose(sum(shares.values()), 1.0, rtol=1e-12)

    def test_risk_contributions_of_zero_variance_are_zero(self):
        assert_allclose(risk_contributions(np.array([1.0, 0.0]), np.zeros((2, 2))), [0, 0])

    def test_cvar_stat_is_the_daily_historical_cvar_at_the_level(self):
        prices = window()
        returns = prepare_prices(prices).returns
        for level in (0.95, 0.99):
            with self.subTest(level=level):
                result = optimize(prices, "min_volatility", cvar_level=level)
                assert_allclose(result.stats["cvar"],
                                historical_cvar(returns @ result.weights, level), rtol=1e-14)
