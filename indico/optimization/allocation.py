"""Discrete allocation: whole shares that best match target weights.

Method: when rounding every target to the nearest whole share fits the budget, that
is optimal (each asset is as close to its target as whole shares allow). Otherwise
an exact branch and bound over how many shares to take off the nearest counts
(:func:`_fewest_reductions`, a fraction of a millisecond), and only if that search
grows past ``NODE_LIMIT`` nodes, a mixed-integer linear program (scipy's ``milp``,
i.e. HiGHS) that picks whole share counts ``x`` minimising the total absolute money
deviation from the targets, ``Σ |p_i x_i - w_i V|``, subject to spending at most
``V`` (so the leftover cash is never negative). The absolute values are linearised
with one auxiliary variable per asset. The solve has a time limit; when it ends
without a proven optimum its best feasible point is used, and when it has none (or
its status is an error) a greedy rounding takes over: floor every target, then
repeatedly buy one share of the asset furthest below its target while that reduces
the deviation and cash allows.
"""

import enum

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

#: Seconds HiGHS may spend before its best point (or the greedy fallback) is used.
MILP_TIME_LIMIT = 2.0


class AllocationMethod(enum.StrEnum):
    """How the share counts were obtained."""

    ROUNDING = "rounding"
    BRANCH_AND_BOUND = "branch_and_bound"
    MILP = "milp"
    MILP_TIME_LIMIT = "milp_time_limit"
    GREEDY = "greedy"


def allocate_shares(weights, latest_prices, total, solver=milp, node_limit=None):
    """Whole shares for ``total`` that best match ``weights`` at ``latest_prices``.

    Args:
        weights: target weights, shape (n,), summing to 1.
        latest_prices: price per share on the last date, shape (n,), positive.
        total: amount to invest, > 0.
        solver: the MILP solver, called like ``scipy.optimize.milp`` (a
            parameter so that the fallbacks can be exercised).
        node_limit: nodes the branch and bound may visit before the MILP
            takes over; ``NODE_LIMIT`` if None.

    Returns:
        ``(shares, leftover, method)``: int array of shape (n,), the cash left
        (>= 0) and an :class:`AllocationMethod`.
    """
    support = np.flatnonzero(weights > 0)
    shares = np.zeros(weights.size, dtype=np.int64)
    # Each asset's deviation is at least its distance to the nearest whole
    # share; when rounding every target to the nearest share stays within the
    # budget, that bound is reached and no solver is needed.
    nearest = np.round(weights * total / latest_prices).astype(np.int64)
    if float(latest_prices @ nearest) <= total:
        return nearest, total - float(latest_prices @ nearest), AllocationMethod.ROUNDING
    fewer = _fewest_reductions(weights[support] * total, latest_prices[support],
                               nearest[support], total,
                               NODE_LIMIT if node_limit is None else node_limit)
    if fewer is not None:
        shares[support] = fewer
        return (shares, max(total - float(latest_prices @ shares), 0.0),
                AllocationMethod.BRANCH_AND_BOUND)
    # Assets without a target get no shares in any optimum (a share only adds
    # deviation and spending), and more than ceil(target / price) shares of an
    # asset is never optimal either: solving the smaller, tighter problem gives
    # the same answer several times faster.
    part, method = _solve(weights[support], latest_prices[support], total, solver)
    if part is None:
        shares = greedy_shares(weights, latest_prices, total)
        return shares, max(total - float(latest_prices @ shares), 0.0), AllocationMethod.GREEDY
    shares[support] = part
    return shares, max(total - float(latest_prices @ shares), 0.0), method


#: Nodes the branch and bound may visit before the MILP takes over.
NODE_LIMIT = 20_000


def _fewest_reductions(targets, prices, nearest, total, node_limit=NODE_LIMIT):
    """Exact allocation when rounding to the nearest share overspends.

    No optimum buys more than the nearest count of any asset (that adds
    deviation and spending), so it is ``nearest - k`` for some ``k >= 0``.
    With ``e_i = p_i n_i - t_i`` (``|e_i| <= p_i / 2``), taking ``k_i >= 1``
    shares off asset ``i`` changes its deviation by ``k_i p_i - 2 max(e_i, 0)``
    and frees ``k_i p_i``. So: minimise ``sum k_i p_i - 2 sum_{k_i >= 1}
    max(e_i, 0)`` subject to freeing at least the overspend. A depth-first
    branch and bound over ``k`` (largest prices first) solves it exactly; the
    bound is that money still to free costs at least itself, less every
    bonus not yet used.

    Returns:
        the share counts, or None when the search needs more than
        ``node_limit`` nodes (the MILP then decides).
    """
    order = np.argsort(-prices)
    price = prices[order].tolist()
    bonus = (2.0 * np.maximum(prices * nearest - targets, 0.0))[order].tolist()
    cap = nearest[order].tolist()
    overspend = float(prices @ nearest) - total
    later_bonus = np.concatenate((np.cumsum(bonus[::-1])[::-1], [0.0])).tolist()
    size = len(price)
    best = [np.inf, None]
    nodes = [0]
    taken = [0] * size
    tolerance = 1e-9 * max(total, 1.0)

    def search(i, need, cost):
        nodes[0] += 1
        if nodes[0] > node_limit:
            raise OverflowError
        if need <= tolerance:
            if cost < best[0] - tolerance:
                best[0], best[1] = cost, list(taken)
            return
        if i == size or cost + need - later_bonus[i] >= best[0] - tolerance:
            return
        most = min(cap[i], int(np.ceil(need / price[i] - 1e-12)))
        for k in range(most, -1, -1):
            taken[i] = k
            step = k * price[i] - (bonus[i] if k else 0.0)
            search(i + 1, need - k * price[i], cost + step)
        taken[i] = 0

    try:
        search(0, overspend, 0.0)
    except OverflowError:
        return None
    reductions = np.zeros(size, dtype=np.int64)
    reductions[order] = best[1]
    return nearest - reductions


def _solve(weights, latest_prices, total, solver):
    """The MILP of :func:`allocate_shares`; ``(shares, method)`` or ``(None, None)``."""
    targets = weights * total
    n = weights.size
    max_shares = np.minimum(np.floor(total / latest_prices), np.ceil(targets / latest_prices))
    # Variables: [x (n shares), d (n absolute deviations)].
    cost = np.concatenate((np.zeros(n), np.ones(n)))
    identity = np.eye(n)
    scaled = np.diag(latest_prices)
    constraints = [
        # p x - d <= target and -p x - d <= -target  <=>  d >= |p x - target|
        LinearConstraint(np.hstack((scaled, -identity)), -np.inf, targets),
        LinearConstraint(np.hstack((-scaled, -identity)), -np.inf, -targets),
        LinearConstraint(np.concatenate((latest_prices, np.zeros(n)))[None, :], -np.inf, total),
    ]
    integrality = np.concatenate((np.ones(n), np.zeros(n)))
    bounds = Bounds(np.zeros(2 * n), np.concatenate((max_shares, np.full(n, np.inf))))
    result = solver(
        cost,
        constraints=constraints,
        integrality=integrality,
        bounds=bounds,
        options={"time_limit": MILP_TIME_LIMIT},
    )
    # Status 0: optimal; 1: a limit was reached (x holds the best point, if any).
    if result.status in (0, 1) and result.x is not None:
        shares = np.round(result.x[:n]).astype(np.int64)
        spent = float(latest_prices @ shares)
        if np.all(shares >= 0) and spent <= total * (1 + 1e-12):
            method = (AllocationMethod.MILP if result.status == 0
                      else AllocationMethod.MILP_TIME_LIMIT)
            return shares, method
    return None, None


def greedy_shares(weights, latest_prices, total):
    """Greedy rounding of the targets (the fallback of :func:`allocate_shares`).

    Args:
        weights, latest_prices: arrays of shape (n,).
        total: amount to invest.

    Returns:
        int array of shape (n,).
    """
    targets = weights * total
    shares = np.floor(targets / latest_prices).astype(np.int64)
    cash = total - float(latest_prices @ shares)
    while True:
        deficit = targets - latest_prices * shares
        # Buying one more share helps when it brings the holding closer to target.
        helpful = (latest_prices <= cash) & (deficit > latest_prices / 2)
        if not helpful.any():
            return shares
        candidate = int(np.argmax(np.where(helpful, deficit, -np.inf)))
        shares[candidate] += 1
        cash -= latest_prices[candidate]
