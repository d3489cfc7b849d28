"""Walk-forward backtest engine: speed, linear growth, skfolio's WalkForward, correctness.

Run from the repository root with the benchmark environment (PyPortfolioOpt and skfolio
are never runtime dependencies of indico)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install numpy scipy pandas pyportfolioopt skfolio threadpoolctl \\
        packaging
    .venv-bench/bin/python benchmarks/backtest_bench.py

On the shipped sample (20 stocks), with one BLAS thread (as in the worker pool):

* engine time of :func:`indico.optimization.backtest.walk_forward`, 20 symbols x 20 years
  (2003-01-02 to 2022-12-28), monthly, ``max_sharpe``, ``lookbackDays`` 252, 10 bps:
  240 rebalances; median of ``--repeat`` runs, and its parts (plan, weights, simulate).
  This is the engine only: the through-the-API figure (request to ``done``, target
  <= 1 s) is measured by the job benchmark;
* linear growth: 60, 120, 240 and 480 rebalances over the same 7,680 trading days
  (1991-01-02 on, every 128, 64, 32 and 16 trading days), time per rebalance;
* skfolio ``WalkForward(test_size=1, train_size=12, freq="MS")`` with ``MeanRisk``
  maximising the Sharpe ratio (variance, cvxpy) through ``cross_val_predict``, on the
  returns of the same frame: 240 monthly fits, timed in the same run. (Its windows are
  12 calendar months of returns and its test returns are the fixed weights applied to
  each day, so only the time is comparable, not the numbers);
* correctness, required: every rebalance of the 240 recomputed with PyPortfolioOpt
  (``EfficientFrontier(mean_historical_return(window, compounding=False),
  sample_cov(window)).max_sharpe(risk_free_rate=0)``, Clarabel with tolerances 1e-12):
  weights within 1e-6; the strategy, equal-weight and index curves, turnover and costs
  recomputed with plain pandas from the rules of issue 14 and the engine's weights:
  values within 1e-8 relative.

Exits 1 when a required check fails.
"""

import argparse
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_bench import print_results

from indico.optimization.backtest import (
    plan_backtest,
    rebalance_weights,
    simulate,
    walk_forward,
)

try:
    from pypfopt import EfficientFrontier, expected_returns, risk_models
    from skfolio import RiskMeasure
    from skfolio.model_selection import WalkForward, cross_val_predict
    from skfolio.optimization import MeanRisk, ObjectiveFunction
    from skfolio.preprocessing import prices_to_returns
except ImportError as e:  # pragma: no cover - the benchmark needs them
    sys.exit(f"PyPortfolioOpt or skfolio is missing ({e}): run this script with .venv-bench "
             "(see docstring).")

DATA = ROOT / "indico" / "data"
WEIGHT_TOLERANCE = 1e-6
VALUE_TOLERANCE = 1e-8
TIGHT_CLARABEL = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12,
                  "tol_ktratio": 1e-10, "max_iter": 500}

#: The headline backtest (issue 14): 20 symbols x 20 years, monthly, max_sharpe.
HEADLINE = {"start_date": "2003-01-01", "end_date": "2022-12-31", "lookback_days": 252,
            "rebalance": "monthly", "cost_bps": 10.0, "initial_investment": 10_000.0,
            "options": {"objective": "max_sharpe"}}

#: Trading days of the linear-growth backtests, and their rebalance counts.
LINEAR_DAYS, LINEAR_COUNTS = 7680, (60, 120, 240, 480)


def load_prices():
    return pd.read_csv(DATA / "sp500_prices.csv.gz", parse_dates=["Date"], index_col="Date")


def load_index():
    return pd.read_csv(DATA / "sp500_index.csv.gz", parse_dates=["Date"],
                       index_col="Date")["SP500"]


def split_arguments(arguments):
    """The plan's keyword arguments and the rest."""
    plan_keys = ("start_date", "end_date", "lookback_days", "rebalance")
    return ({k: arguments[k] for k in plan_keys},
            {k: v for k, v in arguments.items() if k not in plan_keys})


# --- speed ------------------------------------------------------------------------


def median_times(function, repeat):
    """Median (wall, CPU) seconds of ``function()`` over ``repeat`` calls after one warm-up.

    CPU time (this process) is reported beside wall time because the machine may be
    shared: waiting for a core inflates the wall time, not the CPU time.
    """
    function()
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def time_headline(prices, index, repeat):
    """Median (wall, CPU) of the whole walk_forward and of its three parts."""
    planning, rest = split_arguments(HEADLINE)
    plan = plan_backtest(prices, **planning)
    ks = range(plan.total)
    weights = rebalance_weights(prices, plan, ks, rest["options"])
    return plan.total, {
        "walk_forward": median_times(lambda: walk_forward(prices, index, **HEADLINE), repeat),
        "plan_backtest": median_times(lambda: plan_backtest(prices, **planning), repeat),
        "rebalance_weights": median_times(
            lambda: rebalance_weights(prices, plan, ks, rest["options"]), repeat),
        "simulate": median_times(
            lambda: simulate(prices, index, plan, weights, cost_bps=rest["cost_bps"],
                             initial_investment=rest["initial_investment"]), repeat),
    }


def time_linear(prices, index, repeat):
    """(rebalances, (wall, CPU)) over the same LINEAR_DAYS trading days from row 252."""
    first = 252
    start, end = prices.index[first], prices.index[first + LINEAR_DAYS - 1]
    rows = []
    for count in LINEAR_COUNTS:
        arguments = {**HEADLINE, "start_date": start, "end_date": end,
                     "rebalance": LINEAR_DAYS // count}
        result = walk_forward(prices, index, **arguments)
        assert len(result["rebalances"]) == count, len(result["rebalances"])
        rows.append((count, median_times(lambda a=arguments: walk_forward(prices, index, **a),
                                         repeat)))
    return start, end, rows


def time_skfolio(prices):
    """(wall, CPU) seconds and folds of skfolio's monthly WalkForward, MeanRisk max Sharpe.

    Returns from December 2001 on, so the first test month (January 2003) has its
    12 months (252 returns) of training; ``reduce_test`` keeps December 2022.
    """
    returns = prices_to_returns(prices.loc["2001-12-01":"2022-12-31"])
    cv = WalkForward(test_size=1, train_size=12, freq="MS", reduce_test=True)
    model = MeanRisk(objective_function=ObjectiveFunction.MAXIMIZE_RATIO,
                     risk_measure=RiskMeasure.VARIANCE)
    wall, cpu = time.perf_counter(), time.process_time()
    predicted = cross_val_predict(model, returns, cv=cv)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (wall, cpu), len(predicted.portfolios)


# --- correctness ------------------------------------------------------------------


def pypfopt_weights(window):
    mu = expected_returns.mean_historical_return(window, compounding=False)
    cov = risk_models.sample_cov(window)
    frontier = EfficientFrontier(mu, cov, weight_bounds=(0, 1), solver="CLARABEL",
                                 solver_options=TIGHT_CLARABEL)
    frontier.max_sharpe(risk_free_rate=0.0)
    return np.array([frontier.weights[i] for i in range(window.shape[1])])


def sample_sharpe(window, weights):
    """Sharpe ratio (rf 0) of ``weights`` with PyPortfolioOpt's estimates of ``window``."""
    mu = expected_returns.mean_historical_return(window, compounding=False).to_numpy()
    cov = risk_models.sample_cov(window).to_numpy()
    return float(mu @ weights / np.sqrt(weights @ cov @ weights))


def check_weights(prices, result):
    """Largest |w - w_PyPortfolioOpt| over every rebalance, and the rebalances beyond 1e-6.

    Returns:
        ``(worst, misses)``, misses a list of ``(date, difference, our Sharpe, theirs)``.
    """
    planning, _ = split_arguments(HEADLINE)
    plan = plan_backtest(prices, **planning)
    worst, misses = 0.0, []
    for k, rebalance in enumerate(result["rebalances"]):
        window = prices.iloc[plan.window(k)]
        assert window.index[-1] < pd.Timestamp(rebalance["date"])
        ours = np.array([rebalance["weights"][s] for s in prices.columns])
        theirs = pypfopt_weights(window)
        difference = float(np.max(np.abs(ours - theirs)))
        worst = max(worst, difference)
        if difference > WEIGHT_TOLERANCE:
            misses.append((rebalance["date"], difference, sample_sharpe(window, ours),
                           sample_sharpe(window, theirs)))
    return worst, misses


def pandas_curve(prices, dates, weights, cost_bps, investment):
    """The issue's trading rules in plain pandas: values at every close, turnovers, costs.

    Args:
        prices: DataFrame of closes (dates x symbols) covering ``dates[0]`` to the end.
        dates: the rebalance dates (Timestamps).
        weights: one Series (by symbol) per rebalance date.
    """
    prices = prices.loc[dates[0]:]
    holdings = pd.Series(0.0, index=prices.columns)
    pieces, turnovers, costs = [], [], []
    for k, date in enumerate(dates):
        close = prices.loc[date]
        if k == 0:
            value, drifted = investment, pd.Series(0.0, index=prices.columns)
        else:
            value = (holdings * close).sum()
            drifted = holdings * close / value
        turnover = (weights[k] - drifted).abs().sum()
        cost = value * turnover * cost_bps / 10_000
        holdings = weights[k] * (value - cost) / close
        stop = dates[k + 1] if k + 1 < len(dates) else None
        held = prices.loc[date:stop]
        if stop is not None:
            held = held.iloc[:-1]  # the next rebalance's close belongs to the next piece
        pieces.append((held * holdings).sum(axis=1))
        turnovers.append(turnover)
        costs.append(cost)
    return pd.concat(pieces), np.array(turnovers), np.array(costs)


def relative_difference(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))


def check_curves(prices, index, result):
    """Largest relative difference of the engine's curves and trades from pandas'."""
    prices = prices.loc[:HEADLINE["end_date"]]
    dates = [pd.Timestamp(r["date"]) for r in result["rebalances"]]
    strategy_weights = [pd.Series(r["weights"]) for r in result["rebalances"]]
    equal_weights = [pd.Series(1.0 / prices.shape[1], index=prices.columns)] * len(dates)
    shown = pd.DatetimeIndex(result["series"]["dates"])
    worst = 0.0
    for name, weights in (("strategy", strategy_weights), ("equal_weight", equal_weights)):
        curve, turnovers, costs = pandas_curve(prices, dates, weights, HEADLINE["cost_bps"],
                                               HEADLINE["initial_investment"])
        assert curve.index[0] == dates[0] and curve.index[-1] == prices.index[-1]
        worst = max(worst, relative_difference(result["series"][name], curve.loc[shown]))
        stats = result["stats"][name]
        worst = max(worst, relative_difference(stats["costs"], costs.sum()))
        worst = max(worst, relative_difference(
            stats["total_return"] + 1, curve.iloc[-1] / HEADLINE["initial_investment"]))
        if name == "strategy":
            worst = max(worst, relative_difference([r["turnover"] for r in result["rebalances"]],
                                                   turnovers))
            worst = max(worst, relative_difference([r["cost"] for r in result["rebalances"]],
                                                   costs))
    levels = index.reindex(prices.loc[dates[0]:].index).ffill()
    scaled = HEADLINE["initial_investment"] * levels / levels.iloc[0]
    worst = max(worst, relative_difference(result["series"]["index"], scaled.loc[shown]))
    return worst


def timed(times):
    wall, cpu = times
    return f"{wall * 1e3:.0f} ms (CPU {cpu * 1e3:.0f} ms)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    prices, index = load_prices(), load_index()
    with threadpool_limits(limits=1):
        total, parts = time_headline(prices, index, args.repeat)
        start, end, linear = time_linear(prices, index, args.repeat)
        skfolio_times, skfolio_folds = time_skfolio(prices)
        result = walk_forward(prices, index, **HEADLINE)
        weight_difference, misses = check_weights(prices, result)
    value_difference = check_curves(prices, index, result)
    weights_ok = weight_difference <= WEIGHT_TOLERANCE
    values_ok = value_difference <= VALUE_TOLERANCE
    engine = parts["walk_forward"]
    weights_wall, weights_cpu = parts["rebalance_weights"]

    print_results([
        (f"engine walk_forward, 20 symbols x 20 years, {total} monthly max_sharpe rebalances",
         timed(engine), "API figure: <= 1 s", "engine only"),
        ("&nbsp; plan_backtest", timed(parts["plan_backtest"]), "", ""),
        ("&nbsp; rebalance_weights, all", f"{timed(parts['rebalance_weights'])}, "
         f"{weights_wall / total * 1e3:.2f} ms (CPU {weights_cpu / total * 1e3:.2f}) each",
         "", ""),
        ("&nbsp; simulate", timed(parts["simulate"]), "", ""),
        (f"skfolio WalkForward + MeanRisk max Sharpe, {skfolio_folds} monthly fits",
         timed(skfolio_times), "", f"{skfolio_times[0] / engine[0]:.0f}x the engine's time"),
        (f"weights vs PyPortfolioOpt max_sharpe, all {total} rebalances (max abs)",
         f"{weight_difference:.1e}", f"<= {WEIGHT_TOLERANCE:g}", "ok" if weights_ok else "FAIL"),
        ("curves, turnover, costs vs plain pandas (max relative)",
         f"{value_difference:.1e}", f"<= {VALUE_TOLERANCE:g}", "ok" if values_ok else "FAIL"),
    ], f"1 BLAS thread; engine medians of {args.repeat} runs, skfolio one run")
    if misses:
        print(f"\nRebalances whose weights differ from PyPortfolioOpt by more than "
              f"{WEIGHT_TOLERANCE:g} (Sharpe of each on the window; the higher is right):")
        print("\n| rebalance | max abs difference | indico Sharpe | PyPortfolioOpt Sharpe |"
              "\n|---|---|---|---|")
        for date, difference, ours, theirs in misses:
            print(f"| {date} | {difference:.2e} | {ours:.6f} | {theirs:.6f} |")
    print(f"\nLinear growth: the same {LINEAR_DAYS} trading days ({start.date()} to "
          f"{end.date()}), 20 symbols, max_sharpe, lookbackDays 252; medians of {args.repeat}")
    print("\n| rebalances | every | engine walk_forward | per rebalance (CPU) |"
          "\n|---|---|---|---|")
    for count, (wall, cpu) in linear:
        print(f"| {count} | {LINEAR_DAYS // count} trading days | {timed((wall, cpu))} | "
              f"{wall / count * 1e3:.2f} ms ({cpu / count * 1e3:.2f} ms) |")
    return 0 if weights_ok and values_ok else 1


if __name__ == "__main__":
    sys.exit(main())
