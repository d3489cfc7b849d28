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

which is PyPortfolioOpt's ``EfficientCVaR(...).min_cvar()``; solved here by HiGHS
(``scipy.optimize.linprog``) with a sparse constraint matrix, its status checked.
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
    losses = np.sort(-np.asarray(portfolio_returns, dtype=float))[::-1]
    tail = (1.0 - level) * losses.size
    whole = min(math.floor(tail), losses.size)
    total = float(losses[:whole].sum())
    if whole < losses.size:
        total += (tail - whole) * float(losses[whole])
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
    cost = np.concatenate((np.zeros(n), [1.0], np.full(count, 1.0 / ((1.0 - level) * count))))
    # -R w - a - u <= 0, one row per day.
    inequality = sparse.hstack((
        sparse.csr_matrix(-returns), sparse.csr_matrix(-np.ones((count, 1))),
        -sparse.identity(count, format="csr"),
    ), format="csr")
    bound = np.zeros(count)
    if extra_rows is not None:
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
