"""Portfolio optimization engine: pure numpy/scipy/pandas, no tornado, no database.

One entry point, :func:`optimize`, takes an aligned price frame (dates x symbols)
and parameters and returns an :class:`OptimizationResult` (weights by symbol,
statistics, whole shares, leftover cash and a chart series); ``to_dict()`` gives
its JSON form. The portfolio jobs call it from a process pool whose initializer is
:func:`configure_worker`.

Conventions
-----------
* Returns are daily simple returns of adjusted closes, ``P_t / P_{t-1} - 1``.
* Expected annual return ``μ = 252 × mean daily return``; annual covariance
  ``Σ = 252 × sample covariance`` (ddof 1). This is PyPortfolioOpt's
  ``mean_historical_return(compounding=False)`` and ``sample_cov``.
* ``risk_free_rate`` is annual (default 0). Sharpe of weights:
  ``(w'μ - rf) / √(w'Σw)``.
* Weights sum to 1 and lie within ``weight_bounds``: default ``(0, 1)`` for every
  asset (long only); caps such as ``(0, 0.3)`` and per-symbol bounds
  ``{symbol: (low, high)}`` are accepted. Bounds must lie within [0, 1]: no short
  selling or leverage.
* Buy-and-hold path: ``V_t = Σ w_i P_i,t / P_i,0`` (bought on the first date, never
  rebalanced); its Sharpe is ``√252 · mean(r_t - rf/252) / std(r_t)`` with ``r_t``
  the path's daily returns and ddof 1. Maximum drawdown is a positive fraction.
* Without ``initial_investment`` the path and chart series start at 1.0, ``shares``
  is empty and ``leftover`` and ``final_value`` are None.

Objectives (:class:`Objective`)
-------------------------------
``max_sharpe``
    Global maximum of the Sharpe ratio: exact, via the critical line of the
    efficient frontier (see :mod:`indico.optimization.frontier`).
``min_volatility``
    Minimum ``w'Σw``.
``efficient_return``
    Minimum volatility with expected return at least ``target_return`` (annual);
    the target must lie between the lowest and highest return the bounds allow.
``efficient_risk``
    Maximum expected return with volatility at most ``target_volatility``; the
    target must be at least the minimum volatility.
``buy_and_hold_sharpe``
    The seed's objective: the Sharpe ratio of the never-rebalanced path. Not
    concave; solved globally by multi-start exact-Hessian Newton (see
    :mod:`indico.optimization.buy_and_hold`).
``risk_parity``
    Equal risk contributions ``w_i (Σw)_i = w'Σw / n`` (long only).
``equal_weight``
    ``1/n`` (the nearest allowed portfolio if per-symbol bounds exclude it).
``hrp``
    Hierarchical risk parity (López de Prado 2016) within the bounds (see
    :mod:`indico.optimization.hrp`).
``min_cvar``
    Minimum historical CVaR of the daily returns at ``cvar_level``, a linear
    program (see :mod:`indico.optimization.cvar`).
``inverse_volatility``
    ``w_i = (1/σ_i) / Σ_j (1/σ_j)`` with ``σ_i = √Σ_ii``, projected (Euclidean) onto
    the bounded simplex; the equal-risk-contribution portfolio when every pairwise
    correlation is the same (Maillard, Roncalli & Teïletche 2010, *J. Portfolio
    Management* 36(4)).
``max_diversification``
    Maximum diversification ratio ``w'σ / √(w'Σw)`` (Choueifaty & Coignard 2008,
    *J. Portfolio Management* 35(1)), exact: the maximum-Sharpe solver with ``μ = σ``
    and ``rf = 0``.

Estimators
----------
``returns_model`` (``mean``, ``ema``) and ``risk_model`` (``sample``,
``ledoit_wolf``, ``exp_cov``, ``semicovariance``) replace μ and Σ above for every
objective and for the statistics (see :mod:`indico.optimization.estimators`).
Every result's ``stats`` also has ``risk_contributions`` (each symbol's share of
``w'Σw``, summing to 1) and ``cvar``, the historical CVaR of the daily returns at
``cvar_level`` (default 0.95) as a positive daily loss fraction.

Efficient frontier
------------------
:func:`efficient_frontier` walks the whole critical line once (see
:mod:`indico.optimization.frontier`) and returns evenly spaced points in expected
return from the minimum-volatility portfolio to the maximum-return one, each the
exact ``efficient_return`` portfolio for its return, the corner portfolios (where
the set of weights at a bound changes; weights are linear in the return between
two) and the maximum-Sharpe portfolio.

Sector constraints
------------------
``groups`` (``[{"name", "symbols", "min", "max"}]``) bound the sum of each group's
weights for ``max_sharpe``, ``min_volatility``, ``efficient_return``,
``efficient_risk``, ``min_cvar`` and the frontier; they are solved exactly by the
constrained QP of :mod:`indico.optimization.qp` (see :mod:`indico.optimization.groups`).

Every domain failure raises :class:`indico.error.OptimizationError` (HTTP 422)
with a message that says what to change.
"""

from indico.optimization.engine import (
    ENGINE_OPTIONS,
    WORKER_BLAS_THREADS,
    Objective,
    OptimizationResult,
    configure_worker,
    efficient_frontier,
    optimize,
)
from indico.optimization.estimators import ReturnsModel, RiskModel

__all__ = [
    "ENGINE_OPTIONS",
    "WORKER_BLAS_THREADS",
    "Objective",
    "OptimizationResult",
    "ReturnsModel",
    "RiskModel",
    "configure_worker",
    "efficient_frontier",
    "optimize",
]
