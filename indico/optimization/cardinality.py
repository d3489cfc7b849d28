"""At most ``k`` assets (``maxAssets``): exact branch and bound over the engine's QPs.

The problem
-----------
Given μ (n,), Σ (n, n), bounds ``l <= u`` (n,) and ``k >= 1``::

    min f(w)  s.t.  1'w = 1,  w_i = 0 or l_i <= w_i <= u_i,  #{i : w_i != 0} <= k

with ``f(w) = √(w'Σw)`` (``min_volatility``) or ``f(w) = -(μ'w - r_f) / √(w'Σw)``
(``max_sharpe``). The lower bounds are *semi-continuous*: they apply to the assets
held, and an asset not held weighs exactly 0 (with ``l > 0`` and ``k < n`` the
problem would otherwise have no solution at all). This is the cardinality-
constrained portfolio of Chang, Meade, Beasley & Sharaiha (2000), *Comput. Oper.
Res.* 27(13), with their "threshold" lower bounds; PyPortfolioOpt and skfolio pose
it as a mixed-integer program with ``l_i z_i <= w_i <= u_i z_i``, ``Σ z_i <= k``,
``z`` binary.

The method
----------
Depth-first branch and bound on the assets (Bienstock 1996, *Math. Program.*
74(2); Bertsimas & Shioda 2009, *Comput. Optim. Appl.* 43(1)). A node holds some
assets (set I: ``l_i <= w_i <= u_i``), excludes some (E: ``w_i = 0``) and leaves
the others free (F). Its *relaxation* drops the count and the semi-continuity of
the free assets::

    min f(w)  s.t.  1'w = 1,  l_i <= w_i <= u_i (i in I),  0 <= w_i <= u_i (i in F),
                    w_i = 0 (i in E)

a box-and-budget problem that the engine solves exactly (the active-set solver
of :mod:`indico.optimization.frontier`; for ``max_sharpe`` the global maximum of
the quasi-concave Sharpe ratio). Every portfolio of the node is feasible for its
relaxation (``{0} ∪ [l_i, u_i] ⊂ [0, u_i]``), so the relaxed optimum bounds the
node: a node whose bound is no better than the best portfolio found so far (the
*incumbent*) is pruned. When the relaxed optimum itself holds at most ``k`` assets,
each free one at or above its lower bound, it is the node's optimum. Otherwise the
node branches on a free asset ``j`` with a nonzero weight: first ``j`` held
(``j`` into I), then ``j`` excluded (into E). The held child of a ``j`` already at
or above ``l_j`` has the parent's optimum as its own (no solve); a node with
``|I| = k`` excludes every free asset. Which ``j``: the largest weight when the
count is exceeded (so the first dive takes the relaxation's ``k`` largest
weights, a good first incumbent), else one below its lower bound.

A node whose relaxation cannot hold (``Σ_I l_i > 1``, or the ``k - |I|`` largest
free upper bounds with ``Σ_I u_i`` below 1) is dropped; for ``max_sharpe`` so is
a node whose highest expected return (the fractional knapsack of
:func:`indico.optimization.frontier.extreme_return_portfolio`) does not exceed
``r_f``: its Sharpe ratios are <= 0 and any incumbent has a positive one.

Optimality and the time limit
-----------------------------
A node is pruned when its bound is within a relative :data:`OPTIMALITY_TOLERANCE`
of the incumbent; a search that empties its stack has *proven* the incumbent
optimal to that tolerance (``optimal`` true, ``gap`` 0). At the deadline the
search stops and returns the incumbent with ``optimal`` false and the relative gap
``(f(incumbent) - B) / |f(incumbent)|``, where ``B`` is the best bound of the
nodes still open (each open node carries its parent's bound): the true optimum
lies within that gap of the incumbent (for ``max_sharpe``: Sharpe ratio at most
``(1 + gap)`` times the incumbent's; for ``min_volatility``: volatility at least
``(1 - gap)`` times it). Open nodes the incumbent prunes do not count; when only
those are left the proof is complete (``optimal`` true), so ``optimal`` false
always comes with ``gap > OPTIMALITY_TOLERANCE``. The search is given
:data:`SEARCH_SHARE` of the caller's time limit; the rest is left for the
statistics and the share allocation (whose MILP may take 2 s), so that with the
default ``INDICO_JOB_TIME_LIMIT`` (60 s) the worker pool never kills the job for it;
with a limit of a few seconds the allocation may not fit in the other half, and the
job then fails at the limit like any other.

Pure numpy; the clock is injectable so tests need no real time.
"""

import dataclasses
import enum
import math
import time
from collections.abc import Callable

import numpy as np

from indico.error import OptimizationError
from indico.optimization import frontier

#: A node whose bound is within this relative distance of the incumbent is pruned.
OPTIMALITY_TOLERANCE = 1e-10

#: Weights at or below this count as zero (the active-set solver puts weights at a
#: bound exactly; free ones can end a rounding error away from it).
ZERO_WEIGHT = 1e-9

#: Bounds whose sums are within this of 1 count as 1 (as frontier.check_bounds).
BUDGET_TOLERANCE = 1e-12

#: Share of the caller's time limit the search may use (the rest is for the
#: result: statistics, chart series and the share allocation's MILP, up to 2 s).
SEARCH_SHARE = 0.5


class Goal(enum.StrEnum):
    """The objectives that take ``maxAssets`` (values as the engine's objectives)."""

    MAX_SHARPE = "max_sharpe"
    MIN_VOLATILITY = "min_volatility"


@dataclasses.dataclass(frozen=True)
class Search:
    """The outcome of :func:`solve`.

    Attributes:
        weights: array of shape (n,), exactly 0 for the assets not held.
        lower, upper: the bounds that hold for ``weights``, shape (n,): ``l_i``
            and ``u_i`` for the assets held, 0 and 0 for the others (so cleaning
            the weights keeps them at 0).
        optimal: True when the search proved ``weights`` optimal.
        gap: relative bound on how far from optimal ``weights`` may be; 0 when
            ``optimal``.
        nodes: relaxations solved.
    """

    weights: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    optimal: bool
    gap: float
    nodes: int

    def stats(self):
        """The fields a result's ``stats`` gain: ``{"optimal": bool, "gap": float}``."""
        return {"optimal": self.optimal, "gap": self.gap}


def check_without_groups(groups):
    """Refuse ``maxAssets`` with groups (not solved yet).

    Raises:
        OptimizationError: ``groups`` is a non-empty list.
    """
    if groups:
        raise OptimizationError(
            "maxAssets cannot be combined with groups yet: drop one of them.",
            field="maxAssets")


def parse_request(max_assets, objective):
    """Check ``maxAssets`` and the objective it comes with.

    Args:
        max_assets: the requested limit.
        objective: the objective's value (a string or a ``StrEnum``).

    Returns:
        ``(k, goal)``: the limit as an int and the :class:`Goal`.

    Raises:
        OptimizationError: ``max_assets`` is not an integer >= 1, or the
            objective does not take it; the message names the ones that do.
    """
    if isinstance(max_assets, bool) or not isinstance(max_assets, (int, np.integer)) or (
            max_assets < 1):
        raise OptimizationError("maxAssets must be an integer of at least 1.",
                                field="maxAssets")
    try:
        goal = Goal(str(objective))
    except ValueError:
        names = " and ".join(goal.value for goal in Goal)
        raise OptimizationError(
            f"maxAssets applies to objectives {names} only, not {objective}; choose one "
            "of them or leave maxAssets out.", field="maxAssets") from None
    return int(max_assets), goal


def bounds_problem(lower, upper, max_assets, max_symbols=None):
    """Say why no portfolio of at most ``max_assets`` assets fits the bounds.

    Exact for bounds shared by every asset (what a request sends); with per-asset
    bounds a necessary condition only (the search then finds the rest).

    Args:
        lower, upper: arrays (or sequences) of shape (n,), ``0 <= lower``,
            ``upper <= 1``.
        max_assets: k >= 1.
        max_symbols: the most symbols a request may have (``INDICO_MAX_SYMBOLS``),
            so that "give more symbols" is advised only when it is allowed; None:
            no limit.

    Returns:
        the message (naming ``maxAssets`` and ``weightBounds`` and what to change),
        or None.
    """
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    if np.any(lower > upper):
        return "weightBounds: each lower bound must not exceed its upper bound."
    n = lower.size
    most = min(max_assets, n)
    # m assets total at most highest[m - 1] and at least lowest[m - 1]; a count fits
    # when it can reach 1 without its lower bounds exceeding 1.
    highest = np.cumsum(np.sort(upper)[::-1])
    lowest = np.cumsum(np.sort(lower))
    counts = np.arange(1, n + 1)
    reach = highest >= 1.0 - BUDGET_TOLERANCE
    fits = reach & (lowest <= 1.0 + BUDGET_TOLERANCE)
    if fits[:most].any():
        return None
    if not reach[most - 1]:
        # Each piece of advice must be enough on its own (exactly so for shared bounds):
        # a larger maxAssets only if that many assets also fit, more symbols only if a
        # count above n within maxAssets would.
        raise_upper = f"the upper bound to at least {1.0 / most:.6g}"
        larger = counts[fits]
        cap, floor = float(upper.max()), float(lower.min())
        more = max(n + 1, math.ceil((1.0 - BUDGET_TOLERANCE) / cap)) if cap > 0 else None
        if larger.size:
            advice = f"raise maxAssets to at least {int(larger[0])}, or {raise_upper}"
        elif (more is not None and more <= max_assets
                and (max_symbols is None or more <= max_symbols)
                and more * floor <= 1.0 + BUDGET_TOLERANCE):
            advice = f"raise {raise_upper}, or give at least {more} symbols"
        else:
            advice = f"raise {raise_upper}"
        return (f"maxAssets {max_assets}: with weightBounds up to {cap:g} the weights of at "
                f"most {most} asset{'s' * (most != 1)} total at most {highest[most - 1]:.6g}, "
                f"less than 1; {advice}.")
    fewest = int(counts[reach][0])
    return (f"maxAssets {max_assets}: a portfolio within weightBounds needs at least "
            f"{fewest} assets to reach a total of 1, but their lower bounds alone total "
            f"{lowest[fewest - 1]:.6g}, more than 1; lower the lower bound to at most "
            f"{1.0 / fewest:.6g}, or raise the upper bound.")


def check_bounds(lower, upper, max_assets, max_symbols=None):
    """Raise the message of :func:`bounds_problem`, if any.

    Raises:
        OptimizationError: no portfolio of at most ``max_assets`` assets fits.
    """
    problem = bounds_problem(lower, upper, max_assets, max_symbols)
    if problem is not None:
        raise OptimizationError(problem, field="maxAssets")


def solve(objective, data, context, max_assets, goal, *, time_limit=None,
          clock=time.monotonic):
    """The best portfolio of at most ``max_assets`` assets, by branch and bound.

    Args:
        objective: the engine's exact solver without the count,
            ``objective(data, context) -> weights``; it reads only ``data.mu``,
            ``data.cov``, ``data.solver_covariance()`` and ``context.lower``,
            ``context.upper``, ``context.risk_free_rate``, and is called with
            subsets of the assets (``dataclasses.replace`` of both).
        data: the :class:`indico.optimization.data.MarketData` (n assets).
        context: the engine's validated parameters (bounds of shape (n,)).
        max_assets: k >= 1 (see :func:`parse_request`).
        goal: the :class:`Goal`.
        time_limit: seconds the caller may take in all, or None for no limit;
            the search stops after :data:`SEARCH_SHARE` of it.
        clock: ``clock() -> seconds``, monotonic (injectable for tests).

    Returns:
        :class:`Search`.

    Raises:
        OptimizationError: no portfolio of at most ``max_assets`` assets fits the
            bounds; for ``max_sharpe``, none has an expected return above the
            risk-free rate; the time ran out before any portfolio was found; or
            a solver failure. The message says what to change.
    """
    lower, upper = context.lower, context.upper
    n = lower.size
    check_bounds(lower, upper, max_assets)
    if max_assets >= n and not np.any(lower > 0):
        # The count cannot bind and no lower bound is semi-continuous: the plain problem.
        weights = objective(data, context)
        return Search(weights=weights, lower=lower, upper=context.upper, optimal=True,
                      gap=0.0, nodes=1)
    deadline = None if time_limit is None else clock() + SEARCH_SHARE * time_limit
    search = _BranchAndBound(objective, data, context, min(max_assets, n), goal)
    return search.run(deadline, clock)


class _BranchAndBound:
    """The depth-first search of :func:`solve` (state: the incumbent and the stack).

    Node states are int8 arrays of shape (n,): 1 held, -1 excluded, 0 free.
    Values are ``f`` of the module docstring (minimised).
    """

    def __init__(self, objective: Callable, data, context, max_assets: int, goal: Goal):
        self.objective = objective
        self.data = data
        self.context = context
        self.k = max_assets
        self.goal = goal
        self.incumbent: np.ndarray | None = None
        self.incumbent_held: np.ndarray | None = None
        self.best = math.inf
        self.nodes = 0
        self.below_rate = False  # a node was dropped for max_sharpe's rate condition

    def run(self, deadline, clock):
        n = self.context.lower.size
        # (state, the parent's bound, the parent's solution when it is also this node's)
        stack: list[tuple[np.ndarray, float, tuple | None]] = [
            (np.zeros(n, dtype=np.int8), -math.inf, None)]
        while stack:
            if deadline is not None and clock() >= deadline:
                return self._stopped([bound for _, bound, _ in stack])
            state, bound, known = stack.pop()
            if self._prunes(bound):
                continue
            self._node(state, known, stack)
        return self._finished()

    def _prunes(self, bound):
        if self.incumbent is None:
            return False
        return bound >= self.best - OPTIMALITY_TOLERANCE * abs(self.best)

    def _node(self, state, known, stack):
        held = state == 1
        if held.sum() >= self.k and np.any(state == 0):
            state = np.where(held, 1, -1).astype(np.int8)
            known = None
        if known is None:
            known = self._relax(state)
            if known is None:
                return
        weights, value = known
        if self._prunes(value):
            return
        free = (state == 0) & (weights > ZERO_WEIGHT)
        nonzero = held | free
        short = free & (weights < self.context.lower - ZERO_WEIGHT)
        if nonzero.sum() <= self.k and not short.any():
            self._improve(np.where(nonzero, weights, 0.0), nonzero, value)
            return
        if nonzero.sum() > self.k:
            j = int(np.argmax(np.where(free, weights, -np.inf)))
        else:
            j = int(np.argmax(short))
        excluded, taken = state.copy(), state.copy()
        excluded[j], taken[j] = -1, 1
        stack.append((excluded, value, None))
        # Held at or above its lower bound already: the parent's optimum is the child's.
        stack.append((taken, value, known if not short[j] else None))

    def _relax(self, state):
        """The relaxation's ``(weights (n,), value)``, or None when it has no portfolio."""
        context = self.context
        keep = state >= 0
        lower = np.where(state == 1, context.lower, 0.0)[keep]
        upper = context.upper[keep]
        room = self.k - int((state == 1).sum())
        free_upper = np.sort(upper[state[keep] == 0])[::-1][:room]
        if (lower.sum() > 1.0 + BUDGET_TOLERANCE
                or upper[state[keep] == 1].sum() + free_upper.sum() < 1.0 - BUDGET_TOLERANCE):
            return None
        mu = self.data.mu[keep]
        if self.goal is Goal.MAX_SHARPE:
            rate = context.risk_free_rate
            best = float(mu @ frontier.extreme_return_portfolio(mu, lower, upper))
            if best <= rate + 1e-12 * max(1.0, abs(rate)):
                self.below_rate = True
                return None
        cov = self.data.cov[np.ix_(keep, keep)]
        part = self.objective(dataclasses.replace(self.data, mu=mu, cov=cov),
                              dataclasses.replace(context, lower=lower, upper=upper))
        self.nodes += 1
        weights = np.zeros(state.size)
        weights[keep] = part
        return weights, self._value(part, mu, cov)

    def _value(self, weights, mu, cov):
        volatility = math.sqrt(max(float(weights @ cov @ weights), 0.0))
        if self.goal is Goal.MIN_VOLATILITY:
            return volatility
        return -(float(mu @ weights) - self.context.risk_free_rate) / volatility

    def _improve(self, weights, held, value):
        if value < self.best:
            self.incumbent, self.incumbent_held, self.best = weights, held, value

    def _search(self, optimal, gap):
        assert self.incumbent is not None and self.incumbent_held is not None
        held = self.incumbent_held
        return Search(weights=self.incumbent,
                      lower=np.where(held, self.context.lower, 0.0),
                      upper=np.where(held, self.context.upper, 0.0),
                      optimal=optimal, gap=gap, nodes=self.nodes)

    def _stopped(self, open_bounds):
        """The incumbent when time ran out; ``open_bounds``: those of the open nodes."""
        if self.incumbent is None:
            raise OptimizationError(
                f"maxAssets {self.k}: the search found no portfolio within the time limit; "
                "raise maxAssets, widen weightBounds or give fewer symbols.",
                field="maxAssets")
        left = [bound for bound in open_bounds if not self._prunes(bound)]
        if not left:
            # Every open node would be pruned on popping: the proof is complete.
            return self._search(True, 0.0)
        # Each left bound is below best - tolerance |best|: the gap is positive.
        return self._search(False, (self.best - min(left)) / abs(self.best))

    def _finished(self):
        if self.incumbent is not None:
            return self._search(True, 0.0)
        if self.below_rate:
            raise OptimizationError(
                f"max_sharpe needs a portfolio whose expected return exceeds riskFreeRate "
                f"({self.context.risk_free_rate:.4%}); none of at most {self.k} assets within "
                "weightBounds has one. Use objective min_volatility, a lower riskFreeRate "
                "or a larger maxAssets.", field="maxAssets")
        raise OptimizationError(
            f"maxAssets {self.k}: no portfolio of at most {self.k} assets fits weightBounds; "
            "raise maxAssets or widen weightBounds.", field="maxAssets")
