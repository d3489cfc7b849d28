"""Statistics of weights and of the buy-and-hold value path, and chart series.

Conventions (see the package docstring): daily simple returns; the annual
risk-free rate enters daily as ``rf / 252``; standard deviations use ddof 1.
Maximum drawdown is reported as a positive fraction (0.35 means the value fell
35 % below its running peak at worst).
"""

import math

import numpy as np

from indico.optimization.data import TRADING_DAYS

#: Most points in a chart series; longer paths are sampled at even steps (the first
#: and last dates are always kept).
MAX_SERIES_POINTS = 500


def finite_or_none(value):
    """Return ``value`` as a Python float, or None when it is NaN or infinite."""
    value = float(value)
    return value if math.isfinite(value) else None


def weight_statistics(weights, mu, cov, risk_free_rate):
    """Expected annual return, annual volatility and Sharpe ratio of ``weights``.

    Args:
        weights, mu: arrays of shape (n,).
        cov: array of shape (n, n).
        risk_free_rate: annual.

    Returns:
        dict with ``expected_return``, ``volatility``, ``sharpe`` (None when the
        volatility is zero).
    """
    expected = float(mu @ weights)
    volatility = math.sqrt(max(float(weights @ cov @ weights), 0.0))
    return _weight_statistics(expected, volatility, risk_free_rate)


def weight_statistics_rows(weights, mu, cov, risk_free_rate):
    """:func:`weight_statistics` of each row of ``weights``, in one pass.

    Args:
        weights: array of shape (k, n), one portfolio a row.
        mu: array of shape (n,); cov: array of shape (n, n).
        risk_free_rate: annual.

    Returns:
        list of k dicts, as :func:`weight_statistics` (equal to rounding).
    """
    expected = weights @ mu
    variance = np.einsum("ij,ij->i", weights @ cov, weights)
    volatility = np.sqrt(np.maximum(variance, 0.0))
    return [_weight_statistics(e, v, risk_free_rate)
            for e, v in zip(expected.tolist(), volatility.tolist(), strict=True)]


def _weight_statistics(expected, volatility, risk_free_rate):
    sharpe = (expected - risk_free_rate) / volatility if volatility > 0 else None
    return {
        "expected_return": finite_or_none(expected),
        "volatility": finite_or_none(volatility),
        "sharpe": None if sharpe is None else finite_or_none(sharpe),
    }


def path_statistics(values, risk_free_rate, initial_investment):
    """Statistics of a value path (portfolio or index), bought once and held.

    Args:
        values: array of shape (T,), positive (any scale).
        risk_free_rate: annual.
        initial_investment: amount invested on the first date, or None.

    Returns:
        dict with ``cumulative_return``, ``mean_daily_return``, ``std_daily_return``,
        ``sharpe`` (√252 · mean(r - rf/252) / std(r)), ``max_drawdown`` (positive
        fraction) and ``final_value`` (None without an initial investment).
    """
    daily = values[1:] / values[:-1]
    daily -= 1.0
    # numpy's mean and std(ddof=1), step by step (the same operations, so the same
    # values) without their per-call overhead or the std's second mean.
    mean = float(daily.sum()) / daily.size if daily.size else math.nan
    std = 0.0
    if daily.size > 1:
        centred = daily - mean
        std = math.sqrt(float((centred * centred).sum()) / (daily.size - 1))
    sharpe = (
        math.sqrt(TRADING_DAYS) * (mean - risk_free_rate / TRADING_DAYS) / std
        if std > 0
        else None
    )
    growth = float(values[-1] / values[0])
    # The largest drawdown 1 - v/peak is at the smallest ratio (rounding is monotone).
    drawdown = 1.0 - float((values / np.maximum.accumulate(values)).min())
    return {
        "cumulative_return": finite_or_none(growth - 1.0),
        "mean_daily_return": finite_or_none(mean),
        "std_daily_return": finite_or_none(std),
        "sharpe": None if sharpe is None else finite_or_none(sharpe),
        "max_drawdown": finite_or_none(max(drawdown, 0.0)),
        "final_value": (
            None if initial_investment is None else finite_or_none(initial_investment * growth)
        ),
    }


def series_indices(length, max_points=MAX_SERIES_POINTS):
    """Indices of at most ``max_points`` evenly spread points of a path of ``length``.

    Returns:
        int array, strictly increasing, starting at 0 and ending at ``length - 1``.
    """
    if length <= max_points:
        return np.arange(length)
    # The points are more than 1 apart, so their rounded values are distinct and
    # increasing (no np.unique needed: it cost more than the rest of the statistics).
    # np.linspace(0, length - 1, max_points) computes the same i * step, at several
    # times the cost at this size.
    step = (length - 1) / (max_points - 1)
    return (np.arange(max_points, dtype=float) * step).round().astype(np.int64)
