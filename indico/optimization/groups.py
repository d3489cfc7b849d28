"""Sector constraints (``groups``): their rules, the feasibility check, and the
mean-variance objectives and frontier under them.

A group ``g`` (a name, some symbols, ``min_g`` and ``max_g``) asks that the weights
of its symbols sum within ``[min_g, max_g]``: two linear rows ``M_g w <= max_g`` and
``-M_g w <= -min_g`` with ``M_g`` the 0/1 membership row. Groups may share symbols
(the rows are just linear); a symbol may be in no group. With the budget
``1'w = 1`` and the bounds ``lower <= w <= upper`` every objective here is a convex
program solved exactly:

* ``min_volatility``: ``min 1/2 w'Σw`` by the active-set QP of
  :mod:`indico.optimization.qp` (Goldfarb & Idnani 1983).
* ``efficient_return``: the same with ``μ'w >= target``; the reachable returns are
  the linear programs ``min / max μ'w`` (HiGHS, ``scipy.optimize.linprog``).
* ``max_sharpe``: the homogeneous form of Cornuéjols & Tütüncü (*Optimization
  Methods in Finance*, 2007, §8.2): with ``y = κ w``, ``κ = 1'y >= 0``,
  ``min y'Σy`` s.t. ``(μ - rf)'y = 1``, ``κ lower <= y <= κ upper`` and
  ``κ min_g <= M_g y <= κ max_g``, a QP in ``y`` alone; ``w = y / 1'y``.
* ``efficient_risk``: the maximum return with ``√(w'Σw) <= target``: the
  efficient-return optimum is piecewise affine in the target return ``r``
  (:func:`indico.optimization.qp.affine_piece`), so on each piece the variance is
  a quadratic in ``r``; the piece that contains the target volatility is found
  by a bracketing search and the quadratic solved on it (KKT-exact).
* the frontier: the pieces from the minimum-volatility return to the maximum
  return (Best 1996's parametric QP: solve just past the end of a piece, bisect
  any gap), the corner portfolios at their ends, and every point evaluated on its
  piece, which is the efficient-return optimum for that return.

Before any of them, :func:`check_feasible` decides with a linear program whether
the bounds, the budget and the groups can hold together, and when they cannot,
names the group(s) and what to change.
"""

import dataclasses
import math

import numpy as np
from scipy.optimize import linprog

from indico.error import OptimizationError
from indico.optimization import qp

#: Sums within this of a group's limit count as meeting it (as the bounds' check).
TOLERANCE = 1e-12

#: HiGHS's primal feasibility tolerance for the feasibility and return LPs (its
#: default, 1e-7, would pass problems the exact QP then finds infeasible).
LP_FEASIBILITY_TOLERANCE = 1e-10

#: Most groups in one request.
MAX_GROUPS = 100


@dataclasses.dataclass(frozen=True)
class Group:
    """One sector constraint, validated.

    Attributes:
        name: as given (unique among the groups).
        symbols: tuple of the group's symbols.
        low, high: the group's weights sum within ``[low, high]`` (``0 <= low <=
            high <= 1``).
    """

    name: str
    symbols: tuple
    low: float
    high: float


def parse_groups(groups, symbols):
    """Validate ``groups`` against ``symbols`` and return them as :class:`Group`.

    Args:
        groups: None, or a list of mappings ``{"name": str, "symbols": [str, ...],
            "min": float, "max": float}`` (``min`` defaults to 0, ``max`` to 1).
        symbols: the request's symbols (a group's must be among them).

    Returns:
        tuple of :class:`Group` (empty for None or []).

    Raises:
        OptimizationError: a group without a name or symbols, a name used twice, a
            symbol listed twice in a group or not among ``symbols``, or ``min`` /
            ``max`` outside [0, 1] or ``min > max``; the message names the group.
    """
    if groups is None:
        return ()
    if not isinstance(groups, (list, tuple)):
        raise OptimizationError("groups must be a list of {name, symbols, min, max}.",
                                field="groups")
    if len(groups) > MAX_GROUPS:
        raise OptimizationError(f"groups: at most {MAX_GROUPS} groups.", field="groups")
    known = set(symbols)
    parsed, seen = [], set()
    for position, group in enumerate(groups):
        if not isinstance(group, dict):
            raise OptimizationError(f"groups[{position}] must be an object "
                                    "{name, symbols, min, max}.", field="groups")
        name = group.get("name")
        if not isinstance(name, str) or not name.strip():
            raise OptimizationError(f"groups[{position}] needs a name.", field="groups")
        if name in seen:
            raise OptimizationError(f"group {name}: the name is used by more than one group; "
                                    "give each group its own name.", field="groups", group=name)
        seen.add(name)
        members = group.get("symbols")
        if not isinstance(members, (list, tuple)) or not members:
            raise OptimizationError(f"group {name}: give at least one symbol.",
                                    field="groups", group=name)
        twice = sorted({s for s in members if members.count(s) > 1})
        if twice:
            raise OptimizationError(f"group {name}: {', '.join(map(str, twice))} listed more "
                                    "than once.", field="groups", group=name)
        unknown = [s for s in members if s not in known]
        if unknown:
            raise OptimizationError(
                f"group {name}: {', '.join(map(str, unknown))} not among symbols; add "
                f"{'them' if len(unknown) > 1 else 'it'} to symbols or remove "
                f"{'them' if len(unknown) > 1 else 'it'} from the group.",
                field="groups", group=name, symbols=[str(s) for s in unknown])
        low, high = group.get("min", 0.0), group.get("max", 1.0)
        for label, value in (("min", low), ("max", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and 0.0 <= value <= 1.0):
                raise OptimizationError(f"group {name}: {label} must be a number within "
                                        "[0, 1].", field="groups", group=name)
        if low > high:
            raise OptimizationError(f"group {name}: min {low:g} exceeds max {high:g}; "
                                    "swap them or lower min.", field="groups", group=name)
        parsed.append(Group(name=name, symbols=tuple(members), low=float(low),
                            high=float(high)))
    return tuple(parsed)


@dataclasses.dataclass(frozen=True)
class Constraints:
    """The groups as matrices over the n symbols.

    Attributes:
        groups: tuple of :class:`Group`.
        members: 0/1 array of shape (k, n): ``members[g, i]`` is 1 when symbol i is
            in group g.
        low, high: arrays of shape (k,).
    """

    groups: tuple
    members: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def build(cls, groups, symbols):
        """Build the matrices of validated ``groups`` over ``symbols`` (tuple of n)."""
        index = {s: i for i, s in enumerate(symbols)}
        members = np.zeros((len(groups), len(symbols)))
        for g, group in enumerate(groups):
            members[g, [index[s] for s in group.symbols]] = 1.0
        return cls(groups=tuple(groups), members=members,
                   low=np.array([g.low for g in groups]), high=np.array([g.high for g in groups]))

    def inequality(self):
        """The rows ``A w <= b`` of every group: ``(A (2k, n), b (2k,))``."""
        return (np.vstack((self.members, -self.members)),
                np.concatenate((self.high, -self.low)))


# --- feasibility ---------------------------------------------------------------------


def check_feasible(constraints, lower, upper):
    """Check that the bounds, the budget and the groups can hold together.

    Each group alone is checked by arithmetic first (its symbols' bounds, and what
    the symbols outside it leave), so that the message gives the numbers; then all
    together by a linear program, and when that fails, a deletion filter finds an
    irreducible set of groups that conflict (each removed in turn: a group whose
    removal leaves the rest infeasible is not needed for the conflict).

    Args:
        constraints: :class:`Constraints`.
        lower, upper: the weight bounds, shape (n,), that can sum to 1.

    Raises:
        OptimizationError: naming the group(s) and what to change.
    """
    for g, group in enumerate(constraints.groups):
        inside = constraints.members[g] > 0
        up_in, low_in = float(upper[inside].sum()), float(lower[inside].sum())
        up_out, low_out = float(upper[~inside].sum()), float(lower[~inside].sum())
        name, low, high = group.name, group.low, group.high
        problem = None
        if up_in < low - TOLERANCE:
            problem = (f"its symbols' upper bounds sum to {up_in:.6g} < min {low:g}; raise "
                       "their upper bounds or lower min")
        elif low_in > high + TOLERANCE:
            problem = (f"its symbols' lower bounds sum to {low_in:.6g} > max {high:g}; lower "
                       "their lower bounds or raise max")
        elif 1.0 - up_out > high + TOLERANCE:
            problem = (f"the symbols outside it can hold at most {up_out:.6g}, so it needs at "
                       f"least {1.0 - up_out:.6g} > max {high:g}; raise max, or the other "
                       "symbols' upper bounds, or add symbols outside it")
        elif 1.0 - low_out < low - TOLERANCE:
            problem = (f"the symbols outside it need at least {low_out:.6g}, leaving at most "
                       f"{1.0 - low_out:.6g} < min {low:g}; lower min or the other symbols' "
                       "lower bounds")
        if problem:
            raise OptimizationError(f"group {name}: {problem}.", field="groups", group=name)
    if _feasible(constraints, range(len(constraints.groups)), lower, upper):
        return
    needed = list(range(len(constraints.groups)))
    for g in list(needed):
        rest = [h for h in needed if h != g]
        if not _feasible(constraints, rest, lower, upper):
            needed = rest
    names = [constraints.groups[g].name for g in needed]
    lows = sum(constraints.groups[g].low for g in needed)
    highs = sum(constraints.groups[g].high for g in needed)
    detail = ""
    disjoint = constraints.members[needed].sum(axis=0).max(initial=0) <= 1
    if disjoint and lows > 1 + TOLERANCE:
        detail = f" (their min sum to {lows:.6g} > 1)"
    elif disjoint and highs < 1 - TOLERANCE and len(needed) == len(constraints.groups):
        detail = f" (their max sum to {highs:.6g} < 1)"
    raise OptimizationError(
        f"groups {', '.join(names)} cannot hold together within weightBounds and a budget "
        f"of 1{detail}; widen their [min, max], or the bounds of their symbols.",
        field="groups", groups=names)


def _feasible(constraints, chosen, lower, upper):
    chosen = list(chosen)
    n = lower.size
    part = Constraints(groups=tuple(constraints.groups[g] for g in chosen),
                       members=constraints.members[chosen].reshape(len(chosen), n),
                       low=constraints.low[chosen], high=constraints.high[chosen])
    solution = _linprog(np.zeros(n), part, lower, upper)
    if solution.status == 2:
        return False
    if solution.status != 0:
        raise OptimizationError(
            f"groups: the feasibility check failed ({solution.message}); simplify the "
            "groups or weightBounds.", field="groups")
    return True


def _linprog(cost, constraints, lower, upper):
    matrix, bound = constraints.inequality()
    return linprog(cost, A_ub=matrix if bound.size else None, b_ub=bound if bound.size else None,
                   A_eq=np.ones((1, lower.size)), b_eq=[1.0],
                   bounds=np.column_stack((lower, upper)), method="highs",
                   options={"primal_feasibility_tolerance": LP_FEASIBILITY_TOLERANCE})


def extreme_return(mu, constraints, lower, upper, maximize=True):
    """The highest (or lowest) expected return the bounds, budget and groups allow.

    Args:
        mu: shape (n,); constraints: :class:`Constraints`; lower, upper: shape (n,).
        maximize: highest when True.

    Returns:
        ``(weights of shape (n,), μ'w)``.

    Raises:
        OptimizationError: when HiGHS does not report an optimum.
    """
    solution = _linprog(-mu if maximize else mu, constraints, lower, upper)
    if solution.status != 0 or solution.x is None:
        raise OptimizationError(
            f"groups: the linear program of the reachable returns was not solved "
            f"({solution.message}); widen the groups or weightBounds.", field="groups")
    return solution.x, float(mu @ solution.x)


# --- objectives ------------------------------------------------------------------------


class GroupedFrontier:
    """The efficient frontier under bounds, budget and groups, solved on demand.

    Args:
        mu: expected returns, shape (n,).
        cov: covariance for the solver, shape (n, n), positive definite.
        constraints: :class:`Constraints`, feasible with the bounds (see
            :func:`check_feasible`).
        lower, upper: bounds, shape (n,).
    """

    def __init__(self, mu, cov, constraints, lower, upper):
        self.mu, self.cov = mu, cov
        self.lower, self.upper = lower, upper
        self.matrix, self.bound = constraints.inequality()
        self.constraints = constraints
        self._lowest = self._highest = None
        self._min_volatility = None

    def _program(self, target=None):
        matrix, bound = self.matrix, self.bound
        if target is not None:
            matrix = np.vstack((matrix, -self.mu))
            bound = np.append(bound, -target)
        return qp.QuadraticProgram(self.cov, None, np.ones((1, self.mu.size)), [1.0], matrix,
                                   bound, self.lower, self.upper)

    def min_volatility(self):
        """The minimum-variance weights, shape (n,)."""
        if self._min_volatility is None:
            self._min_volatility = self._program().solve().x
        return self._min_volatility

    def reachable(self):
        """``(lowest, highest)`` expected return within the constraints."""
        if self._highest is None:
            self._lowest = extreme_return(self.mu, self.constraints, self.lower, self.upper,
                                          maximize=False)[1]
            self._highest = extreme_return(self.mu, self.constraints, self.lower,
                                           self.upper)[1]
        return self._lowest, self._highest

    def _top(self):
        """The highest return the QP is asked for: a hair below the LP's maximum, so
        that rounding in the LP cannot make the QP's return row infeasible."""
        high = self.reachable()[1]
        return high - 1e-12 * max(1.0, abs(high))

    def efficient_return(self, target):
        """Minimum variance with ``μ'w >= target`` (the caller checked reachability)."""
        least = self.min_volatility()
        if target <= float(self.mu @ least):
            return least
        top = self._top()
        if target >= top:
            # The last piece, evaluated at the highest return itself (exact).
            return self.piece(top).x(min(target, self.reachable()[1]))
        return self._program(target).solve().x

    def piece(self, target):
        """The affine piece of the efficient-return optimum around ``target``."""
        program = self._program(target)
        solution = program.solve()
        direction = np.zeros(program.rhs.size)
        row = program.rows.index(("in", self.bound.size))
        direction[row] = 1.0
        return qp.affine_piece(program, solution, target, direction, keep=(row,))

    def pieces(self):
        """The pieces from the minimum-volatility return to the highest return.

        Returns:
            list of :class:`indico.optimization.qp.Piece`, consecutive in the target
            return (gaps of at most 1e-9 of the range), or [] when the frontier is a
            single point.

        Raises:
            OptimizationError: the walk did not close up (a numerical failure).
        """
        start = float(self.mu @ self.min_volatility())
        high, top = self.reachable()[1], self._top()
        span = high - start
        if span <= 1e-12 * max(1.0, abs(high)):
            return []
        joint = 1e-9 * span
        pieces, end = [], start
        for _ in range(20 * (self.mu.size + self.bound.size) + 50):
            if end >= high - joint:
                return pieces
            same, gap = 0.0, None
            step = 1e-9 * span
            for _ in range(200):
                piece = self.piece(min(end + step, top))
                if piece.lo > end + joint:
                    gap = step
                elif piece.hi <= end + joint:
                    same = step
                else:
                    break
                step = 4.0 * step if gap is None else 0.5 * (same + gap)
            else:
                break
            pieces.append(piece)
            end = piece.hi
        raise OptimizationError(
            "The efficient-frontier walk under groups did not converge; the covariance is "
            "probably ill-conditioned. Use a longer date range or fewer symbols.")

    def efficient_risk(self, target):
        """Maximum return with volatility ``<= target``, KKT-exact (see the module).

        Raises:
            OptimizationError: when ``target`` is below the minimum volatility.
        """
        least = self.min_volatility()
        lowest = math.sqrt(max(float(least @ self.cov @ least), 0.0))
        variance = target * target
        if target < lowest * (1 - 1e-9):
            raise OptimizationError(
                f"targetVolatility {target:.4%} is below the lowest volatility these assets "
                f"can reach within weightBounds and groups ({lowest:.4%}). Choose at least "
                f"{lowest:.4%}.", reachable=[lowest, None])
        if target <= lowest:
            return least
        start, top = float(self.mu @ least), self._top()
        if top <= start:
            return least
        best = self.efficient_return(self.reachable()[1])
        if float(best @ self.cov @ best) <= variance:
            return best
        low, high = start, top
        rho = start + (top - start) * 0.5
        for _ in range(200):
            piece = self.piece(rho)
            a = float(piece.x1 @ self.cov @ piece.x1)
            b = 2.0 * float(piece.x0 @ self.cov @ piece.x1)
            c = float(piece.x0 @ self.cov @ piece.x0) - variance
            root = math.nan
            if a > 0 and b * b - 4 * a * c >= 0:
                root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
            slack = 1e-12 * max(1.0, abs(rho))
            if piece.lo - slack <= root <= piece.hi + slack:
                return piece.x(min(max(root, piece.lo), piece.hi))
            end = piece.x(piece.hi)
            if float(end @ self.cov @ end) < variance:
                low = max(low, piece.hi)
            else:
                high = min(high, piece.lo)
            if high - low <= 1e-15 * max(1.0, abs(high)):
                return piece.x(min(max(low, piece.lo), piece.hi))
            rho = root if low < root < high else 0.5 * (low + high)
        raise OptimizationError(
            "efficient_risk under groups did not converge; the covariance is probably "
            "ill-conditioned. Use a longer date range or fewer symbols.")


def max_sharpe(mu, cov, constraints, lower, upper, risk_free_rate):
    """Global maximum-Sharpe weights under bounds, budget and groups (homogeneous QP).

    Args:
        mu: shape (n,); cov: shape (n, n), positive definite.
        constraints: :class:`Constraints`; lower, upper: shape (n,).
        risk_free_rate: annual.

    Returns:
        weights of shape (n,).

    Raises:
        OptimizationError: when no allowed portfolio's return exceeds the rate.
    """
    _, best = extreme_return(mu, constraints, lower, upper)
    rf = risk_free_rate
    if best <= rf + 1e-12 * max(1.0, abs(rf)):
        raise OptimizationError(
            f"max_sharpe needs a portfolio whose expected return exceeds riskFreeRate "
            f"({rf:.4%}); the best reachable within weightBounds and groups is {best:.4%}. "
            "Use objective min_volatility, or a lower riskFreeRate.",
            best_expected_return=best)
    n = mu.size
    ones = np.ones(n)
    identity = np.eye(n)
    rows, members = [], constraints.members
    # κ = 1'y: every bound and group limit scales with it.
    rows.extend(lower[i] * ones - identity[i] for i in range(n) if lower[i] > 0)
    rows.extend(identity[i] - upper[i] * ones for i in range(n) if upper[i] < 1)
    rows.extend(members[g] - constraints.high[g] * ones for g in range(len(members))
                if constraints.high[g] < 1)
    rows.extend(constraints.low[g] * ones - members[g] for g in range(len(members))
                if constraints.low[g] > 0)
    matrix = np.array(rows) if rows else None
    program = qp.QuadraticProgram(cov, None, (mu - rf)[None, :], [1.0], matrix,
                                  np.zeros(len(rows)) if rows else None, np.zeros(n), None)
    y = program.solve().x
    return y / y.sum()
