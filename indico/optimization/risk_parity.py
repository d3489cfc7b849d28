"""Equal risk contributions (risk parity), within weight bounds.

Without binding bounds the long-only equal-risk-contribution portfolio solves
``w_i (Σw)_i = w'Σw / n`` for every i. It is the normalised minimiser of the strictly
convex function ``1/2 y'Σy - (1/n) Σ log y_i`` over ``y > 0`` (Maillard, Roncalli &
Teïletche, 2010; Spinu, 2013), found here by Newton's method with a step that keeps
``y`` positive.

When that portfolio breaks ``weight_bounds`` (a cap such as 0.3 on a low-volatility
stock), the engine returns the *constrained* risk-budgeting portfolio of Richard &
Roncalli (2019, "Constrained risk budgeting portfolios"): the minimiser of
``1/2 w'Σw - λ Σ (1/n) log w_i`` over the box ``lower <= w <= upper``, with the scalar
``λ`` chosen so that the weights sum to 1. Assets strictly inside their bounds then
have exactly equal risk contributions (``λ / n`` each); assets held at a bound
contribute less (at a cap) or more (at a floor). The inner problem is solved by a
projected Newton method on the box, the outer one by bracketing and Brent's method
on ``log λ`` (the sum of the weights increases with ``λ``).
"""

import math

import numpy as np
from scipy.optimize import brentq

from indico.error import OptimizationError

MAX_NEWTON_ITERATIONS = 100

#: Stop when every risk contribution is within this relative distance of 1/n.
CONTRIBUTION_TOLERANCE = 1e-10

#: Tolerance of the budget (sum of weights) in the bounded version.
BUDGET_TOLERANCE = 1e-13


def equal_risk_contributions(cov):
    """Return the long-only portfolio whose assets contribute equally to risk.

    Args:
        cov: positive definite covariance, shape (n, n).

    Returns:
        weights of shape (n,), positive, summing to 1.

    Raises:
        OptimizationError: when Newton's method does not converge.
    """
    n = cov.shape[0]
    budget = np.full(n, 1.0 / n)
    # Inverse-volatility weights are the exact answer for uncorrelated assets and a
    # good start otherwise; scale so that y'Σy = 1 (the optimum has y'Σy = 1).
    y = 1.0 / np.sqrt(np.diag(cov))
    y /= np.sqrt(y @ cov @ y)
    for _ in range(MAX_NEWTON_ITERATIONS):
        sigma_y = cov @ y
        gradient = sigma_y - budget / y
        contributions = y * sigma_y / (y @ sigma_y)
        if np.max(np.abs(contributions * n - 1.0)) <= CONTRIBUTION_TOLERANCE:
            return y / y.sum()
        hessian = cov + np.diag(budget / (y * y))
        step = np.linalg.solve(hessian, gradient)
        # Damped step: never move a coordinate by more than 90 % of the way to zero.
        shrink = np.max(step / y, initial=0.0)
        scale = 1.0 if shrink <= 0.9 else 0.9 / shrink
        y = y - scale * step
    raise OptimizationError(
        "risk_parity did not converge; the covariance may be ill-conditioned. Use a "
        "longer date range or fewer, less similar symbols."
    )


def bounded_risk_parity(cov, lower, upper):
    """Equal risk contributions within bounds (constrained risk budgeting).

    Args:
        cov: positive definite covariance, shape (n, n).
        lower, upper: weight bounds, shape (n,), with ``0 <= lower <= upper`` and
            ``sum(lower) <= 1 <= sum(upper)``.

    Returns:
        weights of shape (n,), within bounds, summing to 1.

    Raises:
        OptimizationError: when the inner Newton method or the search for ``λ``
            does not converge.
    """
    weights = equal_risk_contributions(cov)
    if np.all(weights >= lower) and np.all(weights <= upper):
        return weights
    n = cov.shape[0]
    budget = np.full(n, 1.0 / n)
    # Unconstrained, w(λ) = √λ · w(1); start from the λ that makes that sum to 1.
    state = {"weights": np.clip(weights, np.maximum(lower, 1e-12), upper)}

    def excess(log_lambda):
        state["weights"] = _box_minimiser(
            cov, math.exp(log_lambda) * budget, lower, upper, state["weights"]
        )
        return state["weights"].sum() - 1.0

    low = high = math.log(float(weights @ cov @ weights))
    # Widen a bracket: the sum of the weights increases with λ.
    for _ in range(200):
        if excess(low) <= 0:
            break
        low -= 1.0
    else:
        raise _no_convergence()
    for _ in range(200):
        if excess(high) >= 0:
            break
        high += 1.0
    else:
        raise _no_convergence()
    try:
        root = brentq(excess, low, high, xtol=1e-14, rtol=1e-15, maxiter=200)
    except (RuntimeError, ValueError) as e:
        raise _no_convergence() from e
    excess(root)
    result = state["weights"]
    if abs(result.sum() - 1.0) > 1e-9:
        raise _no_convergence()
    return result


def _box_minimiser(cov, budget, lower, upper, start):
    """Minimise ``1/2 w'Σw - Σ budget_i log w_i`` over ``lower <= w <= upper``.

    Projected Newton method for simple bounds (Bertsekas, 1982): bounds that the
    gradient presses against are held, a Newton step is taken on the other
    coordinates, and the step is clipped into the box with backtracking.

    Args:
        cov: shape (n, n); budget: positive, shape (n,); lower, upper: shape (n,).
        start: a point of the box with positive entries, shape (n,).

    Returns:
        array of shape (n,).
    """
    floor = np.maximum(lower, 0.0)
    w = np.clip(start, np.maximum(floor, 1e-300), upper)

    def objective(point):
        return 0.5 * point @ cov @ point - budget @ np.log(point)

    value = objective(w)
    for _ in range(MAX_NEWTON_ITERATIONS):
        gradient = cov @ w - budget / w
        held = ((w >= upper) & (gradient < 0)) | ((w <= floor) & (floor > 0) & (gradient > 0))
        free = ~held
        if np.max(np.abs(gradient[free]), initial=0.0) <= 1e-13 * max(1.0, np.abs(budget).max()):
            return w
        hessian = cov[np.ix_(free, free)] + np.diag(budget[free] / w[free] ** 2)
        direction = np.zeros_like(w)
        direction[free] = -np.linalg.solve(hessian, gradient[free])
        step = 1.0
        while True:
            candidate = np.clip(w + step * direction, floor, upper)
            # The logarithm needs w > 0: stay a fraction of the way off zero.
            candidate = np.maximum(candidate, 0.1 * w * (candidate <= 0))
            candidate_value = objective(candidate)
            if candidate_value <= value + 1e-4 * gradient @ (candidate - w) or step < 1e-12:
                break
            step *= 0.5
        if candidate_value > value or np.array_equal(candidate, w):
            return w
        w, value = candidate, candidate_value
    raise _no_convergence()


def _no_convergence():
    return OptimizationError(
        "risk_parity within weightBounds did not converge; widen weightBounds or use "
        "min_volatility."
    )
