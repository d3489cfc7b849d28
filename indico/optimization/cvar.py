"""Historical conditional value at risk (CVaR): the statistic and the ``min_cvar`` LP.

With daily portfolio returns ``r_t = R_t w`` (T daily simple returns of the assets,
rebalanced to ``w``) and losses ``L_t = -r_t``, the historical CVaR at level ``β`` is
the mean loss over the worst ``(1 - β)`` fraction of days, in the form of
Rockafellar & Uryasev (2000), "Optimization of conditional value-at-risk",
J. Risk 2(3):

    CVaR_β(w) = min_a  a + 1 / ((1 - β) T) · Σ_t max(L_t - a, 0).

With ``k = (1 - β) T`` and the losses sorted from the worst, ``L_(1) >= L_(2) ...``,
the minimum is ``(Σ_{i <= ⌊k⌋} L_(i) + (k - ⌊k⌋) L_(⌊k⌋+1)) / k`` (:func:`historical_cvar`).
It is a daily loss fraction (0.03 is 3 % of the portfolio's value a day), as
PyPortfolioOpt's ``EfficientCVaR``.

``min_cvar`` minimises it over the bounded simplex as the linear program, in the
variables ``(w, a, u)`` with ``u`` of shape (T,),

    min a + 1 / ((1 - β) T) · 1'u   s.t.  u_t >= -R_t w - a,  u >= 0,
        1'w = 1,  lower <= w <= upper,

which is PyPortfolioOpt's ``EfficientCVaR(...).min_cvar()``. It has T rows; its LP
dual (Rockafellar & Uryasev, sect. 3; the risk envelope ``0 <= p_t <= 1/((1-β)T)``,
``Σ p_t = 1``) has n + 1:

    max λ + lower'α - upper'β   s.t.  R'p + λ 1 + α - β = 0,  1'p = 1,
        0 <= p <= 1 / ((1 - β) T),  α, β >= 0,

and the weights ``w`` are the multipliers of its n asset rows (strong duality: the
two optima are equal, and ``a``, the VaR, is the multiplier of ``1'p = 1``). The
engine solves the dual with HiGHS's dual simplex (``scipy.optimize.linprog``,
``highs-ds``, sparse matrix, status checked): a basis of n + 1 instead of T, several
times faster than the primal, same optimum (they agree within 1e-13 on the sample).
"""

import math

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from indico.error import OptimizationError

#: Default and accepted range of ``cvarLevel`` (β).
DEFAULT_LEVEL = 0.95
MIN_LEVEL = 0.5
MAX_LEVEL = 0.999


def historical_cvar(portfolio_returns: np.ndarray, level: float = DEFAULT_LEVEL) -> float:
    """Historical CVaR of daily returns at ``level``: the mean loss of the worst days.

    Args:
        portfolio_returns: daily returns, shape (T,).
        level: β, within [MIN_LEVEL, MAX_LEVEL].

    Returns:
        the CVaR as a daily loss fraction (negative when even the worst days gain).
    """
    losses = -np.asarray(portfolio_returns, dtype=float)
    count = losses.size
    tail = (1.0 - level) * count
    whole = min(math.floor(tail), count)
    # Only the worst whole + 1 losses matter: partition them out, then sort just those
    # (the same values in the same order as a full sort, so the same sum).
    kept = min(whole + 1, count)
    worst = np.sort(np.partition(losses, count - kept)[count - kept:])[::-1]
    total = float(worst[:whole].sum())
    if whole < count:
        total += (tail - whole) * float(worst[whole])
    return total / tail


def min_cvar_weights(
    returns: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float = DEFAULT_LEVEL,
    extra_rows: tuple | None = None,
) -> np.ndarray:
    """The weights of minimum historical CVaR at ``level``, within bounds.

    Args:
        returns: daily asset returns R, shape (T, n).
        lower, upper: bounds, shape (n,), that can sum to 1.
        level: β.
        extra_rows: more rows ``A w <= b`` as ``(A (k, n), b (k,))`` (the groups'), or
            None.

    Returns:
        weights of shape (n,).

    Raises:
        OptimizationError: when HiGHS does not report an optimum.
    """
    count, n = returns.shape
    if extra_rows is not None:
        return _min_cvar_primal(returns, lower, upper, level, extra_rows)
    cap = 1.0 / ((1.0 - level) * count)
    # The dual LP (module docstring) in the variables x = (p [T], λ, α [n], β [n]),
    # as a minimisation; its constraint matrix is built in CSC form directly: column
    # t of p holds (R_t, 1), λ's column is 1 on the n asset rows, α_i's +1 and β_i's
    # -1 on row i.
    cost = np.concatenate((np.zeros(count), [-1.0], -lower, upper))
    p_values = np.empty((count, n + 1))
    p_values[:, :n] = returns
    p_values[:, n] = 1.0
    values = np.concatenate((p_values.ravel(), np.ones(n), np.ones(n), -np.ones(n)))
    assets = np.arange(n)
    rows = np.concatenate((np.tile(np.arange(n + 1), count), assets, assets, assets))
    starts = np.concatenate((np.arange(count + 1) * (n + 1),
                             count * (n + 1) + n + np.arange(2 * n + 1)))
    matrix = sparse.csc_array((values, rows, starts), shape=(n + 1, count + 1 + 2 * n))
    right = np.zeros(n + 1)
    right[n] = 1.0
    bounds = np.empty((count + 1 + 2 * n, 2))
    bounds[:count] = (0.0, cap)
    bounds[count] = (-np.inf, np.inf)
    bounds[count + 1:] = (0.0, np.inf)
    # No presolve: it finds nothing to remove here and cost more than the solve.
    solution = linprog(cost, A_eq=matrix, b_eq=right, bounds=bounds, method="highs-ds",
                       options={"presolve": False})
    if solution.status != 0 or solution.eqlin is None:
        raise OptimizationError(
            f"min_cvar: the linear program was not solved ({solution.message}); widen "
            "weightBounds, use a longer date range, or choose objective min_volatility."
        )
    # The primal weights are the multipliers of the dual's asset rows (HiGHS's row
    # duals, with the sign of the minimisation).
    return -solution.eqlin.marginals[:n]


def _min_cvar_primal(returns: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float,
                     extra_rows: tuple) -> np.ndarray:
    """:func:`min_cvar_weights` with more rows ``A w <= b``: the primal LP (Rockafellar–Uryasev).

    The dual form of :func:`min_cvar_weights` has no place for the groups' rows,
    so a request with groups solves the primal directly (slower, the same optimum).
    """
    count, n = returns.shape
    cost = np.concatenate((np.zeros(n), [1.0], np.full(count, 1.0 / ((1.0 - level) * count))))
    # -R w - a - u <= 0, one row per day.
    inequality = sparse.hstack((
        sparse.csr_matrix(-returns), sparse.csr_matrix(-np.ones((count, 1))),
        -sparse.identity(count, format="csr"),
    ), format="csr")
    bound = np.zeros(count)
    matrix, limits = extra_rows
    padded = sparse.hstack((sparse.csr_matrix(matrix), sparse.csr_matrix(
        (len(limits), 1 + count))), format="csr")
    inequality = sparse.vstack((inequality, padded), format="csr")
    bound = np.concatenate((bound, limits))
    budget = sparse.csr_matrix(np.concatenate((np.ones(n), np.zeros(1 + count)))[None, :])
    bounds = np.empty((n + 1 + count, 2))
    bounds[:n, 0], bounds[:n, 1] = lower, upper
    bounds[n] = (-np.inf, np.inf)
    bounds[n + 1:] = (0.0, np.inf)
    solution = linprog(cost, A_ub=inequality, b_ub=bound, A_eq=budget,
                       b_eq=[1.0], bounds=bounds, method="highs")
    if solution.status != 0 or solution.x is None:
        raise OptimizationError(
            f"min_cvar: the linear program was not solved ({solution.message}); widen "
            "weightBounds, use a longer date range, or choose objective min_volatility."
        )
    return solution.x[:n]


def risk_contributions(weights: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Each asset's share of the portfolio variance, ``w_i (Σw)_i / w'Σw``.

    Args:
        weights: shape (n,); cov: shape (n, n).

    Returns:
        shape (n,), summing to 1 (all zeros when the variance is zero).
    """
    marginal = cov @ weights
    variance = float(weights @ marginal)
    if not variance > 0:
        return np.zeros_like(weights)
    return weights * marginal / variance
