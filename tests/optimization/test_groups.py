"""groups (sector constraints): the exact QP against the KKT conditions and brute force,
each objective and the frontier under groups, and every error, on the pinned sample."""

import itertools
import math
import unittest

import numpy as np
from numpy.testing import assert_allclose
from scipy.optimize import nnls

from indico.error import OptimizationError
from indico.optimization import efficient_frontier, optimize
from indico.optimization.cvar import historical_cvar
from indico.optimization.data import prepare_prices
from indico.optimization.estimators import estimate
from indico.optimization.groups import Constraints, parse_groups
from indico.optimization.qp import QuadraticProgram, affine_piece
from indico.services.pool import WorkerFrame, run_optimization
from tests.optimization.sample import sample_prices


def window(symbols=None, start="2015-01-01", end="2019-12-31"):
    prices = sample_prices().loc[start:end]
    return prices if symbols is None else prices[list(symbols)]


PRICES = window()
SYMBOLS = list(PRICES.columns)
#: Bind on the sample: alone, min_volatility puts 0.23 in the first five and 0.41 in
#: the next seven, max_sharpe 0.33 and 0.30.
BINDING = [{"name": "first", "symbols": SYMBOLS[:5], "min": 0.3, "max": 0.5},
           {"name": "second", "symbols": SYMBOLS[5:12], "min": 0.0, "max": 0.2}]
#: Wide enough never to bind.
LOOSE = [{"name": "first", "symbols": SYMBOLS[:5], "min": 0.0, "max": 0.99},
         {"name": "all", "symbols": SYMBOLS, "min": 0.0, "max": 1.0}]
TARGETS = {"efficient_return": {"target_return": 0.2},
           "efficient_risk": {"target_volatility": 0.15}}
OBJECTIVES = ("max_sharpe", "min_volatility", "efficient_return", "efficient_risk", "min_cvar")


def moments(prices=PRICES):
    return estimate(prepare_prices(prices), "mean", 500, "sample", 180, 0.0)


def group_sums(weights, groups):
    index = {s: i for i, s in enumerate(SYMBOLS)}
    return [float(sum(weights[index[s]] for s in g["symbols"])) for g in groups]


def kkt_certificate(program, x):
    """Largest KKT violation at ``x``, with multipliers found independently (NNLS).

    The active rows are those with slack <= 1e-10; stationarity ``Gx + c = N_A u``
    is solved for ``u`` (>= 0 on inequalities; equalities split into two signs) by
    non-negative least squares; feasibility of every row is checked too.
    """
    slack = program.normals @ x - program.rhs
    active = np.flatnonzero(np.abs(slack) <= 1e-10)
    equalities = active[active < program.equalities]
    columns = np.hstack((program.normals[active].T, -program.normals[equalities].T))
    gradient = program.hessian @ x + program.linear
    _, residual = nnls(columns, gradient)
    infeasible = max(float(np.abs(slack[:program.equalities]).max(initial=0.0)),
                     float(np.maximum(-slack[program.equalities:], 0.0).max(initial=0.0)))
    return max(residual / max(1.0, float(np.abs(gradient).max())), infeasible)


def brute_force(program):
    """The optimum by enumerating every active set (small problems only)."""
    n = program.hessian.shape[0]
    rows = range(program.equalities, program.rhs.size)
    best = None
    for size in range(min(n, len(rows)) + 1):
        for chosen in itertools.combinations(rows, size):
            active = list(range(program.equalities)) + list(chosen)
            q = len(active)
            block = np.zeros((n + q, n + q))
            block[:n, :n] = program.hessian
            block[:n, n:] = -program.normals[active].T
            block[n:, :n] = program.normals[active]
            if np.linalg.matrix_rank(block) < n + q:
                continue
            answer = np.linalg.solve(block, np.concatenate((-program.linear,
                                                             program.rhs[active])))
            x, u = answer[:n], answer[n:]
            if np.all(program.normals @ x - program.rhs >= -1e-10) and np.all(
                    u[program.equalities:] >= -1e-10):
                value = 0.5 * x @ program.hessian @ x + program.linear @ x
                if best is None or value < best[0] - 1e-14:
                    best = (value, x)
    return None if best is None else best[1]


class QuadraticProgramTest(unittest.TestCase):

    def sample_program(self, symbols, groups, target=None):
        data = moments(window(symbols))
        parsed = Constraints.build(parse_groups(groups, data.symbols), data.symbols)
        matrix, bound = parsed.inequality()
        if target is not None:
            matrix, bound = np.vstack((matrix, -data.mu)), np.append(bound, -target)
        n = data.mu.size
        return QuadraticProgram(data.cov, None, np.ones((1, n)), [1.0], matrix, bound,
                                np.zeros(n), np.full(n, 0.4)), data

    def test_kkt_conditions_and_brute_force_on_the_sample(self):
        symbols = SYMBOLS[:6]
        groups = [{"name": "a", "symbols": symbols[:2], "min": 0.35, "max": 0.5},
                  {"name": "b", "symbols": symbols[1:4], "min": 0.0, "max": 0.3}]
        for target in (None, 0.15, 0.25):
            with self.subTest(target=target):
                program, _ = self.sample_program(symbols, groups, target)
                solution = program.solve()
                self.assertLessEqual(program.kkt_residual(solution), 1e-9)
                self.assertLessEqual(kkt_certificate(program, solution.x), 1e-9)
                assert_allclose(solution.x, brute_force(program), rtol=0, atol=1e-9)
                # Complementary slackness of the solver's own multipliers.
                slack = program.normals @ solution.x - program.rhs
                self.assertLessEqual(float(np.abs(solution.multipliers * slack).max()), 1e-12)
                self.assertTrue(np.all(solution.multipliers[program.equalities:] >= 0))

    def test_random_small_problems_against_brute_force(self):
        rng = np.random.default_rng(13)
        for trial in range(60):
            n = int(rng.integers(2, 6))
            factor = rng.normal(size=(n, n))
            hessian = factor @ factor.T + 0.05 * np.eye(n)
            k = int(rng.integers(0, 3))
            program = QuadraticProgram(hessian, rng.normal(size=n), np.ones((1, n)), [1.0],
                                       rng.normal(size=(k, n)), rng.normal(size=k) + 1.0,
                                       np.zeros(n), np.full(n, 0.8))
            expected = brute_force(program)
            with self.subTest(trial=trial):
                if expected is None:
                    with self.assertRaises(OptimizationError):
                        program.solve()
                    continue
                solution = program.solve()
                assert_allclose(solution.x, expected, rtol=0, atol=1e-9)
                self.assertLessEqual(kkt_certificate(program, solution.x), 1e-9)

    def test_infeasible_constraints_say_what_to_change(self):
        program = QuadraticProgram(np.eye(2), None, np.ones((1, 2)), [1.0],
                                   np.array([[1.0, 0.0], [0.0, 1.0]]), [0.3, 0.3],
                                   np.zeros(2), np.ones(2))
        with self.assertRaisesRegex(OptimizationError, "cannot all hold together.*widen"):
            program.solve()

    def test_a_hessian_that_is_not_positive_definite_is_refused(self):
        with self.assertRaisesRegex(OptimizationError, "not positive definite"):
            QuadraticProgram(np.array([[1.0, 1.0], [1.0, 1.0]]))

    def test_the_affine_piece_is_the_optimum_along_its_interval(self):
        symbols = SYMBOLS[:8]
        groups = [{"name": "a", "symbols": symbols[:3], "min": 0.3, "max": 0.6}]
        program, data = self.sample_program(symbols, groups, 0.2)
        solution = program.solve()
        direction = np.zeros(program.rhs.size)
        row = program.rows.index(("in", 2))
        direction[row] = 1.0
        piece = affine_piece(program, solution, 0.2, direction, keep=(row,))
        self.assertLess(piece.lo, 0.2)
        self.assertGreater(piece.hi, 0.2)
        for target in np.linspace(piece.lo, piece.hi, 5):
            exact, _ = self.sample_program(symbols, groups, float(target))
            assert_allclose(piece.x(float(target)), exact.solve().x, rtol=0, atol=1e-9)
        # Just past the end the active set changes: the piece is no longer optimal.
        beyond = piece.hi + 1e-3 * (piece.hi - piece.lo)
        if beyond < float(np.sort(data.mu)[-1]) * 0.4 + 0.6 * float(np.sort(data.mu)[-2]):
            outside, _ = self.sample_program(symbols, groups, beyond)
            self.assertGreater(float(np.abs(piece.x(beyond) - outside.solve().x).max()), 1e-9)


class GroupObjectivesTest(unittest.TestCase):

    def test_groups_that_do_not_bind_change_nothing(self):
        for objective in OBJECTIVES:
            for bounds in ((0.0, 1.0), (0.0, 0.2)):
                with self.subTest(objective=objective, bounds=bounds):
                    options = TARGETS.get(objective, {})
                    free = optimize(PRICES, objective, weight_bounds=bounds, **options)
                    loose = optimize(PRICES, objective, weight_bounds=bounds, groups=LOOSE,
                                     **options)
                    assert_allclose(loose.weights, free.weights, rtol=0, atol=1e-9)

    def test_binding_groups_hold_exactly_for_every_objective(self):
        for objective in OBJECTIVES:
            with self.subTest(objective=objective):
                free = optimize(PRICES, objective, **TARGETS.get(objective, {}))
                result = optimize(PRICES, objective, groups=BINDING,
                                  **TARGETS.get(objective, {}))
                first, second = group_sums(result.weights, BINDING)
                self.assertGreaterEqual(first, 0.3 - 1e-12)
                self.assertLessEqual(first, 0.5 + 1e-12)
                self.assertLessEqual(second, 0.2 + 1e-12)
                self.assertAlmostEqual(result.weights.sum(), 1.0, delta=1e-12)
                self.assertTrue(np.all(result.weights >= 0))
                # Each objective is worse with the constraints than without.
                self.assertGreater(float(np.abs(result.weights - free.weights).max()), 1e-3)
        least = optimize(PRICES, "min_volatility", groups=BINDING)
        self.assertAlmostEqual(group_sums(least.weights, BINDING)[0], 0.3, delta=1e-12)
        self.assertAlmostEqual(group_sums(least.weights, BINDING)[1], 0.2, delta=1e-12)

    def test_min_volatility_is_the_kkt_point(self):
        data = moments()
        result = optimize(PRICES, "min_volatility", groups=BINDING, weight_bounds=(0.0, 0.3))
        parsed = Constraints.build(parse_groups(BINDING, data.symbols), data.symbols)
        matrix, bound = parsed.inequality()
        n = data.mu.size
        program = QuadraticProgram(data.cov, None, np.ones((1, n)), [1.0], matrix, bound,
                                   np.zeros(n), np.full(n, 0.3))
        self.assertLessEqual(kkt_certificate(program, result.weights), 1e-9)

    def test_efficient_return_and_risk_meet_their_targets(self):
        data = moments()
        chosen = optimize(PRICES, "efficient_return", groups=BINDING, target_return=0.2)
        self.assertAlmostEqual(float(data.mu @ chosen.weights), 0.2, delta=1e-12)
        risky = optimize(PRICES, "efficient_risk", groups=BINDING, target_volatility=0.15)
        self.assertAlmostEqual(risky.stats["volatility"], 0.15, delta=1e-12)
        # The highest return at that volatility: efficient_return at its return is it.
        back = optimize(PRICES, "efficient_return", groups=BINDING,
                        target_return=risky.stats["expected_return"])
        assert_allclose(back.weights, risky.weights, rtol=0, atol=1e-9)
        # Below the minimum-volatility return the target holds already.
        least = optimize(PRICES, "min_volatility", groups=BINDING)
        low = optimize(PRICES, "efficient_return", groups=BINDING, target_return=0.01)
        assert_allclose(low.weights, least.weights, rtol=0, atol=1e-12)
        wide = optimize(PRICES, "efficient_risk", groups=BINDING, target_volatility=5.0)
        top = optimize(PRICES, "efficient_return", groups=BINDING,
                       target_return=wide.stats["expected_return"])
        assert_allclose(wide.weights, top.weights, rtol=0, atol=1e-9)

    def test_max_sharpe_beats_every_frontier_point_and_lies_on_it(self):
        for rate in (0.0, 0.05):
            with self.subTest(rate=rate):
                best = optimize(PRICES, "max_sharpe", groups=BINDING, risk_free_rate=rate)
                curve = efficient_frontier(PRICES, points=40, groups=BINDING,
                                           risk_free_rate=rate)
                self.assertGreaterEqual(best.stats["sharpe"],
                                        max(p["sharpe"] for p in curve["points"]) - 1e-12)
                on = optimize(PRICES, "efficient_return", groups=BINDING,
                              target_return=best.stats["expected_return"])
                assert_allclose(on.weights, best.weights, rtol=0, atol=1e-8)
                assert_allclose([curve["max_sharpe"]["weights"][s] for s in SYMBOLS],
                                best.weights, rtol=0, atol=1e-9)

    def test_min_cvar_beats_other_portfolios_that_meet_the_groups(self):
        result = optimize(PRICES, "min_cvar", groups=BINDING)
        data = moments()
        others = [optimize(PRICES, objective, groups=BINDING, **TARGETS.get(objective, {}))
                  for objective in ("min_volatility", "max_sharpe", "efficient_risk")]
        for other in others:
            self.assertLessEqual(result.stats["cvar"],
                                 historical_cvar(data.returns @ other.weights) + 1e-12)
        rng = np.random.default_rng(5)
        for _ in range(20):
            mix = rng.dirichlet(np.ones(3))
            blend = sum(m * o.weights for m, o in zip(mix, others, strict=True))
            self.assertLessEqual(result.stats["cvar"],
                                 historical_cvar(data.returns @ blend) + 1e-12)

    def test_overlapping_groups_are_just_more_rows(self):
        groups = [{"name": "a", "symbols": SYMBOLS[:6], "min": 0.4, "max": 1.0},
                  {"name": "b", "symbols": SYMBOLS[4:10], "max": 0.25}]
        result = optimize(PRICES, "min_volatility", groups=groups)
        index = {s: i for i, s in enumerate(SYMBOLS)}
        a = sum(result.weights[index[s]] for s in SYMBOLS[:6])
        b = sum(result.weights[index[s]] for s in SYMBOLS[4:10])
        self.assertGreaterEqual(a, 0.4 - 1e-12)
        self.assertLessEqual(b, 0.25 + 1e-12)

    def test_stored_jobs_without_groups_keep_working(self):
        params = {"symbols": SYMBOLS[:4], "objective": "min_volatility",
                  "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0], "target_return": None,
                  "target_volatility": None, "initial_investment": None}
        old = run_optimization(WorkerFrame(window(SYMBOLS[:4]), None), params)
        new = run_optimization(WorkerFrame(window(SYMBOLS[:4]), None), {**params, "groups": None})
        self.assertEqual(old["allocations"], new["allocations"])


class GroupFrontierTest(unittest.TestCase):

    def test_points_are_efficient_return_with_groups_one_by_one(self):
        for bounds in ((0.0, 1.0), (0.0, 0.25)):
            with self.subTest(bounds=bounds):
                curve = efficient_frontier(PRICES, points=15, weight_bounds=bounds,
                                           groups=BINDING)
                returns = [p["expected_return"] for p in curve["points"]]
                assert_allclose(np.diff(returns), np.full(14, (returns[-1] - returns[0]) / 14),
                                rtol=0, atol=1e-12)
                self.assertEqual(curve["points"][0], curve["min_volatility"])
                for point in curve["points"]:
                    exact = optimize(PRICES, "efficient_return", weight_bounds=bounds,
                                     groups=BINDING, target_return=point["expected_return"])
                    assert_allclose([point["weights"][s] for s in SYMBOLS], exact.weights,
                                    rtol=0, atol=1e-9)
                    first, second = group_sums(exact.weights, BINDING)
                    self.assertTrue(0.3 - 1e-12 <= first <= 0.5 + 1e-12)
                    self.assertLessEqual(second, 0.2 + 1e-12)

    def test_weights_are_linear_between_corners(self):
        curve = efficient_frontier(PRICES, points=2, groups=BINDING)
        corners = curve["corners"]
        self.assertGreater(len(corners), 3)
        returns = [c["expected_return"] for c in corners]
        self.assertTrue(all(b > a for a, b in zip(returns, returns[1:], strict=False)))
        for left, right in zip(corners, corners[1:], strict=False):
            middle = 0.5 * (left["expected_return"] + right["expected_return"])
            exact = optimize(PRICES, "efficient_return", groups=BINDING, target_return=middle)
            halfway = [0.5 * (left["weights"][s] + right["weights"][s]) for s in SYMBOLS]
            assert_allclose(halfway, exact.weights, rtol=0, atol=1e-9)
        self.assertEqual(corners[0], curve["min_volatility"])
        self.assertAlmostEqual(corners[-1]["expected_return"],
                               curve["points"][-1]["expected_return"], delta=1e-12)

    def test_loose_groups_give_the_critical_line(self):
        free = efficient_frontier(PRICES, points=10, weight_bounds=(0.0, 0.3))
        loose = efficient_frontier(PRICES, points=10, weight_bounds=(0.0, 0.3), groups=LOOSE)
        for a, b in zip(free["points"] + free["corners"], loose["points"] + loose["corners"],
                        strict=True):
            assert_allclose([a["weights"][s] for s in SYMBOLS],
                            [b["weights"][s] for s in SYMBOLS], rtol=0, atol=1e-9)

    def test_a_single_portfolio_frontier(self):
        # min = max = 1 for all symbols in bounds of 0.5 on two: one portfolio.
        two = window(SYMBOLS[:2])
        groups = [{"name": "a", "symbols": SYMBOLS[:1], "min": 0.5, "max": 0.5}]
        curve = efficient_frontier(two, points=3, groups=groups)
        for point in curve["points"]:
            self.assertAlmostEqual(point["weights"][SYMBOLS[0]], 0.5, delta=1e-12)
        self.assertEqual(len(curve["corners"]), 1)


class GroupErrorsTest(unittest.TestCase):

    def assert_refused(self, pattern, objective="min_volatility", **options):
        with self.assertRaisesRegex(OptimizationError, pattern) as caught:
            optimize(PRICES, objective, **options)
        return caught.exception

    def test_malformed_groups_name_the_group(self):
        cases = [
            ([{"name": "tech", "symbols": ["AAPL", "GOOG"]}],
             "group tech: GOOG not among symbols; add it to symbols"),
            ([{"name": "tech", "symbols": ["AAPL"]}, {"name": "tech", "symbols": ["AMD"]}],
             "group tech: the name is used by more than one group"),
            ([{"name": "tech", "symbols": ["AAPL", "AAPL"]}], "group tech: AAPL listed more"),
            ([{"name": "tech", "symbols": ["AAPL"], "min": 0.6, "max": 0.5}],
             "group tech: min 0.6 exceeds max 0.5"),
            ([{"name": "tech", "symbols": ["AAPL"], "max": 1.5}],
             r"group tech: max must be a number within \[0, 1\]"),
            ([{"name": "tech", "symbols": ["AAPL"], "min": -0.1}],
             r"group tech: min must be a number within \[0, 1\]"),
            ([{"name": "tech", "symbols": []}], "group tech: give at least one symbol"),
            ([{"symbols": ["AAPL"]}], r"groups\[0\] needs a name"),
        ]
        for groups, pattern in cases:
            with self.subTest(groups=groups):
                error = self.assert_refused(pattern, groups=groups)
                self.assertEqual(error.details["field"], "groups")

    def test_objectives_without_groups_say_which_take_them(self):
        for objective in ("buy_and_hold_sharpe", "risk_parity", "equal_weight", "hrp",
                          "inverse_volatility", "max_diversification"):
            with self.subTest(objective=objective):
                self.assert_refused(
                    f"groups apply to objectives max_sharpe, min_volatility, "
                    f"efficient_return, efficient_risk, min_cvar, not {objective}",
                    objective, groups=BINDING)

    def test_groups_that_cannot_hold_say_what_to_change(self):
        five = SYMBOLS[:5]
        cases = [
            ({"weight_bounds": (0.0, 0.08)},
             [{"name": "tech", "symbols": five, "min": 0.5}],
             "group tech: its symbols' upper bounds sum to 0.4 < min 0.5; raise their upper "
             "bounds or lower min", ["tech"]),
            ({"weight_bounds": (0.03, 1.0)},
             [{"name": "tech", "symbols": five, "max": 0.1}],
             "group tech: its symbols' lower bounds sum to 0.15 > max 0.1", ["tech"]),
            ({"weight_bounds": (0.0, 0.05)},
             [{"name": "tech", "symbols": five, "max": 0.2}],
             "group tech: the symbols outside it can hold at most 0.75, so it needs at least "
             "0.25 > max 0.2", ["tech"]),
            ({"weight_bounds": (0.04, 1.0)},
             [{"name": "tech", "symbols": five, "min": 0.5}],
             "group tech: the symbols outside it need at least 0.6, leaving at most 0.4 < "
             "min 0.5", ["tech"]),
            ({}, [{"name": "tech", "symbols": five, "min": 0.6},
                  {"name": "banks", "symbols": SYMBOLS[5:8], "min": 0.5},
                  {"name": "rest", "symbols": SYMBOLS[8:], "max": 1.0}],
             r"groups tech, banks cannot hold together within weightBounds and a budget of 1 "
             r"\(their min sum to 1.1 > 1\); widen", ["tech", "banks"]),
        ]
        for options, groups, pattern, names in cases:
            with self.subTest(groups=groups):
                error = self.assert_refused(pattern, groups=groups, **options)
                self.assertEqual(error.details.get("group", None) or error.details["groups"],
                                 names[0] if len(names) == 1 else names)
                with self.assertRaisesRegex(OptimizationError, pattern):
                    efficient_frontier(PRICES, groups=groups, **options)

    def test_unreachable_targets_and_rates(self):
        self.assert_refused("targetReturn 90.0000% is outside what these assets can reach "
                            "within weightBounds and groups", "efficient_return",
                            groups=BINDING, target_return=0.9)
        least = optimize(PRICES, "min_volatility", groups=BINDING).stats["volatility"]
        self.assert_refused(f"targetVolatility 5.0000% is below the lowest volatility these "
                            f"assets can reach within weightBounds and groups "
                            f"\\({least:.4%}\\)", "efficient_risk", groups=BINDING,
                            target_volatility=0.05)
        self.assert_refused("max_sharpe needs a portfolio whose expected return exceeds "
                            "riskFreeRate", "max_sharpe", groups=BINDING, risk_free_rate=0.9)
        curve = efficient_frontier(PRICES, points=2, groups=BINDING, risk_free_rate=0.9)
        self.assertIsNone(curve["max_sharpe"])
        self.assertTrue(math.isfinite(curve["points"][-1]["volatility"]))


if __name__ == "__main__":
    unittest.main()
