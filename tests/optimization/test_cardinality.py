"""maxAssets (cardinality): the branch and bound against brute-force enumeration of subsets,
the time limit with an injected clock, the refusals and the stats, on the pinned sample.

Values compared are ``f`` of :mod:`indico.optimization.cardinality` (minimised): the
volatility for ``min_volatility``, minus the Sharpe ratio for ``max_sharpe``.
"""

import dataclasses
import itertools
import json
import math
import unittest

import numpy as np
from numpy.testing import assert_array_equal

from indico.error import OptimizationError
from indico.optimization import cardinality, engine, optimize
from indico.optimization.cardinality import Goal
from indico.optimization.data import prepare_prices
from indico.optimization.estimators import estimate
from indico.optimization.frontier import kkt_residual
from tests.optimization.sample import sample_prices

RATE = 0.02

#: Relative agreement between the search and brute force. Both solve each subset with
#: the engine's exact active-set QP (closed form on the final working set), the search
#: on submatrices of the window's μ and Σ, brute force on moments re-estimated from the
#: subset's prices: the same numbers up to summation order, so equal optima agree to
#: about 1e-14. The search prunes nodes within OPTIMALITY_TOLERANCE (1e-10 relative) of
#: its incumbent, so its answer may be that much worse than the best subset; 1e-9 leaves
#: room for both and is far below what a wrong subset or a wrong bound costs (the cases
#: a broken relaxation produced were 1e-1 off).
AGREEMENT = 1e-9

FULL = (0.0, 1.0)
#: Semi-continuous: a held asset weighs at least 0.15, so at most six are held.
SEMI = (0.15, 1.0)
#: Semi-continuous and capped: two to ten assets held.
SEMI_CAPPED = (0.1, 0.5)
#: Capped: four assets held at least. It binds (the optima without maxAssets put 0.25 to
#: 0.96 in their largest weight on the windows below, and fewer assets weigh more).
CAPPED = (0.0, 0.3)
BOUNDS = (FULL, SEMI, SEMI_CAPPED, CAPPED)


def window(start, end, symbols):
    return sample_prices().loc[start:end, list(symbols)]


def value(result, goal):
    """``f`` of the result's weights, from its statistics."""
    if Goal(goal) is Goal.MIN_VOLATILITY:
        return result.stats["volatility"]
    return -result.stats["sharpe"]


def fits(size, bounds):
    """Whether ``size`` assets can hold shared ``bounds`` and the budget."""
    low, high = bounds
    return size * low <= 1.0 + 1e-12 and size * high >= 1.0 - 1e-12


def brute_force(prices, goal, bounds, most, rate=RATE):
    """Best ``(value, symbols)`` by subset size, each subset solved on its own.

    Every subset S of at most ``most`` symbols is optimised by the plain engine on
    ``prices[S]`` with ``bounds`` for each of its assets (the lower bound applying to S);
    a size that cannot hold the bounds is skipped, and for ``max_sharpe`` so is a
    subset with no portfolio above the risk-free rate.

    Returns:
        ``{size: (value, symbols)}`` for the sizes with a portfolio.
    """
    best = {}
    for size in range(1, most + 1):
        if not fits(size, bounds):
            continue
        for subset in itertools.combinations(prices.columns, size):
            try:
                result = optimize(prices[list(subset)], goal, weight_bounds=bounds,
                                  risk_free_rate=rate)
            except OptimizationError as e:
                if goal == "max_sharpe" and str(e).startswith(
                        "max_sharpe needs a portfolio whose expected return exceeds"):
                    continue
                raise
            found = (value(result, goal), subset)
            best[size] = min(best.get(size, found), found)
    return best


class BruteForceTest(unittest.TestCase):
    """The search's optimum is the best subset's, for every k, goal and kind of bounds."""

    def check(self, prices, max_assets_values, bounds_values=BOUNDS,
              goals=("max_sharpe", "min_volatility"), rate=RATE):
        for goal, bounds in itertools.product(goals, bounds_values):
            best = brute_force(prices, goal, bounds, max(max_assets_values), rate)
            for k in max_assets_values:
                with self.subTest(goal=goal, bounds=bounds, k=k):
                    self.check_one(prices, goal, bounds, k, best, rate)

    def check_one(self, prices, goal, bounds, k, best, rate):
        n = prices.shape[1]
        low, high = bounds
        candidates = [found for size, found in best.items() if size <= k]
        if not candidates:
            with self.assertRaises(OptimizationError) as raised:
                optimize(prices, goal, weight_bounds=bounds, risk_free_rate=rate,
                         max_assets=k)
            problem = cardinality.bounds_problem([low] * n, [high] * n, k)
            if problem is None:
                # Sizes that fit exist, but no subset beats the rate (max_sharpe only).
                self.assertEqual(goal, "max_sharpe")
                self.assertTrue(str(raised.exception).startswith(
                    f"max_sharpe needs a portfolio whose expected return exceeds riskFreeRate "
                    f"({rate:.4%}); none of at most {k} assets"), raised.exception)
            else:
                self.assertEqual(str(raised.exception), problem)
            return
        optimum, symbols = min(candidates)
        result = optimize(prices, goal, weight_bounds=bounds, risk_free_rate=rate,
                          max_assets=k)
        self.assertLessEqual(abs(value(result, goal) - optimum), AGREEMENT * abs(optimum),
                             (value(result, goal), optimum, symbols, result.allocations))
        held = result.weights[result.weights != 0]
        self.assertLessEqual(held.size, k)
        self.assertTrue(np.all(held >= low) and np.all(held <= high), result.allocations)
        self.assertAlmostEqual(float(result.weights.sum()), 1.0, delta=1e-12)
        self.assertIs(result.stats["optimal"], True)
        self.assertEqual(result.stats["gap"], 0.0)

    def test_four_assets(self):
        self.check(window("2015-01-01", "2019-12-31", ["AAPL", "JNJ", "KO", "XOM"]),
                   range(1, 5))

    def test_six_assets_in_the_crisis(self):
        # 2007-2011: BAC and GE lost money, PFE returned 4.7 % a year.
        self.check(window("2007-01-01", "2011-12-31",
                          ["BAC", "GE", "JPM", "MRK", "PFE", "WMT"]), range(1, 7))

    def test_eight_assets(self):
        self.check(window("1995-01-01", "1999-12-31",
                          ["GE", "HD", "JNJ", "JPM", "KO", "LLY", "MRK", "MSFT"]), range(1, 9))

    def test_ten_assets(self):
        # Two kinds of bounds only, to keep the run short (1023 subsets a goal and bounds).
        self.check(window("2010-01-01", "2014-12-31",
                          ["AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO", "LLY"]),
                   range(1, 11), (SEMI, CAPPED))

    def test_twelve_assets_with_a_few_limits(self):
        # 12 assets: subsets of up to four only (793 solves a goal and bounds), k = 3
        # and 4 (with CAPPED, 3 is refused: three assets of at most 0.3 total 0.9).
        self.check(window("2016-01-01", "2020-12-31", sample_prices().columns[:12]), (3, 4),
                   (FULL, SEMI_CAPPED, CAPPED))

    def test_max_sharpe_with_caps_and_a_high_rate(self):
        # Relaxations here have working sets whose return falls short of rf = 0.05, where
        # the max-Sharpe solver once accepted a frontier point at a guessed risk tolerance:
        # the bounds were too low, and the subsets holding the optimum were pruned (Sharpe
        # 1.17 for 1.54, 1.07 for 1.23).
        self.check(window("2004-01-01", "2005-12-31", ["KO", "LLY", "RRC", "WMT"]),
                   range(1, 5), ((0.0, 0.5),), ("max_sharpe",), rate=0.05)
        self.check(window("1993-01-01", "1994-12-31", ["AAPL", "BAC", "BBY", "GE", "PEP", "RRC"]),
                   range(1, 7), ((0.0, 0.6), (0.1, 0.6)), ("max_sharpe",), rate=0.05)

    def test_without_a_lower_bound_a_limit_of_n_or_more_is_the_plain_problem(self):
        prices = window("2015-01-01", "2019-12-31", sample_prices().columns[:8])
        for goal, bounds, k in itertools.product(("max_sharpe", "min_volatility"),
                                                 (FULL, CAPPED), (8, 11)):
            with self.subTest(goal=goal, bounds=bounds, k=k):
                plain = optimize(prices, goal, weight_bounds=bounds, risk_free_rate=RATE)
                limited = optimize(prices, goal, weight_bounds=bounds, risk_free_rate=RATE,
                                   max_assets=k)
                assert_array_equal(limited.weights, plain.weights)
                self.assertEqual(limited.stats, {**plain.stats, "optimal": True, "gap": 0.0})

    def test_equal_bounds_hold_exactly_that_many_assets(self):
        # (0.25, 0.25): every asset held weighs 0.25, so four are held. The frontier once
        # let the fixed assets' multipliers cut its segments short, and this search
        # ended with "efficient-frontier search did not converge".
        prices = window("1995-01-01", "1996-12-31", sample_prices().columns[:8])
        data = prepare_prices(prices)
        for k in (5, 8):
            with self.subTest(k=k):
                result = optimize(prices, "max_sharpe", weight_bounds=(0.25, 0.25),
                                  risk_free_rate=0.05, max_assets=k)
                best = max(
                    (float(data.mu[list(held)].mean()) - 0.05)
                    / math.sqrt(float(data.cov[np.ix_(held, held)].mean()))
                    for held in itertools.combinations(range(8), 4))
                self.assertAlmostEqual(result.stats["sharpe"], best, delta=1e-9 * best)
                self.assertEqual(sorted(set(result.weights.round(12))), [0.0, 0.25])
                self.assertIs(result.stats["optimal"], True)

    def test_the_max_sharpe_relaxation_is_exact_under_a_cap(self):
        # The search bounds nodes by the plain max_sharpe optimum, so it must be the true
        # maximum. Here the engine used to return a frontier point at a guessed risk
        # tolerance (Sharpe 0.255 instead of 0.757); the certificate is the KKT condition
        # of the frontier problem at t = σ² / (r - rf) (max-Sharpe optimality).
        prices = window("2004-01-01", "2005-12-31", ["AMD", "KO", "WMT"])
        result = optimize(prices, "max_sharpe", weight_bounds=(0.0, 0.6), risk_free_rate=0.05)
        data = prepare_prices(prices)
        w = result.weights
        variance, excess = float(w @ data.cov @ w), float(data.mu @ w) - 0.05
        residual = kkt_residual(w, data.mu, data.cov, np.zeros(3), np.full(3, 0.6),
                                variance / excess)
        self.assertLess(residual, 1e-10 * float(np.abs(data.cov).max()))
        # ... and no vertex of the capped simplex (0.6, 0.4, 0 in any order) does better.
        for vertex in set(itertools.permutations((0.6, 0.4, 0.0))):
            vertex = np.array(vertex)
            sharpe = (data.mu @ vertex - 0.05) / math.sqrt(vertex @ data.cov @ vertex)
            self.assertLessEqual(sharpe, result.stats["sharpe"] * (1 + 1e-12))


class Ticks:
    """A clock that advances by one per reading (the search reads it once per node)."""

    def __init__(self):
        self.readings = 0

    def __call__(self):
        self.readings += 1
        return float(self.readings - 1)


@dataclasses.dataclass(frozen=True)
class Context:
    """What the engine's objectives read of their context (see cardinality.solve)."""

    lower: np.ndarray
    upper: np.ndarray
    risk_free_rate: float


class TimeLimitTest(unittest.TestCase):
    """At the deadline the search returns its incumbent with a gap that bounds the optimum."""

    def search(self, data, goal, k, bounds, time_limit=None, clock=None):
        n = data.mu.size
        context = Context(np.full(n, bounds[0]), np.full(n, bounds[1]), RATE)
        # The engine's exact solver without the count, as engine.optimize passes it.
        objective = engine._OBJECTIVES[engine.Objective(goal.value)]
        return cardinality.solve(objective, data, context, k, goal, time_limit=time_limit,
                                 clock=clock or Ticks())

    def assert_gap_holds_at_every_stop(self, prices, goal, k, bounds):
        data = estimate(prepare_prices(prices), risk_free_rate=RATE)

        def f(weights):
            volatility = math.sqrt(float(weights @ data.cov @ weights))
            if goal is Goal.MIN_VOLATILITY:
                return volatility
            return -(float(data.mu @ weights) - RATE) / volatility

        counter = Ticks()
        proven = self.search(data, goal, k, bounds, time_limit=1e12, clock=counter)
        self.assertIs(proven.optimal, True)
        assert_array_equal(proven.weights, self.search(data, goal, k, bounds).weights)
        # One reading sets the deadline, one more per node popped.
        popped = counter.readings - 1
        optimum = f(proven.weights)
        message = (f"maxAssets {k}: the search found no portfolio within the time limit; "
                   "raise maxAssets, widen weightBounds or give fewer symbols.")
        stops = {"none": 0, "gap": 0, "proven": 0}
        # A limit of m / SEARCH_SHARE puts the deadline at reading m: m - 1 nodes popped.
        for m in range(1, popped + 2):
            with self.subTest(m=m):
                try:
                    stopped = self.search(data, goal, k, bounds,
                                          time_limit=m / cardinality.SEARCH_SHARE)
                except OptimizationError as e:
                    # Only before the first incumbent, never after one was found.
                    self.assertEqual((stops["gap"], stops["proven"]), (0, 0), m)
                    self.assertEqual(str(e), message)
                    self.assertEqual(e.details, {"field": "maxAssets"})
                    stops["none"] += 1
                    continue
                weights = stopped.weights
                self.assertLessEqual(np.count_nonzero(weights), k)
                self.assertAlmostEqual(float(weights.sum()), 1.0, delta=1e-9)
                incumbent = f(weights)
                if stopped.optimal:
                    stops["proven"] += 1
                    self.assertEqual(stopped.gap, 0.0)
                    self.assertLessEqual(abs(incumbent - optimum), AGREEMENT * abs(optimum))
                    continue
                # A proof, once complete, stays so: every node left is pruned.
                self.assertEqual(stops["proven"], 0, m)
                stops["gap"] += 1
                self.assertGreater(stopped.gap, cardinality.OPTIMALITY_TOLERANCE)
                slack = AGREEMENT * abs(optimum)
                if goal is Goal.MIN_VOLATILITY:
                    # vol_incumbent (1 - gap) <= vol_opt <= vol_incumbent
                    self.assertLessEqual(incumbent * (1 - stopped.gap), optimum + slack)
                    self.assertLessEqual(optimum, incumbent + slack)
                else:
                    # sharpe_incumbent <= sharpe_opt <= (1 + gap) sharpe_incumbent
                    self.assertLessEqual(-incumbent, -optimum + slack)
                    self.assertLessEqual(-optimum, -incumbent * (1 + stopped.gap) + slack)
        # The limits cover all three outcomes: nothing yet, an incumbent with a gap, proof.
        self.assertGreater(stops["none"], 0)
        self.assertGreater(stops["gap"], 0)
        self.assertGreaterEqual(stops["proven"], 1)

    def test_min_volatility_stopped_anywhere(self):
        prices = window("1995-01-01", "1999-12-31", sample_prices().columns[8:20])
        self.assert_gap_holds_at_every_stop(prices, Goal.MIN_VOLATILITY, 4, SEMI_CAPPED)

    def test_max_sharpe_stopped_anywhere(self):
        prices = window("1995-01-01", "1999-12-31", sample_prices().columns[8:20])
        self.assert_gap_holds_at_every_stop(prices, Goal.MAX_SHARPE, 3, FULL)

    def test_no_time_at_all_through_optimize(self):
        # The deadline is the start: the first reading of a monotonic clock meets it.
        prices = window("2015-01-01", "2019-12-31", sample_prices().columns[:8])
        with self.assertRaises(OptimizationError) as raised:
            optimize(prices, "min_volatility", max_assets=3, time_limit=0.0)
        self.assertEqual(str(raised.exception),
                         "maxAssets 3: the search found no portfolio within the time limit; "
                         "raise maxAssets, widen weightBounds or give fewer symbols.")

    def test_a_limit_that_is_not_reached_changes_nothing(self):
        prices = window("2015-01-01", "2019-12-31", sample_prices().columns[:8])
        for goal in ("max_sharpe", "min_volatility"):
            with self.subTest(goal=goal):
                free = optimize(prices, goal, risk_free_rate=RATE, max_assets=3)
                limited = optimize(prices, goal, risk_free_rate=RATE, max_assets=3,
                                   time_limit=1e6)
                assert_array_equal(limited.weights, free.weights)
                self.assertEqual((limited.stats["optimal"], limited.stats["gap"]), (True, 0.0))


class RefusalTest(unittest.TestCase):
    """Each refusal says what to change and names the field."""

    def assert_refused(self, call, message):
        with self.assertRaises(OptimizationError) as raised:
            call()
        self.assertEqual(str(raised.exception), message)
        self.assertEqual(raised.exception.details.get("field"), "maxAssets")

    def test_parse_request(self):
        self.assertEqual(cardinality.parse_request(3, "max_sharpe"), (3, Goal.MAX_SHARPE))
        k, goal = cardinality.parse_request(np.int64(2), engine.Objective.MIN_VOLATILITY)
        self.assertEqual((k, type(k), goal), (2, int, Goal.MIN_VOLATILITY))
        for bad in (0, -1, True, False, 2.5, 3.0, "3", None):
            with self.subTest(max_assets=bad):
                self.assert_refused(lambda bad=bad: cardinality.parse_request(bad, "max_sharpe"),
                                    "maxAssets must be an integer of at least 1.")
        for objective in ("hrp", "efficient_return", engine.Objective.MIN_CVAR):
            with self.subTest(objective=objective):
                self.assert_refused(
                    lambda objective=objective: cardinality.parse_request(2, objective),
                    "maxAssets applies to objectives max_sharpe and min_volatility only, not "
                    f"{engine.Objective(objective).value}; choose one of them or leave "
                    "maxAssets out.")

    def test_optimize_refuses_before_solving(self):
        prices = window("2015-01-01", "2019-12-31", sample_prices().columns[:10])
        self.assert_refused(
            lambda: optimize(prices, "hrp", max_assets=3),
            "maxAssets applies to objectives max_sharpe and min_volatility only, not hrp; "
            "choose one of them or leave maxAssets out.")
        self.assert_refused(
            lambda: optimize(prices, "max_sharpe", weight_bounds=CAPPED, max_assets=3),
            "maxAssets 3: with weightBounds up to 0.3 the weights of at most 3 assets total "
            "at most 0.9, less than 1; raise maxAssets to at least 4, or the upper bound to "
            "at least 0.333333.")
        with self.assertRaises(OptimizationError) as raised:
            optimize(prices, "max_sharpe", max_assets=3,
                     groups=[{"name": "a", "symbols": ["AAPL"], "min": 0.0, "max": 0.5}])
        self.assertEqual(str(raised.exception),
                         "maxAssets cannot be combined with groups yet: drop one of them.")

    def test_bounds_problem(self):
        cases = [
            # Upper bounds too low for k assets, enough for more.
            ((0.0, 0.3), 10, 3,
             "maxAssets 3: with weightBounds up to 0.3 the weights of at most 3 assets total "
             "at most 0.9, less than 1; raise maxAssets to at least 4, or the upper bound to "
             "at least 0.333333."),
            ((0.0, 0.6), 10, 1,
             "maxAssets 1: with weightBounds up to 0.6 the weights of at most 1 asset total "
             "at most 0.6, less than 1; raise maxAssets to at least 2, or the upper bound to "
             "at least 1."),
            # Too low for every count of these symbols, enough with more of them.
            ((0.0, 0.3), 3, 5,
             "maxAssets 5: with weightBounds up to 0.3 the weights of at most 3 assets total "
             "at most 0.9, less than 1; raise the upper bound to at least 0.333333, or "
             "give at least 4 symbols."),
            # ... where more symbols would not help: k is the limit.
            ((0.0, 0.3), 3, 3,
             "maxAssets 3: with weightBounds up to 0.3 the weights of at most 3 assets total "
             "at most 0.9, less than 1; raise the upper bound to at least 0.333333."),
            # Four assets of exactly 0.3 are too many, three too few: raising maxAssets
            # would not help, and no count of these bounds ever fits.
            ((0.3, 0.3), 10, 3,
             "maxAssets 3: with weightBounds up to 0.3 the weights of at most 3 assets total "
             "at most 0.9, less than 1; raise the upper bound to at least 0.333333."),
            # Reaching 1 takes three assets, whose lower bounds total more than 1.
            ((0.4, 0.45), 10, 5,
             "maxAssets 5: a portfolio within weightBounds needs at least 3 assets to reach "
             "a total of 1, but their lower bounds alone total 1.2, more than 1; lower the "
             "lower bound to at most 0.333333, or raise the upper bound."),
            ((0.6, 0.5), 4, 2, "weightBounds: each lower bound must not exceed its upper bound."),
        ]
        for (low, high), n, k, message in cases:
            with self.subTest(bounds=(low, high), n=n, k=k):
                self.assertEqual(cardinality.bounds_problem([low] * n, [high] * n, k), message)
                self.assert_refused(
                    lambda low=low, high=high, n=n, k=k: cardinality.check_bounds(
                        [low] * n, [high] * n, k), message)
        for (low, high), n, k in [((0.0, 1.0), 5, 1), ((0.15, 1.0), 10, 3),
                                  ((0.1, 0.5), 10, 2), ((0.0, 0.3), 10, 4),
                                  ((0.25, 0.25), 6, 4), ((0.0, 0.3), 4, 9)]:
            with self.subTest(bounds=(low, high), n=n, k=k):
                self.assertIsNone(cardinality.bounds_problem([low] * n, [high] * n, k))

    def test_no_subset_beats_the_rate(self):
        # 2007-2011: the best of these returned 11.4 % a year (JPM), less than 20 %.
        prices = window("2007-01-01", "2011-12-31", ["BAC", "GE", "JPM", "MRK", "PFE", "WMT"])
        self.assert_refused(
            lambda: optimize(prices, "max_sharpe", weight_bounds=SEMI_CAPPED,
                             risk_free_rate=0.2, max_assets=2),
            "max_sharpe needs a portfolio whose expected return exceeds riskFreeRate "
            "(20.0000%); none of at most 2 assets within weightBounds has one. Use objective "
            "min_volatility, a lower riskFreeRate or a larger maxAssets.")

    def test_per_symbol_bounds_the_search_finds_infeasible(self):
        # With per-symbol bounds bounds_problem is a necessary condition only: two assets
        # can reach 1 (0.6 + 0.6) and two can keep their lower bounds within 1 (0 + 0.5),
        # but the only two that reach 1, AAPL and JNJ, need 1.05 between them.
        prices = window("2015-01-01", "2019-12-31", ["AAPL", "JNJ", "KO"])
        bounds = {"AAPL": (0.55, 0.6), "JNJ": (0.5, 0.6), "KO": (0.0, 0.2)}
        self.assertIsNone(cardinality.bounds_problem([0.55, 0.5, 0.0], [0.6, 0.6, 0.2], 2))
        self.assert_refused(
            lambda: optimize(prices, "min_volatility", weight_bounds=bounds, max_assets=2),
            "maxAssets 2: no portfolio of at most 2 assets fits weightBounds; raise "
            "maxAssets or widen weightBounds.")


class StatsTest(unittest.TestCase):
    """``optimal`` and ``gap`` are in the stats only with maxAssets."""

    def test_stats(self):
        prices = window("2015-01-01", "2019-12-31", sample_prices().columns[:8])
        for goal in ("max_sharpe", "min_volatility"):
            with self.subTest(goal=goal):
                plain = optimize(prices, goal, risk_free_rate=RATE)
                limited = optimize(prices, goal, risk_free_rate=RATE, max_assets=2)
                self.assertNotIn("optimal", plain.stats)
                self.assertNotIn("gap", plain.stats)
                self.assertNotIn("optimal", plain.to_dict()["stats"])
                self.assertNotIn("gap", plain.to_dict()["stats"])
                self.assertEqual((limited.stats["optimal"], limited.stats["gap"]), (True, 0.0))
                document = json.loads(json.dumps(limited.to_dict()))
                self.assertIs(document["stats"]["optimal"], True)
                self.assertEqual(document["stats"]["gap"], 0.0)
                self.assertEqual(set(limited.stats) - set(plain.stats), {"optimal", "gap"})
                self.assertLessEqual(sum(w != 0 for w in document["allocations"].values()), 2)


if __name__ == "__main__":
    unittest.main()
