"""Walk-forward backtests: re-optimize on a rolling window, hold, pay costs, compare.

Pure numpy/pandas; one aligned price frame in, the whole JSON-ready result out.
The job plumbing (``indico.services.jobs``) calls the three steps separately so it
can report progress and check for cancellation between chunks of rebalances:

1. :func:`plan_backtest` — the rebalance dates and their windows (cheap; also run
   at request time, so a symbol without enough history is a 422 before a job
   exists);
2. :func:`rebalance_weights` — the weights of some rebalances, each exactly
   :func:`indico.optimization.optimize` on its window (the expensive part);
3. :func:`simulate` — trading, costs, buy and hold, equal weight, the index, the
   series and the statistics.

:func:`walk_forward` runs all three with a progress callback.

The rules (issue 14), on the trading days of the aligned frame ``P`` (dates x n)
------------------------------------------------------------------------------
* **Rebalance dates.** ``monthly`` / ``quarterly`` / ``yearly``: the first trading
  day on or after ``startDate``, then the first trading day of each later calendar
  month / quarter (Jan, Apr, Jul, Oct) / year, up to ``endDate``. An integer ``N``:
  the first trading day on or after ``startDate`` and every ``N`` trading days
  after it, up to ``endDate``. (When ``startDate`` is the first trading day of its
  period — the usual case — both readings of "the first trading day of each
  period from ``startDate``" agree; a mid-period ``startDate`` starts investing on
  that day rather than sitting in cash until the next period.)
* **Windows.** Rebalance ``k`` on row ``t_k`` optimizes on the ``lookbackDays``
  prices of rows ``[t_k - lookbackDays, t_k)``: they end the trading day before
  ``t_k`` and may reach before ``startDate`` (history, not performance). The
  weights are exactly ``optimize(P.iloc[t_k - L : t_k], **options).weights`` — the
  answer of ``portfolio/optimize`` with that window's first and last dates — so
  nothing on or after ``t_k`` is seen (no look-ahead). If the frame has fewer than
  ``L`` trading days before the first rebalance the backtest is refused (422),
  naming the symbols whose first stored date starts the aligned frame.
* **Trading** at the close of ``t``. With holdings ``h`` (shares, 0 before the
  first rebalance, which starts from cash ``V = initialInvestment``),
  ``V = h · P_t`` (cash on the first), drifted weights ``d = h ⊙ P_t / V``
  (0 on the first) and new weights ``w``::

      turnover = Σ |w_i - d_i|
      cost     = V × turnover × costBps / 10 000
      h_new    = w (V - cost) / P_t        (fractional shares)

* **Buy and hold** between rebalances: ``h`` is constant and the value
  ``V_s = h · P_s`` is marked at every close ``s`` from the first rebalance to the
  last trading day on or before ``endDate``. On a rebalance day the mark is after
  the trade (``V - cost``).
* **Equal weight** is the same simulation with ``w = 1/n`` on the same dates, with
  the same costs. **Index**: the benchmark level forward-filled onto the trading
  days, scaled to ``initialInvestment`` at the first rebalance.

Series: every close from the first rebalance to ``endDate``'s close when there are
at most 500; otherwise 500 points at even steps (indices ``round(linspace(0, T-1,
500))``, :func:`indico.optimization.performance.series_indices`), so the first
rebalance and the last close are always in.

Statistics (strategy and equal weight), from the marked values ``V_0 .. V_T`` and
the daily returns ``r_s = V_s / V_{s-1} - 1`` (ddof 1, ``rf`` annual, daily
``rf/252``; :func:`indico.optimization.performance.path_statistics`):

* ``total_return = V_T / initialInvestment - 1`` (the first trade's cost counts);
* ``cagr = (V_T / initialInvestment)^(1/y) - 1`` with ``y`` the calendar years
  from the first rebalance to the last close (days / 365.25);
* ``volatility = √252 · std(r)``; ``sharpe = √252 · mean(r - rf/252) / std(r)``;
* ``sortino = √252 · mean(r - rf/252) / DD`` with the downside deviation
  ``DD = √mean(min(r - rf/252, 0)²)`` (Sortino & Price 1994, target ``rf``);
* ``max_drawdown``: the largest fall below the running peak of ``V``, a positive
  fraction; ``calmar = cagr / max_drawdown`` (Young 1991);
* ``turnover``: ``Σ_k turnover_k / y`` (average per year, the first purchase from
  cash included); ``costs``: ``Σ_k cost_k`` in money.

A value that is undefined (one close only, zero volatility or drawdown) is None.

References: Portfolio Visualizer, "Rolling Optimization" (portfoliovisualizer.com/
optimize-portfolio, rolling window, rebalance at period starts); skfolio
``skfolio.model_selection.WalkForward`` (train on ``train_size`` observations,
test on the next ``test_size``; ``freq`` for calendar rebalancing) with
``cross_val_predict``; Sortino & Price (1994), *J. Investing* 3(3); Young (1991),
"Calmar ratio", *Futures*.
"""

import dataclasses
import enum
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from indico.error import OptimizationError
from indico.optimization import performance
from indico.optimization.data import TRADING_DAYS, align_benchmark
from indico.optimization.engine import optimize

#: The fewest and most trading days a window may hold (``lookbackDays``).
MIN_LOOKBACK_DAYS, MAX_LOOKBACK_DAYS = 20, 5000

#: The fewest and most trading days between rebalances when ``rebalance`` is a number.
MIN_REBALANCE_DAYS, MAX_REBALANCE_DAYS = 5, 2520

#: The highest ``costBps`` accepted (10 % of the traded value).
MAX_COST_BPS = 1000.0

#: Calendar days per year for the CAGR and the yearly turnover.
DAYS_PER_YEAR = 365.25

#: Options of :func:`indico.optimization.optimize` a backtest must not pass per
#: window: they concern the whole backtest, not one window's weights.
_NOT_WINDOW_OPTIONS = ("initial_investment", "benchmark")


class Rebalance(enum.StrEnum):
    """Calendar periods whose first trading day is a rebalance date."""

    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"


#: Months per period of each :class:`Rebalance`.
_PERIOD_MONTHS = {Rebalance.MONTHLY: 1, Rebalance.QUARTERLY: 3, Rebalance.YEARLY: 12}


@dataclasses.dataclass(frozen=True)
class BacktestPlan:
    """The rebalance dates of a backtest and their windows.

    Attributes:
        dates: the trading days of the aligned frame used, history and performance
            (up to ``endDate``), shape (T,).
        rebalance_rows: int array of shape (K,), increasing: the rows into ``dates``
            of the rebalance dates.
        lookback_days: L; the window of rebalance k is rows
            ``[rebalance_rows[k] - L, rebalance_rows[k])``.
    """

    dates: pd.DatetimeIndex
    rebalance_rows: np.ndarray
    lookback_days: int

    @property
    def total(self) -> int:
        """The number of rebalances."""
        return int(self.rebalance_rows.size)

    def window(self, k: int) -> slice:
        """Rows of the lookback window of rebalance ``k`` (ends the day before it)."""
        row = int(self.rebalance_rows[k])
        return slice(row - self.lookback_days, row)


def _timestamp(value: Any, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as e:
        raise OptimizationError(f"{name} must be a date (YYYY-MM-DD).") from e
    if stamp is pd.NaT:
        raise OptimizationError(f"{name} must be a date (YYYY-MM-DD).")
    if stamp.tz is not None:
        stamp = stamp.tz_convert(None)
    return stamp


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            low <= value <= high):
        raise OptimizationError(f"{name} must be an integer within [{low}, {high}].")
    return int(value)


def parse_rebalance(rebalance: Any) -> Rebalance | int:
    """Return ``rebalance`` as a :class:`Rebalance` or a number of trading days.

    Args:
        rebalance: ``"monthly"``, ``"quarterly"``, ``"yearly"`` (or the enum), or an
            integer within [5, 2520].

    Returns:
        :class:`Rebalance` or int.

    Raises:
        OptimizationError: anything else.
    """
    if isinstance(rebalance, str):
        try:
            return Rebalance(rebalance)
        except ValueError:
            pass
    elif isinstance(rebalance, (int, np.integer)) and not isinstance(rebalance, bool):
        if MIN_REBALANCE_DAYS <= rebalance <= MAX_REBALANCE_DAYS:
            return int(rebalance)
    choices = ", ".join(f'"{r.value}"' for r in Rebalance)
    raise OptimizationError(
        f"rebalance must be {choices} or an integer number of trading days within "
        f"[{MIN_REBALANCE_DAYS}, {MAX_REBALANCE_DAYS}].")


def _dates_of(prices: Any) -> pd.DatetimeIndex:
    if not isinstance(prices, pd.DataFrame) or prices.shape[1] == 0:
        raise OptimizationError(
            "prices must be a pandas DataFrame indexed by date with one column per symbol.")
    index = prices.index
    if not isinstance(index, pd.DatetimeIndex):
        raise OptimizationError("prices must be indexed by date (a DatetimeIndex).")
    if index.tz is not None:
        index = index.tz_convert(None)
    if not index.is_monotonic_increasing or index.has_duplicates:
        raise OptimizationError("prices must have increasing, distinct dates; align the frame.")
    return index


def rebalance_rows(dates: pd.DatetimeIndex, first: int, rebalance: Rebalance | int) -> np.ndarray:
    """The rows of the rebalance dates among ``dates[first:]`` (see the module rules).

    Args:
        dates: trading days, increasing, shape (T,).
        first: the row of the first rebalance (the first trading day on or after
            ``startDate``).
        rebalance: a :class:`Rebalance` or a number of trading days.

    Returns:
        int array, increasing, starting at ``first``.
    """
    if isinstance(rebalance, Rebalance):
        months = dates.values[first:].astype("datetime64[M]").astype(np.int64)
        periods = months // _PERIOD_MONTHS[rebalance]  # month 0 is January 1970
        starts = np.flatnonzero(np.diff(periods)) + 1
        return np.concatenate(([first], first + starts)).astype(np.int64)
    return np.arange(first, len(dates), rebalance, dtype=np.int64)


def plan_backtest(prices: pd.DataFrame, *, start_date: Any, end_date: Any,
                  lookback_days: int, rebalance: str | int,
                  first_dates: Mapping[str, pd.Timestamp] | None = None) -> BacktestPlan:
    """The rebalance dates of a backtest and checks that every window has its history.

    Args:
        prices: the aligned adjusted closes of the chosen symbols, DataFrame of shape
            (T, n) with an increasing DatetimeIndex, from as early as stored up to
            ``end_date`` (later dates are ignored).
        start_date, end_date: first and last date of the performance (date-like).
        lookback_days: trading days (prices) each window holds, within [20, 5000].
        rebalance: see :func:`parse_rebalance`.
        first_dates: each symbol's own first stored date, to name the symbols
            whose late start limits the aligned frame; None names them all.

    Returns:
        :class:`BacktestPlan`.

    Raises:
        OptimizationError: invalid arguments, no trading day in
            [``start_date``, ``end_date``], or fewer than ``lookback_days`` trading
            days before the first rebalance (``symbols`` lists the ones to blame).
    """
    dates = _dates_of(prices)
    start = _timestamp(start_date, "startDate")
    end = _timestamp(end_date, "endDate")
    if end < start:
        raise OptimizationError("endDate is before startDate.")
    lookback_days = _integer(lookback_days, "lookbackDays", MIN_LOOKBACK_DAYS, MAX_LOOKBACK_DAYS)
    period = parse_rebalance(rebalance)
    dates = dates[: int(dates.searchsorted(end, side="right"))]
    first = int(dates.searchsorted(start, side="left"))
    if first >= len(dates):
        raise OptimizationError(
            f"No trading day common to all symbols between {start.date()} and {end.date()}; "
            "choose other dates or other symbols.")
    if first < lookback_days:
        raise _short_history(prices, dates, first, lookback_days, first_dates)
    rows = rebalance_rows(dates, first, period)
    return BacktestPlan(dates=dates, rebalance_rows=rows, lookback_days=lookback_days)


def _short_history(prices: pd.DataFrame, dates: pd.DatetimeIndex, first: int,
                   lookback_days: int, first_dates: Mapping[str, Any] | None
                   ) -> OptimizationError:
    """The 422 for a first rebalance with fewer than ``lookback_days`` days before it."""
    symbols = [str(s) for s in prices.columns]
    if first_dates:
        late = [s for s in symbols
                if s in first_dates and _timestamp(first_dates[s], s) >= dates[0]]
        symbols = late or symbols
    names = ", ".join(symbols[:10]) + (f" and {len(symbols) - 10} more" if len(symbols) > 10
                                       else "")
    advice = [f"a startDate on or after {dates[lookback_days].date()}"
              if len(dates) > lookback_days else "later dates"]
    if first >= MIN_LOOKBACK_DAYS:
        advice.append(f"lookbackDays of at most {first}")
    return OptimizationError(
        f"{names} {'has' if len(symbols) == 1 else 'have'} only {first} trading days of "
        f"prices (common to all symbols, from {dates[0].date()}) before the first rebalance "
        f"on {dates[first].date()}; lookbackDays needs {lookback_days}. Choose "
        f"{', '.join(advice)}, or drop {names}.",
        symbols=symbols, field="lookbackDays")


def _checked_frame(prices: pd.DataFrame, plan: BacktestPlan) -> pd.DataFrame:
    """``prices`` cut to the plan's dates; a frame the plan was not made for is a bug."""
    frame = prices.iloc[: len(plan.dates)]
    if len(frame) != len(plan.dates) or frame.index[0] != plan.dates[0] or (
            frame.index[-1] != plan.dates[-1]):
        raise ValueError("prices are not the frame this BacktestPlan was made from")
    return frame


def _check_options(options: Mapping[str, Any]) -> None:
    misplaced = [name for name in _NOT_WINDOW_OPTIONS if name in options]
    if misplaced:
        raise ValueError(f"not a per-window option: {', '.join(misplaced)}")


def rebalance_weights(prices: pd.DataFrame, plan: BacktestPlan, ks: Sequence[int],
                      options: Mapping[str, Any]) -> list[np.ndarray]:
    """The weights chosen at rebalances ``ks``, each optimized on its window only.

    Args:
        prices: the frame :func:`plan_backtest` was given.
        plan: its :class:`BacktestPlan`.
        ks: rebalance numbers within ``[0, plan.total)``.
        options: keyword options of :func:`indico.optimization.optimize` (objective,
            risk_free_rate, weight_bounds, targets, estimators, ...), never
            ``initial_investment`` or ``benchmark``.

    Returns:
        list of float arrays of shape (n,), one per ``k``, in the order of ``ks``:
        ``optimize(prices.iloc[plan.window(k)], **options).weights``.

    Raises:
        OptimizationError: the engine refused a window (for example ``max_sharpe``
            when no asset's mean return beats the risk-free rate); the message
            names the rebalance date and its window.
        ValueError: ``options`` holds a whole-backtest option, ``ks`` a number out
            of range, or ``prices`` is not the plan's frame.
    """
    _check_options(options)
    ks = [int(k) for k in ks]
    if not ks:
        return []
    if min(ks) < 0 or max(ks) >= plan.total:
        raise ValueError(f"rebalances must lie within [0, {plan.total})")
    windows = _Windows(prices, plan, min(ks), max(ks))
    return [windows.weights(k, options) for k in ks]


class _Windows:
    """The lookback windows of rebalances ``low`` to ``high`` over one float64 block.

    A frame read column by column (``read_csv``, ``concat``) holds one block per
    column; then every window's ``to_numpy`` interleaves them again. Measured on the
    sample (20 symbols, 240 monthly max_sharpe windows, busy machine): 0.38 s ->
    0.13-0.20 s for the weights. Only the rows these windows span are copied, once.
    Same floats, so the same weights.
    """

    def __init__(self, prices: pd.DataFrame, plan: BacktestPlan, low: int, high: int) -> None:
        self.plan = plan
        self.first = int(plan.rebalance_rows[low]) - plan.lookback_days
        part = _checked_frame(prices, plan).iloc[self.first: int(plan.rebalance_rows[high])]
        try:
            values = part.to_numpy(dtype=float)
        except (TypeError, ValueError):
            self.frame = part  # not numeric: optimize() says so for the first window
        else:
            self.frame = pd.DataFrame(values, index=part.index, columns=part.columns,
                                      copy=False)

    def weights(self, k: int, options: Mapping[str, Any]) -> np.ndarray:
        """``optimize(window of k, **options).weights``; a refusal names the rebalance."""
        rows = self.plan.window(k)
        window = self.frame.iloc[rows.start - self.first: rows.stop - self.first]
        try:
            return optimize(window, **options).weights
        except OptimizationError as e:
            date = self.plan.dates[self.plan.rebalance_rows[k]].date()
            raise OptimizationError(
                f"The rebalance on {date} (window {window.index[0].date()} to "
                f"{window.index[-1].date()}) failed: {e.message}",
                **{**e.details, "rebalance_date": str(date)}) from e


@dataclasses.dataclass(frozen=True)
class _Path:
    """One simulated strategy: the marked values and each rebalance's trade."""

    values: np.ndarray     # (S,) value at every close from the first rebalance
    turnover: np.ndarray   # (K,)
    cost: np.ndarray       # (K,)


def _trade(prices: np.ndarray, starts: np.ndarray, weights: Sequence[np.ndarray],
           initial_investment: float, rate: float) -> _Path:
    """Run the trading rules (module docstring) over the performance prices.

    Args:
        prices: (S, n) closes from the first rebalance to the last close.
        starts: (K,) rows into ``prices`` of the rebalances; ``starts[0] == 0``.
        weights: K arrays of shape (n,).
        initial_investment: cash before the first rebalance.
        rate: ``costBps / 10 000``.
    """
    values = np.empty(prices.shape[0])
    turnover = np.empty(starts.size)
    cost = np.empty(starts.size)
    ends = np.append(starts[1:], prices.shape[0])
    holdings = np.zeros(prices.shape[1])
    for k, (row, stop) in enumerate(zip(starts, ends, strict=True)):
        close = prices[row]
        if k == 0:
            value, drifted = initial_investment, np.zeros_like(close)
        else:
            marked = holdings * close
            value = float(marked.sum())
            drifted = marked / value
        turnover[k] = float(np.abs(weights[k] - drifted).sum())
        cost[k] = value * turnover[k] * rate
        holdings = weights[k] * (value - cost[k]) / close
        values[row:stop] = prices[row:stop] @ holdings
    return _Path(values=values, turnover=turnover, cost=cost)


def _statistics(path: _Path, initial_investment: float, years: float,
                risk_free_rate: float) -> dict[str, float | None]:
    """The stats of one simulated strategy (module docstring)."""
    values = path.values
    final = performance.finite_or_none
    growth = float(values[-1]) / initial_investment
    cagr = growth ** (1.0 / years) - 1.0 if years > 0 else None
    if values.size > 1:
        held = performance.path_statistics(values, risk_free_rate, None)
        std, sharpe, drawdown = (held["std_daily_return"], held["sharpe"],
                                 held["max_drawdown"])
        excess = values[1:] / values[:-1] - 1.0 - risk_free_rate / TRADING_DAYS
        downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
        sortino = (math.sqrt(TRADING_DAYS) * float(excess.mean()) / downside
                   if downside > 0 else None)
    else:
        std = sharpe = drawdown = sortino = None
    return {
        "total_return": final(growth - 1.0),
        "cagr": None if cagr is None else final(cagr),
        "volatility": None if not std else final(math.sqrt(TRADING_DAYS) * std),
        "sharpe": sharpe if std else None,
        "sortino": None if sortino is None else final(sortino),
        "max_drawdown": drawdown,
        "calmar": (final(cagr / drawdown) if cagr is not None and drawdown else None),
        "turnover": final(path.turnover.sum() / years) if years > 0 else None,
        "costs": final(path.cost.sum()),
    }


def _plain(values: np.ndarray) -> list[float | None]:
    return [performance.finite_or_none(v) for v in values.tolist()]


def simulate(prices: pd.DataFrame, benchmark: pd.Series | None, plan: BacktestPlan,
             weights: Sequence[np.ndarray], *, cost_bps: float, initial_investment: float,
             risk_free_rate: float = 0.0) -> dict[str, Any]:
    """Trade the chosen weights, and equal weight, over the plan; the JSON result.

    Args:
        prices: the frame :func:`plan_backtest` was given, shape (T, n).
        benchmark: index levels (Series by date) or None.
        plan: its :class:`BacktestPlan`.
        weights: ``plan.total`` arrays of shape (n,), rebalance order (from
            :func:`rebalance_weights`).
        cost_bps: cost in basis points of the traded value, within [0, 1000].
        initial_investment: cash at the first rebalance, > 0.
        risk_free_rate: annual, for the Sharpe and Sortino ratios.

    Returns:
        ``{"rebalances": [{"date", "weights": {symbol: w}, "turnover", "cost"}],
        "series": {"dates", "strategy", "equal_weight", "index"},
        "stats": {"strategy": {...}, "equal_weight": {...}}}`` with plain floats,
        strings and None; ``index`` is None without a benchmark; each stats dict has
        ``total_return``, ``cagr``, ``volatility``, ``sharpe``, ``sortino``,
        ``max_drawdown``, ``calmar``, ``turnover`` (per year) and ``costs`` (total).

    Raises:
        OptimizationError: invalid cost, investment or prices, or a benchmark
            without a level at the first rebalance.
    """
    cost_bps = _number(cost_bps, "costBps")
    if not 0.0 <= cost_bps <= MAX_COST_BPS:
        raise OptimizationError(f"costBps must lie within [0, {MAX_COST_BPS:g}].")
    initial_investment = _number(initial_investment, "initialInvestment")
    if initial_investment <= 0:
        raise OptimizationError("initialInvestment must be greater than 0.")
    risk_free_rate = _number(risk_free_rate, "riskFreeRate")
    if len(weights) != plan.total:
        raise ValueError(f"{len(weights)} weight vectors for {plan.total} rebalances")
    frame = _checked_frame(prices, plan)
    first = int(plan.rebalance_rows[0])
    closes = frame.to_numpy(dtype=float)[first:]
    if not (np.isfinite(closes).all() and (closes > 0).all()):
        raise OptimizationError(
            "Missing or non-positive prices between the first rebalance and endDate; "
            "choose dates when every symbol traded.")
    dates = plan.dates[first:]
    starts = plan.rebalance_rows - first
    n = closes.shape[1]
    rate = cost_bps / 10_000.0
    strategy = _trade(closes, starts, weights, initial_investment, rate)
    equal = _trade(closes, starts, [np.full(n, 1.0 / n)] * plan.total, initial_investment, rate)
    index = None
    if benchmark is not None:
        levels = align_benchmark(benchmark, types.SimpleNamespace(dates=dates.values))
        index = initial_investment * levels / levels[0]
    years = (dates[-1] - dates[0]).days / DAYS_PER_YEAR
    shown = performance.series_indices(dates.size)
    symbols = [str(s) for s in frame.columns]
    return {
        "rebalances": [
            {"date": dates[row].strftime("%Y-%m-%d"),
             "weights": dict(zip(symbols, (float(x) + 0.0 for x in w), strict=True)),
             "turnover": float(strategy.turnover[k]),
             "cost": float(strategy.cost[k])}
            for k, (row, w) in enumerate(zip(starts, weights, strict=True))
        ],
        "series": {
            "dates": dates[shown].strftime("%Y-%m-%d").tolist(),
            "strategy": _plain(strategy.values[shown]),
            "equal_weight": _plain(equal.values[shown]),
            "index": None if index is None else _plain(index[shown]),
        },
        "stats": {
            "strategy": _statistics(strategy, initial_investment, years, risk_free_rate),
            "equal_weight": _statistics(equal, initial_investment, years, risk_free_rate),
        },
    }


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise OptimizationError(f"{name} must be a number.") from e
    if not math.isfinite(number):
        raise OptimizationError(f"{name} must be a finite number.")
    return number


def walk_forward(prices: pd.DataFrame, benchmark: pd.Series | None, *, start_date: Any,
                 end_date: Any, lookback_days: int, rebalance: str | int, cost_bps: float,
                 initial_investment: float, options: Mapping[str, Any],
                 first_dates: Mapping[str, pd.Timestamp] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """A whole walk-forward backtest: plan, every rebalance's weights, simulation.

    Args:
        prices, start_date, end_date, lookback_days, rebalance, first_dates: as for
            :func:`plan_backtest`.
        benchmark, cost_bps, initial_investment: as for :func:`simulate`.
        options: as for :func:`rebalance_weights`; its ``risk_free_rate`` also
            enters the Sharpe and Sortino ratios.
        progress: called as ``progress(done, total)`` after each rebalance's
            weights (``done`` = 1 .. total, in order), or None.

    Returns:
        the dict of :func:`simulate`.

    Raises:
        OptimizationError: see :func:`plan_backtest`, :func:`rebalance_weights` and
            :func:`simulate`.
        ValueError: ``options`` holds a whole-backtest option.
    """
    plan = plan_backtest(prices, start_date=start_date, end_date=end_date,
                         lookback_days=lookback_days, rebalance=rebalance,
                         first_dates=first_dates)
    _check_options(options)
    windows = _Windows(prices, plan, 0, plan.total - 1)
    weights = []
    for k in range(plan.total):
        weights.append(windows.weights(k, options))
        if progress is not None:
            progress(k + 1, plan.total)
    return simulate(prices, benchmark, plan, weights, cost_bps=cost_bps,
                    initial_investment=initial_investment,
                    risk_free_rate=options.get("risk_free_rate", 0.0))
