"""Input validation and the sample moments every objective starts from.

The engine takes an aligned price frame (dates x symbols) from the caller and turns
it into numpy arrays once, here; nothing after this module touches pandas. Every
check raises :class:`indico.error.OptimizationError` with a message that says how to
fix the input.
"""

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.linalg import lapack

from indico.error import OptimizationError

#: Trading days per year: μ = 252 × mean daily return, Σ = 252 × daily covariance.
TRADING_DAYS = 252

#: Fewest common dates accepted: two daily returns are needed for a sample
#: covariance with ddof 1.
MIN_DATES = 3

#: Relative ridge added to a singular covariance so the quadratic programs stay
#: strictly convex (the reported statistics always use the sample covariance).
SINGULAR_RIDGE = 1e-10

#: A squared Cholesky pivot below this fraction of the largest variance marks the
#: covariance as numerically singular.
SINGULAR_PIVOT = 1e-12


@dataclasses.dataclass(frozen=True)
class MarketData:
    """Validated prices and their annualised sample moments (read-only arrays).

    ``prices`` and ``dates`` may be views of the frame they were made of: a
    MarketData kept for later use needs a frame that is not written afterwards.

    Attributes:
        symbols: tuple of n column names, in input order.
        dates: datetime64[ns] array of shape (T,), increasing.
        prices: float array of shape (T, n), positive and finite.
        returns: daily simple returns, shape (T - 1, n).
        mu: annualised mean return, shape (n,): 252 × mean daily return.
        cov: annualised sample covariance (ddof 1), shape (n, n).
    """

    symbols: tuple
    dates: np.ndarray
    prices: np.ndarray
    returns: np.ndarray
    mu: np.ndarray
    cov: np.ndarray

    def solver_covariance(self):
        """Return the covariance for the solvers: Σ, plus a tiny ridge if singular.

        Returns:
            array of shape (n, n), positive definite.
        """
        diagonal = self.cov.diagonal()
        # LAPACK's Cholesky directly (numpy's wrapper cost more than the factorization
        # at these sizes); info > 0: not positive definite.
        factor, info = lapack.dpotrf(self.cov, lower=True)
        # Rounding can let Cholesky finish on a singular matrix (for example two
        # identical price series): a vanishing pivot gives it away.
        if info == 0 and factor.diagonal().min() ** 2 > SINGULAR_PIVOT * diagonal.max():
            return self.cov
        return self.cov + SINGULAR_RIDGE * float(np.mean(diagonal)) * np.eye(diagonal.size)


def _symbols_text(symbols, limit=10):
    shown = ", ".join(str(s) for s in symbols[:limit])
    return shown + (f" and {len(symbols) - limit} more" if len(symbols) > limit else "")


def prepare_prices(prices):
    """Validate an aligned price frame and compute its moments.

    Args:
        prices: DataFrame indexed by date (DatetimeIndex, or convertible to one),
            one float column per symbol, shape (T, n); or a :class:`MarketData`
            this function made before, returned as it is (its arrays are
            read-only, so one can serve every optimization on its frame).

    Returns:
        :class:`MarketData`.

    Raises:
        OptimizationError: not a DataFrame, no columns, duplicate symbols or dates,
            fewer than ``MIN_DATES`` dates, non-numeric, missing (NaN/inf) or
            non-positive prices, or a symbol whose price never changes.
    """
    if isinstance(prices, MarketData):
        return prices
    if not isinstance(prices, pd.DataFrame):
        raise OptimizationError(
            "prices must be a pandas DataFrame indexed by date with one column per symbol."
        )
    if prices.shape[1] == 0:
        raise OptimizationError("No symbols given: pass at least one symbol.")
    symbols = tuple(map(str, prices.columns.tolist()))
    if len(set(symbols)) != len(symbols):
        duplicates = sorted({s for s in symbols if symbols.count(s) > 1})
        raise OptimizationError(
            f"Symbols appear more than once: {_symbols_text(duplicates)}. List each once.",
            symbols=duplicates,
        )
    index = prices.index
    if not isinstance(index, pd.DatetimeIndex):
        try:
            index = pd.DatetimeIndex(index)
        except (TypeError, ValueError) as e:
            raise OptimizationError("prices must be indexed by date.") from e
    if index.tz is not None:
        index = index.tz_convert(None)
    # One comparison answers both questions below for the usual, sorted frame
    # (pandas' own checks cost more than the covariance; NaT compares False).
    stamps = index.values
    increasing = bool((stamps[1:] > stamps[:-1]).all())
    if not increasing and index.has_duplicates:
        raise OptimizationError("prices has duplicate dates; align the frame first.")
    if len(index) < MIN_DATES:
        raise OptimizationError(
            f"The symbols have {len(index)} common dates; at least {MIN_DATES} are needed "
            "(two daily returns) to estimate risk. Widen the date range or choose "
            "symbols that traded over the same period."
        )
    try:
        values = prices.to_numpy(dtype=float)
    except (TypeError, ValueError) as e:
        raise OptimizationError("prices must be numeric (adjusted closes).") from e
    if not increasing and not index.is_monotonic_increasing:
        order = np.argsort(index.values, kind="stable")
        values, index = values[order], index[order]
    # Two reductions decide the usual case (NaN fails "> 0"); _check_values then
    # names the symbols at fault.
    if not (values.min() > 0 and math.isfinite(values.max())):
        _check_values(values, symbols)
    returns = values[1:] / values[:-1]
    returns -= 1.0
    mean = returns.mean(axis=0)
    centred = returns - mean
    cov = centred.T @ centred
    # Zero exactly when every return equals the mean.
    constant = cov.diagonal() <= 1e-300
    if constant.any():
        bad = [symbols[j] for j in np.flatnonzero(constant)]
        raise OptimizationError(
            f"Constant prices for {_symbols_text(bad)} over the chosen dates: zero "
            "volatility cannot be optimised. Widen the date range or drop these symbols.",
            symbols=bad,
        )
    cov *= TRADING_DAYS / (returns.shape[0] - 1)
    # Exactly symmetric, so solvers and Cholesky see the same matrix from both sides.
    cov = 0.5 * (cov + cov.T)
    data = MarketData(
        symbols=symbols,
        dates=index.values,
        prices=values,
        returns=returns,
        mu=TRADING_DAYS * mean,
        cov=cov,
    )
    # Read-only, so that one MarketData can serve many optimizations (a worker
    # keeps one per frame): code that wrote into these arrays would raise.
    for array in (data.dates, data.prices, data.returns, data.mu, data.cov):
        array.flags.writeable = False
    return data


def _check_values(values, symbols):
    """Raise for missing (NaN, infinite) or non-positive prices, naming the symbols."""
    finite = np.isfinite(values)
    if not finite.all():
        bad = [symbols[j] for j in np.flatnonzero(~finite.all(axis=0))]
        raise OptimizationError(
            f"Missing prices for {_symbols_text(bad)} in the chosen date range. Choose "
            "dates when every symbol traded, or drop these symbols.",
            symbols=bad,
        )
    if np.any(values <= 0):
        bad = [symbols[j] for j in np.flatnonzero((values <= 0).any(axis=0))]
        raise OptimizationError(
            f"Non-positive prices for {_symbols_text(bad)}; adjusted closes must be > 0. "
            "Drop these symbols.",
            symbols=bad,
        )


def align_benchmark(benchmark, data):
    """Align a benchmark price series to the dates of ``data``.

    Gaps inside the window are forward-filled (an index and its constituents can
    have different holidays); a window that starts before the benchmark does is an
    error.

    Args:
        benchmark: pandas Series of index levels indexed by date, or None.
        data: the :class:`MarketData` of the portfolio.

    Returns:
        float array of shape (T,), or None.

    Raises:
        OptimizationError: not a Series, or no usable level on the first date.
    """
    if benchmark is None:
        return None
    if isinstance(benchmark, pd.DataFrame) and benchmark.shape[1] == 1:
        benchmark = benchmark.iloc[:, 0]
    if not isinstance(benchmark, pd.Series):
        raise OptimizationError("benchmark must be a pandas Series of index levels by date.")
    aligned = _already_aligned(benchmark, data.dates)
    if aligned is not None:
        return aligned
    series = benchmark
    if not isinstance(series.index, pd.DatetimeIndex):
        try:
            series = series.set_axis(pd.DatetimeIndex(series.index))
        except (TypeError, ValueError) as e:
            raise OptimizationError("benchmark must be indexed by date.") from e
    if series.index.tz is not None:
        series = series.tz_convert(None)
    if series.index.has_duplicates:
        series = series[~series.index.duplicated(keep="last")]
    dates = pd.DatetimeIndex(data.dates)
    try:
        aligned = pd.to_numeric(series, errors="coerce").reindex(dates).ffill()
    except (TypeError, ValueError) as e:
        raise OptimizationError("benchmark must hold numeric index levels.") from e
    values = aligned.to_numpy(dtype=float, copy=True)
    values[~(values > 0)] = np.nan
    if np.isnan(values).any():
        values = pd.Series(values).ffill().to_numpy()
    if not np.isfinite(values).all():
        raise OptimizationError(
            "The benchmark has no level on the first date of the window; choose a "
            "start date the benchmark covers."
        )
    return values


def _already_aligned(benchmark, dates):
    """The levels of a float ``benchmark`` on exactly ``dates``, all usable; else None.

    What the general path of :func:`align_benchmark` returns for such a series
    (its reindex and forward fill change nothing), without them: 0.17 ms a call,
    for the series the API's price catalog hands out already aligned on the
    frame's dates (docs/PERFORMANCE.md).
    """
    index = benchmark.index
    if (benchmark.dtype != np.float64 or not isinstance(index, pd.DatetimeIndex)
            or index.tz is not None or index.dtype != dates.dtype or len(index) != len(dates)
            or not np.array_equal(index.values, dates)):
        return None
    values = benchmark.to_numpy(dtype=float, copy=True)
    if values.size and values.min() > 0 and math.isfinite(values.max()):
        return values
    return None


def parse_bounds(weight_bounds, symbols):
    """Turn ``weight_bounds`` into per-asset lower and upper arrays.

    Args:
        weight_bounds: a ``(low, high)`` pair for every asset, or a mapping
            ``{symbol: (low, high)}`` (symbols not in it get ``(0, 1)``).
        symbols: tuple of n symbols.

    Returns:
        ``(lower, upper)``, float arrays of shape (n,).

    Raises:
        OptimizationError: malformed pairs, bounds outside [0, 1] (short selling and
            leverage are not supported), low > high, or a mapping naming a symbol
            that is not in the portfolio.
    """
    n = len(symbols)
    if isinstance(weight_bounds, Mapping):
        unknown = [s for s in weight_bounds if s not in symbols]
        if unknown:
            raise OptimizationError(
                f"weightBounds names symbols not in the portfolio: {_symbols_text(unknown)}.",
                symbols=unknown,
            )
        pairs = [_parse_pair(weight_bounds.get(s, (0.0, 1.0)), s) for s in symbols]
        lower = np.array([p[0] for p in pairs])
        upper = np.array([p[1] for p in pairs])
    else:
        low, high = _parse_pair(weight_bounds, None)
        lower, upper = np.full(n, low), np.full(n, high)
    return lower, upper


def _parse_pair(pair, symbol):
    where = f" for {symbol}" if symbol is not None else ""
    try:
        low, high = pair
        low, high = float(low), float(high)
    except (TypeError, ValueError) as e:
        raise OptimizationError(
            f"weightBounds{where} must be a pair [low, high] of numbers, e.g. [0, 0.3]."
        ) from e
    if not (math.isfinite(low) and math.isfinite(high)):
        raise OptimizationError(f"weightBounds{where} must be finite numbers.")
    if low < 0.0 or high > 1.0:
        raise OptimizationError(
            f"weightBounds{where} must lie within [0, 1]: short selling and leverage "
            "are not supported."
        )
    if low > high:
        raise OptimizationError(f"weightBounds{where}: low ({low}) exceeds high ({high}).")
    return low, high
