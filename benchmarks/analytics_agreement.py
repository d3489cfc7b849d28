"""Agreement of indico's estimators and new objectives with PyPortfolioOpt, and their speed.

Run from the repository root with a separate environment that has PyPortfolioOpt (it is
not a dependency of indico, and never in req.txt)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install numpy scipy pandas pyportfolioopt scikit-learn cvxpy \\
        threadpoolctl packaging
    .venv-bench/bin/python benchmarks/analytics_agreement.py

Checks, on the shipped sample (20 stocks, the last five years, 1,258 returns):

* ``ema`` (spans 2, 60, 500), ``ledoit_wolf``, ``exp_cov`` (spans 2, 60, 180) and
  ``semicovariance`` (rates 0 and 0.05) against ``ema_historical_return(compounding=False)``,
  ``CovarianceShrinkage().ledoit_wolf()``, ``exp_cov`` and ``semicovariance``: largest
  relative difference, required <= 1e-10;
* ``hrp`` without bounds against ``HRPOpt(returns).optimize()``: weights within 1e-10;
* ``min_cvar`` against ``EfficientCVaR(mu, returns).min_cvar()`` (cvxpy): CVaR values
  (LP optima can have several minimisers, so weights are reported, not required);
* median times of ``hrp`` and ``min_cvar`` in the engine (whole ``optimize`` call) and of
  PyPortfolioOpt's equivalents.

Exits 1 when a required agreement fails.
"""

import pathlib
import sys
import warnings

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import median_seconds

from indico.optimization import estimators, optimize
from indico.optimization.data import prepare_prices

try:
    from pypfopt import EfficientCVaR, HRPOpt, expected_returns, risk_models
except ImportError as e:  # pragma: no cover - the benchmark needs it
    sys.exit(f"PyPortfolioOpt is missing ({e}): run this script with .venv-bench (see docstring).")

ESTIMATOR_TOLERANCE = 1e-10
HRP_TOLERANCE = 1e-10


def relative(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def main():
    prices = pd.read_csv(ROOT / "indico" / "data" / "sp500_prices.csv.gz",
                         parse_dates=["Date"], index_col="Date").iloc[-1259:]
    data = prepare_prices(prices)
    returns = data.returns
    rows, failed = [], False
    warnings.simplefilter("ignore")  # PyPortfolioOpt warns about spans below 10

    def check(name, ours, theirs, tolerance):
        nonlocal failed
        difference = relative(ours, theirs)
        ok = difference <= tolerance
        failed |= not ok
        rows.append((name, f"{difference:.2e}", f"<= {tolerance:g}", "ok" if ok else "FAIL"))

    for span in (2, 60, 500):
        check(f"ema span {span}", estimators.ema_returns(returns, span),
              expected_returns.ema_historical_return(prices, compounding=False, span=span),
              ESTIMATOR_TOLERANCE)
    check("ledoit_wolf", estimators.ledoit_wolf(returns)[0],
          risk_models.CovarianceShrinkage(prices).ledoit_wolf(), ESTIMATOR_TOLERANCE)
    for span in (2, 60, 180):
        check(f"exp_cov span {span}", estimators.exp_cov(returns, span),
              risk_models.exp_cov(prices, span=span), ESTIMATOR_TOLERANCE)
    for rate in (0.0, 0.05):
        check(f"semicovariance rf {rate}", estimators.semicovariance(returns, rate / 252),
              risk_models.semicovariance(prices, benchmark=rate / 252), ESTIMATOR_TOLERANCE)

    frame = prices.pct_change().dropna(how="all")
    theirs_hrp = pd.Series(HRPOpt(frame).optimize())[list(prices.columns)].to_numpy()
    ours_hrp = optimize(prices, "hrp").weights
    difference = float(np.max(np.abs(ours_hrp - theirs_hrp)))
    failed |= difference > HRP_TOLERANCE
    rows.append(("hrp weights (abs)", f"{difference:.2e}", f"<= {HRP_TOLERANCE:g}",
                 "ok" if difference <= HRP_TOLERANCE else "FAIL"))

    def their_min_cvar():
        mu = expected_returns.mean_historical_return(prices, compounding=False)
        frontier = EfficientCVaR(mu, frame, beta=0.95)
        frontier.min_cvar()
        return frontier

    reference = their_min_cvar()
    ours = optimize(prices, "min_cvar")
    their_value = float(reference.portfolio_performance()[1])
    rows.append(("min_cvar CVaR (rel)", f"{relative(ours.stats['cvar'], their_value):.2e}",
                 "reported", f"ours {ours.stats['cvar']:.10f}, theirs {their_value:.10f}"))
    their_weights = pd.Series(reference.clean_weights(rounding=None))[list(prices.columns)]
    rows.append(("min_cvar weights (abs)",
                 f"{np.max(np.abs(ours.weights - their_weights.to_numpy())):.2e}",
                 "reported", "an LP may have several optima"))

    with threadpool_limits(1):
        timings = [
            ("hrp, 20 x 5 y", median_seconds(lambda: optimize(prices, "hrp"), 50),
             median_seconds(lambda: HRPOpt(frame).optimize(), 50)),
            ("min_cvar, 20 x 1258", median_seconds(lambda: optimize(prices, "min_cvar"), 10),
             median_seconds(their_min_cvar, 5)),
        ]

    print("| check | difference | required | result |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n| task (1 BLAS thread) | indico optimize() | PyPortfolioOpt |\n|---|---|---|")
    for name, ours_time, theirs_time in timings:
        print(f"| {name} | {ours_time * 1e3:.2f} ms | {theirs_time * 1e3:.2f} ms |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
