"""Estimators of expected returns (μ) and risk (Σ) that the objectives start from.

:func:`estimate` replaces the sample moments of a :class:`MarketData` with the chosen
models; with the defaults (``mean``, ``sample``) it returns the data unchanged, so
results of the default request never change. Pure numpy. ``r_t`` are the daily
simple returns (T rows, n columns), ``r̄`` their column means, ``F = 252``
(:data:`indico.optimization.data.TRADING_DAYS`).

Returns models (:class:`ReturnsModel`)
--------------------------------------
``mean``
    ``μ = F · r̄`` (PyPortfolioOpt ``mean_historical_return(compounding=False)``).
``ema``
    Exponentially weighted mean with span ``s``: ``α = 2 / (s + 1)``, weights
    ``v_t = (1 - α)^(T-1-t) / Σ_u (1 - α)^(T-1-u)`` (the newest return weighs most),
    ``μ = F · Σ_t v_t r_t``. This is pandas' ``ewm(span=s, adjust=True).mean()`` at
    the last date, i.e. PyPortfolioOpt ``ema_historical_return(prices,
    compounding=False, span=s)``.

Risk models (:class:`RiskModel`)
--------------------------------
``sample``
    ``Σ = F · (r - r̄)'(r - r̄) / (T - 1)`` (PyPortfolioOpt ``sample_cov``).
``ledoit_wolf``
    Ledoit & Wolf (2004), "A well-conditioned estimator for large-dimensional
    covariance matrices", J. Multivariate Anal. 88(2), with the constant-variance
    target: with ``X = r - r̄``, ``S = X'X / T`` (ddof 0), ``m = tr(S) / n``,
    ``d² = ‖S - m I‖²_F / n``,
    ``b̄² = (Σ_t ‖x_t x_t' - S‖²_F) / (n T²)`` computed as
    ``(Σ_ij ((X∘X)'(X∘X))_ij / T - ‖S‖²_F) / (n T)``, ``b² = min(b̄², d²)``,
    shrinkage ``δ = b² / d²`` and ``Σ = F · ((1 - δ) S + δ m I)``. This is
    scikit-learn's ``ledoit_wolf`` as used by PyPortfolioOpt
    ``CovarianceShrinkage(prices).ledoit_wolf()``.
``exp_cov``
    Exponentially weighted covariance with span ``s`` (weights ``v_t`` as for
    ``ema``) of the returns centred on their plain means:
    ``Σ = F · (r - r̄)' diag(v) (r - r̄)`` (PyPortfolioOpt ``exp_cov(prices,
    span=s)``).
``semicovariance``
    Markowitz (1959) downside semicovariance below the benchmark ``B``:
    ``D = min(r - B, 0)``, ``Σ = F · D'D / T`` (PyPortfolioOpt ``semicovariance(prices,
    benchmark=B)``); the engine uses ``B = riskFreeRate / 252``.

All four matrices are positive semidefinite by construction (Gram matrices or a
convex combination with ``m I``), so PyPortfolioOpt's ``fix_nonpositive_semidefinite``
never changes them; a risk model that leaves an asset without variance (no return
below the semicovariance benchmark) is refused with a message saying what to change.
"""

import dataclasses
import enum

import numpy as np

from indico.error import OptimizationError
from indico.optimization.data import TRADING_DAYS, MarketData

#: Default spans, as PyPortfolioOpt's.
DEFAULT_RETURNS_SPAN = 500
DEFAULT_RISK_SPAN = 180

#: Accepted range of both spans (days).
MIN_SPAN = 2
MAX_SPAN = 5000


class ReturnsModel(enum.StrEnum):
    """How expected returns μ are estimated."""

    MEAN = "mean"
    EMA = "ema"


class RiskModel(enum.StrEnum):
    """How the covariance Σ is estimated."""

    SAMPLE = "sample"
    LEDOIT_WOLF = "ledoit_wolf"
    EXP_COV = "exp_cov"
    SEMICOVARIANCE = "semicovariance"


def ewm_weights(count: int, span: int) -> np.ndarray:
    """Normalised exponential weights of ``count`` observations, newest last.

    Args:
        count: T, the number of observations.
        span: the span s; ``α = 2 / (s + 1)``.

    Returns:
        array of shape (T,), positive (or zero by underflow for very old rows),
        summing to 1.
    """
    alpha = 2.0 / (span + 1.0)
    ages = np.arange(count - 1, -1, -1, dtype=float)
    weights = np.power(1.0 - alpha, ages)
    return weights / weights.sum()


def ema_returns(returns: np.ndarray, span: int) -> np.ndarray:
    """Annualised exponentially weighted mean return.

    Args:
        returns: daily returns, shape (T, n).
        span: the span s.

    Returns:
        μ, shape (n,).
    """
    return TRADING_DAYS * (ewm_weights(returns.shape[0], span) @ returns)


def ledoit_wolf(returns: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrinkage towards the constant-variance target, annualised.

    Args:
        returns: daily returns, shape (T, n).

    Returns:
        ``(Σ, δ)``: the shrunk annual covariance, shape (n, n), and the shrinkage
        intensity δ in [0, 1].
    """
    count, n = returns.shape
    centred = returns - returns.mean(axis=0)
    sample = centred.T @ centred / count
    target = np.trace(sample) / n
    squared = centred * centred
    distance = (np.sum(sample * sample) - 2.0 * target * np.trace(sample) + n * target**2) / n
    spread = (np.sum(squared.T @ squared) / count - np.sum(sample * sample)) / (n * count)
    spread = min(spread, distance)
    shrinkage = 0.0 if spread == 0 else spread / distance
    shrunk = (1.0 - shrinkage) * sample
    shrunk[np.diag_indices(n)] += shrinkage * target
    return TRADING_DAYS * shrunk, float(shrinkage)


def exp_cov(returns: np.ndarray, span: int) -> np.ndarray:
    """Annualised exponentially weighted covariance of returns centred on their means.

    Args:
        returns: daily returns, shape (T, n).
        span: the span s.

    Returns:
        Σ, shape (n, n).
    """
    centred = returns - returns.mean(axis=0)
    weights = ewm_weights(returns.shape[0], span)
    return TRADING_DAYS * (centred.T @ (centred * weights[:, None]))


def semicovariance(returns: np.ndarray, benchmark: float) -> np.ndarray:
    """Annualised downside semicovariance below a daily ``benchmark`` return.

    Args:
        returns: daily returns, shape (T, n).
        benchmark: the daily return below which deviations count.

    Returns:
        Σ, shape (n, n).
    """
    drops = np.minimum(returns - benchmark, 0.0)
    return TRADING_DAYS * (drops.T @ drops) / returns.shape[0]


def estimate(
    data: MarketData,
    returns_model: ReturnsModel = ReturnsModel.MEAN,
    returns_span: int = DEFAULT_RETURNS_SPAN,
    risk_model: RiskModel = RiskModel.SAMPLE,
    risk_span: int = DEFAULT_RISK_SPAN,
    risk_free_rate: float = 0.0,
) -> MarketData:
    """Return ``data`` with μ and Σ from the chosen models.

    Args:
        data: validated prices with their sample moments.
        returns_model, risk_model: the models (enums or their values).
        returns_span: span of ``ema``; risk_span: span of ``exp_cov``
            (both within [MIN_SPAN, MAX_SPAN]).
        risk_free_rate: annual; ``semicovariance`` counts returns below a 252nd of it.

    Returns:
        a :class:`MarketData` (``data`` itself for ``mean`` and ``sample``).

    Raises:
        OptimizationError: an unknown model, a span out of range, or a covariance
            that leaves some asset without variance.
    """
    returns_model = parse_choice(ReturnsModel, returns_model, "returnsModel")
    risk_model = parse_choice(RiskModel, risk_model, "riskModel")
    mu, cov = data.mu, data.cov
    if returns_model is ReturnsModel.EMA:
        mu = ema_returns(data.returns, _span(returns_span, "returnsSpan"))
    if risk_model is RiskModel.LEDOIT_WOLF:
        cov = ledoit_wolf(data.returns)[0]
    elif risk_model is RiskModel.EXP_COV:
        cov = exp_cov(data.returns, _span(risk_span, "riskSpan"))
    elif risk_model is RiskModel.SEMICOVARIANCE:
        cov = semicovariance(data.returns, risk_free_rate / TRADING_DAYS)
    if mu is data.mu and cov is data.cov:
        return data
    if cov is not data.cov:
        # Exactly symmetric, as the sample covariance (see data.prepare_prices).
        cov = 0.5 * (cov + cov.T)
        flat = np.flatnonzero(np.diag(cov) <= 1e-300)
        if flat.size:
            names = ", ".join(data.symbols[j] for j in flat[:10])
            raise OptimizationError(
                f"riskModel {risk_model.value} gives no variance to {names}"
                + (" (no daily return below riskFreeRate/252)"
                   if risk_model is RiskModel.SEMICOVARIANCE else "")
                + "; use riskModel sample, a higher riskFreeRate, a longer date range, "
                "or drop these symbols.",
                symbols=[data.symbols[j] for j in flat],
            )
    return dataclasses.replace(data, mu=mu, cov=cov)


def parse_choice(kind, value, name):
    """``kind(value)`` for an enum ``kind``.

    Raises:
        OptimizationError: an unknown value, naming ``name`` and the valid choices.
    """
    try:
        return kind(value)
    except ValueError as e:
        valid = ", ".join(member.value for member in kind)
        raise OptimizationError(f"Unknown {name} {value!r}; use one of: {valid}.") from e


def _span(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
        MIN_SPAN <= value <= MAX_SPAN
    ):
        raise OptimizationError(
            f"{name} must be a whole number of days from {MIN_SPAN} to {MAX_SPAN}."
        )
    return int(value)
