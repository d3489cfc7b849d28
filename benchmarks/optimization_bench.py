"""Correctness and speed of indico.optimization against PyPortfolioOpt and the seed.

Run from the repository root with a separate environment that has PyPortfolioOpt
(never a runtime dependency of indico)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install numpy scipy pandas pyportfolioopt threadpoolctl packaging
    .venv-bench/bin/python benchmarks/optimization_bench.py

It prints Markdown tables (the ones in docs/PERFORMANCE.md) and exits non-zero when
a correctness check fails:

* ``max_sharpe`` and ``min_volatility`` against PyPortfolioOpt
  (``mean_historical_return(compounding=False)``, ``sample_cov``) on windows of the
  sample data with 3, 10 and 20 assets: Sharpe/volatility within 1e-6, weights
  within 1e-4;
* ``buy_and_hold_sharpe`` against a re-implementation of the seed (SLSQP from 1/n
  with finite-difference gradients): never worse, and better where the seed stops
  at a local optimum.

Speed: medians of repeated calls from the aligned price frame, with BLAS threads
at their default and limited to 1 (threadpoolctl).
"""

import argparse
import math
import pathlib
import sys
import warnings

import numpy as np
import pandas as pd
import scipy.optimize as spo
from threadpoolctl import threadpool_info, threadpool_limits

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import median_seconds

from indico.optimization import optimize

try:
    from pypfopt import EfficientFrontier, expected_returns, risk_models
except ImportError as e:  # pragma: no cover - the benchmark needs it
    sys.exit(f"PyPortfolioOpt is missing ({e}): run this script with .venv-bench (see docstring).")

DATA = ROOT / "indico" / "data"
WEIGHT_TOLERANCE = 1e-4
RATIO_TOLERANCE = 1e-6


def load_prices():
    return pd.read_csv(DATA / "sp500_prices.csv.gz", parse_dates=["Date"], index_col="Date")


# --- references ---------------------------------------------------------------------


def pypfopt_frontier(prices):
    mu = expected_returns.mean_historical_return(prices, compounding=False)
    cov = risk_models.sample_cov(prices)
    return EfficientFrontier(mu, cov, weight_bounds=(0, 1))


def pypfopt_max_sharpe(prices):
    frontier = pypfopt_frontier(prices)
    frontier.max_sharpe(risk_free_rate=0.0)
    return frontier


def pypfopt_min_volatility(prices):
    frontier = pypfopt_frontier(prices)
    frontier.min_volatility()
    return frontier


def seed_pandas(prices):
    """The seed's algorithm as written: pandas objective, SLSQP, FD gradient, from 1/n."""

    def portfolio_value(allocations):
        normed = prices / prices.iloc[0]
        return (normed * allocations).sum(axis=1)

    def sharpe(value):
        daily = value.copy()
        daily.iloc[1:] = (value.iloc[1:] / value.iloc[:-1].values) - 1
        daily = daily.iloc[1:]
        return np.sqrt(252) * daily.mean() / daily.std()

    n = prices.shape[1]
    result = spo.minimize(
        lambda w: -sharpe(portfolio_value(w)), n * [1.0 / n], method="SLSQP",
        bounds=((0, 1),) * n, constraints=({"type": "eq", "fun": lambda x: np.sum(x) - 1},),
    )
    return result.x / result.x.sum()


def seed_numpy(prices):
    """The same algorithm with a numpy objective (a faster, fairer baseline)."""
    values = prices.to_numpy()
    normed = values / values[0]

    def negative_sharpe(w):
        path = normed @ w
        daily = path[1:] / path[:-1] - 1
        return -np.sqrt(252) * daily.mean() / daily.std(ddof=1)

    n = values.shape[1]
    result = spo.minimize(
        negative_sharpe, np.full(n, 1.0 / n), method="SLSQP", bounds=((0, 1),) * n,
        constraints=({"type": "eq", "fun": lambda x: np.sum(x) - 1},),
    )
    return result.x / result.x.sum()


def buy_and_hold_sharpe(prices, weights):
    path = (prices.to_numpy() / prices.to_numpy()[0]) @ weights
    daily = path[1:] / path[:-1] - 1
    return math.sqrt(252) * daily.mean() / daily.std(ddof=1)


def synthetic_prices(n_assets, n_days=1260, seed=0):
    """Prices of a three-factor model: realistic correlations, positive drift."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(0.8, 0.4, (n_assets, 3)) * np.array([1.0, 0.5, 0.3])
    factors = rng.normal(0.0003, 0.01, (n_days, 3))
    noise = rng.normal(0, 1, (n_days, n_assets)) * rng.uniform(0.008, 0.03, n_assets)
    alpha = rng.normal(0.0002, 0.0004, n_assets)
    returns = alpha + factors @ loadings.T + noise
    values = 100 * np.cumprod(np.vstack([np.ones(n_assets), 1 + returns]), axis=0)
    dates = pd.bdate_range("2015-01-02", periods=n_days + 1)
    return pd.DataFrame(values, index=dates, columns=[f"S{i:03d}" for i in range(n_assets)])


# --- correctness --------------------------------------------------------------------


def mean_variance_windows(prices):
    """Windows of 3, 10 and 20 assets over different periods and lengths."""
    rng = np.random.default_rng(2024)
    columns = list(prices.columns)
    windows = []
    for n in (3, 10, 20):
        for start, years in (("1995", 5), ("2003", 3), ("2010", 5), ("2015", 5), ("2018", 2),
                             ("1992", 10)):
            symbols = columns if n == 20 else sorted(rng.choice(columns, n, replace=False))
            end = str(int(start) + years - 1)
            windows.append((n, f"{start}-{end}", prices.loc[start:end, list(symbols)]))
    return windows


def check_mean_variance(prices):
    rows, failures = [], 0
    for n, period, window in mean_variance_windows(prices):
        for name, reference, ours in (
            ("max_sharpe", pypfopt_max_sharpe, "max_sharpe"),
            ("min_volatility", pypfopt_min_volatility, "min_volatility"),
        ):
            try:
                frontier = reference(window)
            except Exception as e:  # whatever failed: report and go on
                rows.append((n, period, name, "PyPortfolioOpt failed", str(e)[:40], "", ""))
                continue
            theirs = np.array([frontier.weights[i] for i in range(n)])
            _, their_vol, their_sharpe = frontier.portfolio_performance(risk_free_rate=0.0)
            result = optimize(window, ours)
            weight_diff = float(np.max(np.abs(result.weights - theirs)))
            sharpe_diff = abs(result.stats["sharpe"] - their_sharpe)
            vol_diff = abs(result.stats["volatility"] - their_vol)
            ok = weight_diff <= WEIGHT_TOLERANCE and (
                sharpe_diff <= RATIO_TOLERANCE if name == "max_sharpe"
                else vol_diff <= RATIO_TOLERANCE
            )
            # Where they differ, the better objective value wins.
            better = (result.stats["sharpe"] >= their_sharpe - 1e-12 if name == "max_sharpe"
                      else result.stats["volatility"] <= their_vol + 1e-12)
            failures += 0 if ok else 1
            rows.append((n, period, name, f"{weight_diff:.1e}", f"{sharpe_diff:.1e}",
                         f"{vol_diff:.1e}", "ok" if ok else ("ours better" if better
                                                             else "FAIL")))
    return rows, failures


def check_buy_and_hold(prices):
    rng = np.random.default_rng(7)
    columns = list(prices.columns)
    rows, worse, better = [], 0, 0
    cases = []
    for n in (3, 10, 20):
        for length in (1260, 2520, 5000, 8000):
            for _ in range(2):
                start = int(rng.integers(0, len(prices) - length))
                symbols = columns if n == 20 else list(rng.choice(columns, n, replace=False))
                cases.append((n, length, prices.iloc[start:start + length][symbols]))
    # Windows found to have several local maxima (the tests pin them too).
    cases += [
        (20, 5000, prices.iloc[250:5250]),
        (5, 8000, prices.iloc[73:8073][["WMT", "XOM", "BBY", "RRC", "KO"]]),
        (5, 5000, prices.iloc[2296:7296][["PFE", "JPM", "MRK", "KO", "LLY"]]),
        (5, 1260, prices.iloc[6196:7456][["CVX", "JPM", "LLY", "BAC", "AMD"]]),
    ]
    for n, length, window in cases:
        seed_value = buy_and_hold_sharpe(window, seed_numpy(window))
        ours = optimize(window, "buy_and_hold_sharpe").portfolio["sharpe"]
        gain = ours - seed_value
        worse += gain < -1e-7
        better += gain > 1e-6
        rows.append((n, length, f"{window.index[0].date()}", f"{seed_value:.6f}",
                     f"{ours:.6f}", f"{gain:+.2e}"))
    return rows, worse, better


def summarise_mean_variance(rows):
    summary = []
    for n in (3, 10, 20):
        for name in ("max_sharpe", "min_volatility"):
            chosen = [r for r in rows if r[0] == n and r[2] == name]
            measured = [r for r in chosen if r[3] != "PyPortfolioOpt failed"]
            worst = [max((float(r[i]) for r in measured), default=float("nan"))
                     for i in (3, 4, 5)]
            summary.append((n, name, len(chosen), *(f"{w:.1e}" for w in worst),
                            "yes" if all(r[6] == "ok" for r in chosen) else "NO"))
    return summary


def summarise_buy_and_hold(rows):
    summary = []
    for n in (3, 5, 10, 20):
        gains = [float(r[5]) for r in rows if r[0] == n]
        summary.append((n, len(gains), sum(g < -1e-7 for g in gains),
                        sum(abs(g) <= 1e-6 for g in gains), sum(g > 1e-6 for g in gains),
                        f"{max(gains):+.2e}"))
    return summary


# --- speed --------------------------------------------------------------------------


def speed_rows(prices, repeat):
    five_years = prices.loc["2015":"2019"]
    synthetic = synthetic_prices(200)
    rows = []
    for label, limit in (("default", None), ("1", 1)):
        with threadpool_limits(limits=limit):
            ours_20 = median_seconds(lambda: optimize(five_years, "max_sharpe"), repeat)
            theirs_20 = median_seconds(lambda: pypfopt_max_sharpe(five_years), max(repeat // 10, 5))
            full_20 = median_seconds(
                lambda: optimize(five_years, "max_sharpe", initial_investment=10_000.0,
                                 benchmark=None).to_dict(), max(repeat // 10, 5))
            ours_200 = median_seconds(lambda: optimize(synthetic, "max_sharpe"),
                                      max(repeat // 5, 5))
            theirs_200 = median_seconds(lambda: pypfopt_max_sharpe(synthetic), 5)
            minvol_20 = median_seconds(lambda: optimize(five_years, "min_volatility"), repeat)
            theirs_minvol = median_seconds(lambda: pypfopt_min_volatility(five_years),
                                           max(repeat // 10, 5))
            bh = median_seconds(lambda: optimize(five_years, "buy_and_hold_sharpe"),
                                max(repeat // 10, 5))
            seed_slow = median_seconds(lambda: seed_pandas(five_years), 3, warmup=1)
            seed_fast = median_seconds(lambda: seed_numpy(five_years), 10)
        rows += [
            (label, "max_sharpe, 20 assets x 5 y", ours_20, "PyPortfolioOpt max_sharpe", theirs_20),
            (label, "min_volatility, 20 x 5 y", minvol_20, "PyPortfolioOpt min_volatility",
             theirs_minvol),
            (label, "max_sharpe, 200 synthetic x 5 y", ours_200, "PyPortfolioOpt max_sharpe",
             theirs_200),
            (label, "max_sharpe + shares (milp) + to_dict, 20 x 5 y", full_20, "-", None),
            (label, "buy_and_hold_sharpe, 20 x 5 y", bh, "seed as written (pandas)", seed_slow),
            (label, "buy_and_hold_sharpe, 20 x 5 y", bh, "seed algorithm, numpy objective",
             seed_fast),
        ]
    return rows


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per median")
    parser.add_argument("--skip-correctness", action="store_true")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore")
    prices = load_prices()
    blas = ", ".join(f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)"
                     for i in threadpool_info())
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"scipy {__import__('scipy').__version__}, pandas {pd.__version__}, "
          f"PyPortfolioOpt {__import__('pypfopt').__version__}; BLAS: {blas}\n")
    status = 0
    if not arguments.skip_correctness:
        rows, failures = check_mean_variance(prices)
        print("### max_sharpe / min_volatility vs PyPortfolioOpt\n")
        print(table(("assets", "window", "objective", "max |Δw|", "|ΔSharpe|", "|Δvol|",
                     "check"), rows))
        print(f"\n{len(rows) - failures}/{len(rows)} within tolerance "
              f"(weights {WEIGHT_TOLERANCE}, Sharpe/volatility {RATIO_TOLERANCE}).\n")
        print("Summary (worst case over the windows):\n")
        print(table(("assets", "objective", "windows", "max |Δw|", "max |ΔSharpe|", "max |Δvol|",
                     "all within tolerance"), summarise_mean_variance(rows)))
        print()
        rows, worse, better = check_buy_and_hold(prices)
        print("### buy_and_hold_sharpe vs the seed's SLSQP from 1/n\n")
        print(table(("assets", "days", "from", "seed Sharpe", "ours", "gain"), rows))
        print(f"\nworse than the seed: {worse}; better (> 1e-6): {better}; of {len(rows)}.\n")
        print("Summary:\n")
        print(table(("assets", "windows", "worse than seed (< -1e-7)", "equal (within 1e-6)",
                     "better (> 1e-6)", "largest gain"), summarise_buy_and_hold(rows)))
        print()
        status = 1 if (failures or worse) else 0
    rows = speed_rows(prices, arguments.repeat)
    print("### Speed (median wall time per call, from the aligned price frame)\n")
    formatted = []
    for blas_threads, case, ours, other, theirs in rows:
        ratio = f"{theirs / ours:.0f}x" if theirs else "-"
        formatted.append((blas_threads, case, f"{ours * 1e3:.2f} ms", other,
                          f"{theirs * 1e3:.1f} ms" if theirs else "-", ratio))
    print(table(("BLAS threads", "indico", "time", "compared with", "their time", "speed-up"),
                formatted))
    return status


if __name__ == "__main__":
    sys.exit(main())
