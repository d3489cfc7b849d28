"""Walk-forward backtests: no look-ahead, the trading rules by hand, dates, errors, series."""

import json
import unittest

import numpy as np
import pandas as pd
from numpy.testing import assert_allclose, assert_array_equal

from indico.error import OptimizationError
from indico.optimization import optimize
from indico.optimization.backtest import (
    BacktestPlan,
    Rebalance,
    plan_backtest,
    rebalance_weights,
    simulate,
    walk_forward,
)
from tests.optimization.sample import sample_index, sample_prices

STATS = {"total_return", "cagr", "volatility", "sharpe", "sortino", "max_drawdown",
         "calmar", "turnover", "costs"}


def business_frame(start, end, drop=(), columns=("A", "B", "C")):
    """A frame on the business days from start to end without ``drop``, rising prices."""
    dates = pd.bdate_range(start, end).difference(pd.DatetimeIndex(drop))
    steps = np.arange(len(dates), dtype=float)[:, None]
    values = 100.0 + steps * (1.0 + np.arange(len(columns)))
    return pd.DataFrame(values, index=dates, columns=list(columns))


def rebalance_dates(plan):
    return [d.strftime("%Y-%m-%d") for d in plan.dates[plan.rebalance_rows]]


class NoLookAheadTest(unittest.TestCase):
    """The weights at t are optimize() on exactly the lookbackDays prices before t."""

    OPTIONS = (
        {"objective": "max_sharpe", "weight_bounds": (0.0, 0.3)},
        {"objective": "min_volatility", "risk_model": "ledoit_wolf"},
    )

    def test_weights_are_optimize_on_the_window_and_ignore_later_prices(self):
        prices = sample_prices()
        plan = plan_backtest(prices, start_date="2005-01-01", end_date="2012-12-31",
                             lookback_days=252, rebalance="monthly")
        self.assertEqual(plan.total, 96)
        ks = [0, 17, 48, plan.total - 1]
        rng = np.random.default_rng(14)
        for options in self.OPTIONS:
            chosen = rebalance_weights(prices, plan, ks, options)
            for k, weights in zip(ks, chosen, strict=True):
                with self.subTest(objective=options["objective"], k=k):
                    row = plan.rebalance_rows[k]
                    t = prices.index[row]
                    first, last = prices.index[row - 252], prices.index[row - 1]
                    # What portfolio/optimize answers for startDate=first, endDate=last.
                    window = prices.loc[first:last]
                    self.assertEqual(len(window), 252)
                    self.assertLess(last, t)
                    self.assertEqual(prices.index[prices.index.get_loc(last) + 1], t)
                    assert_array_equal(weights, optimize(window, **options).weights)
                    # Prices on and after t, changed at random, change nothing.
                    changed = prices.copy()
                    changed.iloc[row:] *= rng.uniform(0.5, 2.0, changed.iloc[row:].shape)
                    again = plan_backtest(changed, start_date="2005-01-01",
                                          end_date="2012-12-31", lookback_days=252,
                                          rebalance="monthly")
                    assert_array_equal(again.rebalance_rows, plan.rebalance_rows)
                    assert_array_equal(rebalance_weights(changed, again, [k], options)[0],
                                       weights)

    def test_a_window_the_engine_refuses_names_the_rebalance(self):
        prices = sample_prices()[["AAPL", "KO", "XOM"]]
        plan = plan_backtest(prices, start_date="2009-03-02", end_date="2009-06-30",
                             lookback_days=60, rebalance="monthly")
        with self.assertRaises(OptimizationError) as caught:
            rebalance_weights(prices, plan, [0], {"objective": "max_sharpe",
                                                  "risk_free_rate": 5.0})
        error = caught.exception
        self.assertEqual(error.status, 422)
        self.assertIn("The rebalance on 2009-03-02 (window 2008-12-02 to 2009-02-27) failed",
                      error.message)
        self.assertIn("riskFreeRate", error.message)
        self.assertEqual(error.to_dict()["rebalance_date"], "2009-03-02")

    def test_whole_backtest_options_are_not_window_options(self):
        prices = sample_prices()[["AAPL", "KO"]]
        plan = plan_backtest(prices, start_date="2010-01-04", end_date="2010-03-01",
                             lookback_days=60, rebalance="monthly")
        with self.assertRaisesRegex(ValueError, "initial_investment"):
            rebalance_weights(prices, plan, [0], {"initial_investment": 1000.0})
        with self.assertRaisesRegex(ValueError, "not the frame"):
            rebalance_weights(prices.iloc[1:], plan, [0], {})


class HandComputedSimulationTest(unittest.TestCase):
    """Three assets, two rebalances, 25 bps: every number below worked by hand."""

    def setUp(self):
        # 20 days of history (any positive prices), then the performance days d0..d6.
        dates = pd.bdate_range("2021-01-04", periods=27)
        history = np.column_stack([np.linspace(9, 10, 20), np.linspace(21, 20, 20),
                                   np.linspace(45, 50, 20)])
        performance = np.array([
            # A    B    C
            [10, 20, 50],   # d0 2021-02-01: rebalance to w0
            [11, 20, 50],   # d1
            [11, 19, 52],   # d2
            [11, 19, 52],   # d3
            [11, 19, 52],   # d4
            [12, 15, 50],   # d5 2021-02-08: rebalance to w1
            [12, 16, 55],   # d6 2021-02-09: endDate
        ], dtype=float)
        self.prices = pd.DataFrame(np.vstack([history, performance]), index=dates,
                                   columns=["A", "B", "C"])
        self.plan = plan_backtest(self.prices, start_date="2021-02-01",
                                  end_date="2021-02-09", lookback_days=20, rebalance=5)
        self.weights = [np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.2, 0.6])]
        index = pd.Series([1000.0, 1010.0, 990.0, 1100.0, 1210.0],
                          index=pd.DatetimeIndex(["2021-01-29", "2021-02-01", "2021-02-02",
                                                  "2021-02-08", "2021-02-09"]))
        self.result = simulate(self.prices, index, self.plan, self.weights, cost_bps=25,
                               initial_investment=10_000.0)

    def test_plan(self):
        self.assertEqual(rebalance_dates(self.plan), ["2021-02-01", "2021-02-08"])

    def test_strategy(self):
        # d0: cash 10 000, d = 0, turnover 1, cost 10 000 × 1 × 0.0025 = 25; 9 975 invested:
        # shares A 0.5×9975/10 = 498.75, B 0.3×9975/20 = 149.625, C 0.2×9975/50 = 39.9.
        # d1: 498.75×11 + 149.625×20 + 39.9×50 = 5486.25 + 2992.5 + 1995 = 10 473.75.
        # d2-d4: 5486.25 + 149.625×19 + 39.9×52 = 5486.25 + 2842.875 + 2074.8 = 10 403.925.
        # d5 before trading: 5985 + 2244.375 + 1995 = 10 224.375 = 41 × 249.375, so
        # d = (24, 9, 8)/41; turnover = (24/41 - .2) + (9/41 - .2) + (.6 - 8/41)
        # = 25/41 + 0.2 = 166/205; cost = 10 224.375 × 166/205 × 0.0025 = 20.698125;
        # after: 10 203.676875 in shares A .2×V/12, B .2×V/15, C .6×V/50.
        # d6: V × (.2×12/12 + .2×16/15 + .6×55/50) = V × 161/150 = 10 951.9465125.
        after = 10_224.375 - 20.698125
        expected = [9975.0, 10473.75, 10403.925, 10403.925, 10403.925, after,
                    after * 161 / 150]
        assert_allclose(self.result["series"]["strategy"], expected, rtol=1e-13)
        self.assertEqual(self.result["series"]["dates"],
                         [d.strftime("%Y-%m-%d") for d in self.prices.index[20:]])
        rebalances = self.result["rebalances"]
        self.assertEqual([r["date"] for r in rebalances], ["2021-02-01", "2021-02-08"])
        assert_allclose([r["turnover"] for r in rebalances], [1.0, 166 / 205], rtol=1e-13)
        assert_allclose([r["cost"] for r in rebalances], [25.0, 20.698125], rtol=1e-13)
        self.assertEqual(rebalances[1]["weights"], {"A": 0.2, "B": 0.2, "C": 0.6})
        stats = self.result["stats"]["strategy"]
        self.assertEqual(set(stats), STATS)
        years = 8 / 365.25  # 2021-02-01 to 2021-02-09
        assert_allclose(stats["total_return"], after * 161 / 150 / 10_000 - 1, rtol=1e-12)
        assert_allclose(stats["cagr"], (after * 161 / 150 / 10_000) ** (1 / years) - 1,
                        rtol=1e-12)
        assert_allclose(stats["costs"], 45.698125, rtol=1e-13)
        assert_allclose(stats["turnover"], (1 + 166 / 205) / years, rtol=1e-13)
        # Peak 10 473.75 on d1, lowest mark after it 10 203.676875 on d5.
        assert_allclose(stats["max_drawdown"], 1 - after / 10_473.75, rtol=1e-12)
        assert_allclose(stats["calmar"], stats["cagr"] / stats["max_drawdown"], rtol=1e-12)

    def test_equal_weight(self):
        # d0: 9 975 / 3 = 3 325 each: shares 332.5, 166.25, 66.5.
        # d5: 3990 + 2493.75 + 3325 = 9 808.75; a third is 3 269.58333...; traded value
        # |3990 - V/3| + |2493.75 - V/3| + |3325 - V/3| = 1 551.66666...
        # cost = 1 551.6666... × 0.0025 = 3.879166...; turnover = 1551.666.../9808.75.
        # d6: (V - cost)/3 × (12/12 + 16/15 + 55/50) = (V - cost) × 19/18.
        traded = abs(3990 - 9808.75 / 3) + abs(2493.75 - 9808.75 / 3) + abs(3325 - 9808.75 / 3)
        assert_allclose(traded, 1551.6666666666667, rtol=1e-13)
        after = 9808.75 - traded * 0.0025
        series = self.result["series"]["equal_weight"]
        assert_allclose(series[0], 9975.0, rtol=1e-13)
        assert_allclose(series[1], 332.5 * 11 + 166.25 * 20 + 66.5 * 50, rtol=1e-13)
        assert_allclose(series[5:], [after, after * 19 / 18], rtol=1e-13)
        stats = self.result["stats"]["equal_weight"]
        assert_allclose(stats["costs"], 25 + traded * 0.0025, rtol=1e-13)
        assert_allclose(stats["turnover"], (1 + traded / 9808.75) / (8 / 365.25), rtol=1e-13)

    def test_index_is_scaled_at_the_first_rebalance_and_forward_filled(self):
        # Levels 1010 (d0), 990 (d1, missing d2-d4: carried), 1100 (d5), 1210 (d6).
        assert_allclose(self.result["series"]["index"],
                        [10_000, 9801.980198019802, 9801.980198019802, 9801.980198019802,
                         9801.980198019802, 10891.089108910892, 11980.198019801980],
                        rtol=1e-13)

    def test_json_ready_and_cost_free(self):
        self.assertEqual(json.loads(json.dumps(self.result, allow_nan=False)), self.result)
        free = simulate(self.prices, None, self.plan, self.weights, cost_bps=0,
                        initial_investment=10_000.0)
        self.assertIsNone(free["series"]["index"])
        self.assertEqual(free["stats"]["strategy"]["costs"], 0.0)
        assert_allclose(free["series"]["strategy"][-1],
                        10_224.375 / 0.9975 * 161 / 150, rtol=1e-13)

    def test_invalid_costs_and_investment(self):
        for kwargs, message in (
                ({"cost_bps": -1}, "costBps must lie within [0, 1000]"),
                ({"cost_bps": 1001}, "costBps must lie within [0, 1000]"),
                ({"cost_bps": "x"}, "costBps must be a number"),
                ({"initial_investment": 0}, "initialInvestment must be greater than 0"),
        ):
            with self.subTest(**kwargs):
                arguments = {"cost_bps": 10, "initial_investment": 1000.0, **kwargs}
                with self.assertRaises(OptimizationError) as caught:
                    simulate(self.prices, None, self.plan, self.weights, **arguments)
                self.assertEqual(caught.exception.status, 422)
                self.assertIn(message, caught.exception.message)


class RebalanceDatesTest(unittest.TestCase):
    """First trading day of each period, or every N trading days, from startDate."""

    def setUp(self):
        # Holidays on the first business day of January and April 2020.
        self.prices = business_frame("2019-01-01", "2021-12-31",
                                     drop=["2020-01-01", "2020-04-01"])

    def plan(self, rebalance, start, end):
        return plan_backtest(self.prices, start_date=start, end_date=end, lookback_days=20,
                             rebalance=rebalance)

    def test_monthly(self):
        plan = self.plan("monthly", "2020-01-15", "2020-12-31")
        self.assertEqual(rebalance_dates(plan), [
            "2020-01-15", "2020-02-03", "2020-03-02", "2020-04-02", "2020-05-01",
            "2020-06-01", "2020-07-01", "2020-08-03", "2020-09-01", "2020-10-01",
            "2020-11-02", "2020-12-01"])
        self.assertEqual(plan.dates[-1], pd.Timestamp("2020-12-31"))
        self.assertEqual(plan.lookback_days, 20)

    def test_quarterly(self):
        plan = self.plan(Rebalance.QUARTERLY, "2020-01-15", "2020-12-31")
        self.assertEqual(rebalance_dates(plan),
                         ["2020-01-15", "2020-04-02", "2020-07-01", "2020-10-01"])

    def test_yearly(self):
        plan = self.plan("yearly", "2019-06-01", "2021-12-31")
        self.assertEqual(rebalance_dates(plan), ["2019-06-03", "2020-01-02", "2021-01-01"])

    def test_every_n_trading_days(self):
        plan = self.plan(5, "2020-02-01", "2020-03-05")
        self.assertEqual(rebalance_dates(plan), [
            "2020-02-03", "2020-02-10", "2020-02-17", "2020-02-24", "2020-03-02"])
        # March 2020 has 22 business days, April 21 without the dropped 2020-04-01.
        plan = self.plan(21, "2020-03-02", "2020-05-31")
        self.assertEqual(rebalance_dates(plan),
                         ["2020-03-02", "2020-03-31", "2020-04-30", "2020-05-29"])

    def test_start_and_end_on_the_same_trading_day(self):
        plan = self.plan("monthly", "2020-06-10", "2020-06-10")
        self.assertEqual(rebalance_dates(plan), ["2020-06-10"])
        result = simulate(self.prices, None, plan, [np.array([0.2, 0.3, 0.5])], cost_bps=10,
                          initial_investment=1000.0)
        self.assertEqual(result["series"]["dates"], ["2020-06-10"])
        self.assertEqual(result["series"]["strategy"], [999.0])
        stats = result["stats"]["strategy"]
        assert_allclose(stats["total_return"], -0.001)
        self.assertIsNone(stats["cagr"])
        self.assertIsNone(stats["volatility"])
        self.assertIsNone(stats["turnover"])

    def assert_refused(self, message, **kwargs):
        arguments = {"start_date": "2020-01-15", "end_date": "2020-12-31",
                     "lookback_days": 20, "rebalance": "monthly", **kwargs}
        with self.assertRaises(OptimizationError) as caught:
            plan_backtest(self.prices, **arguments)
        self.assertEqual(caught.exception.status, 422)
        self.assertIn(message, caught.exception.message)
        return caught.exception

    def test_invalid_arguments(self):
        self.assert_refused('rebalance must be "monthly", "quarterly", "yearly" or an '
                            'integer number of trading days within [5, 2520]',
                            rebalance="weekly")
        for bad in (4, 2521, True, 5.0):
            self.assert_refused("rebalance must be", rebalance=bad)
        for bad in (19, 5001, 252.0):
            self.assert_refused("lookbackDays must be an integer within [20, 5000]",
                                lookback_days=bad)
        self.assert_refused("endDate is before startDate", end_date="2020-01-01")
        self.assert_refused("startDate must be a date", start_date="soon")
        self.assert_refused("No trading day common to all symbols between 2022-01-03 and "
                            "2022-02-01", start_date="2022-01-03", end_date="2022-02-01")


class ShortHistoryTest(unittest.TestCase):
    """A symbol without lookbackDays trading days before the first rebalance is named."""

    def setUp(self):
        sample = sample_prices()[["AAPL", "KO"]]
        late = sample["KO"].loc["2010-01-04":] * 1.5
        self.prices = pd.concat([sample, late.rename("NEW")], axis=1, join="inner")
        self.first_dates = {"AAPL": pd.Timestamp("1990-01-02"),
                            "KO": pd.Timestamp("1990-01-02"),
                            "NEW": pd.Timestamp("2010-01-04")}

    def refuse(self, first_dates):
        with self.assertRaises(OptimizationError) as caught:
            plan_backtest(self.prices, start_date="2010-06-01", end_date="2012-12-31",
                          lookback_days=252, rebalance="monthly", first_dates=first_dates)
        self.assertEqual(caught.exception.status, 422)
        return caught.exception

    def test_the_late_symbol_is_named(self):
        error = self.refuse(self.first_dates)
        self.assertEqual(error.message,
                         "NEW has only 102 trading days of prices (common to all symbols, "
                         "from 2010-01-04) before the first rebalance on 2010-06-01; "
                         "lookbackDays needs 252. Choose a startDate on or after "
                         "2011-01-03, lookbackDays of at most 102, or drop NEW.")
        body = error.to_dict()
        self.assertEqual(body["symbols"], ["NEW"])
        self.assertEqual(body["field"], "lookbackDays")

    def test_without_first_dates_every_symbol_is_named(self):
        error = self.refuse(None)
        self.assertIn("AAPL, KO, NEW have only 102 trading days", error.message)
        self.assertEqual(error.details["symbols"], ["AAPL", "KO", "NEW"])

    def test_too_short_for_any_lookback_in_the_dates(self):
        with self.assertRaises(OptimizationError) as caught:
            plan_backtest(self.prices, start_date="2010-01-15", end_date="2010-06-30",
                          lookback_days=252, rebalance="monthly", first_dates=self.first_dates)
        self.assertEqual(caught.exception.status, 422)
        self.assertEqual(caught.exception.message,
                         "NEW has only 9 trading days of prices (common to all symbols, from "
                         "2010-01-04) before the first rebalance on 2010-01-15; lookbackDays "
                         "needs 252. Choose later dates, or drop NEW.")

    def test_enough_history_passes(self):
        plan = plan_backtest(self.prices, start_date="2011-01-03", end_date="2011-03-31",
                             lookback_days=252, rebalance="monthly",
                             first_dates=self.first_dates)
        self.assertEqual(plan.rebalance_rows[0], 252)


class SeriesAndProgressTest(unittest.TestCase):
    """Long backtests: at most 500 points, first rebalance and endDate's close kept."""

    @classmethod
    def setUpClass(cls):
        cls.prices = sample_prices()
        cls.progress = []
        cls.arguments = {"start_date": "2003-01-01", "end_date": "2022-12-31",
                         "lookback_days": 252, "rebalance": "quarterly", "cost_bps": 10,
                         "initial_investment": 10_000.0,
                         "options": {"objective": "min_volatility"}}
        cls.result = walk_forward(cls.prices, sample_index(), **cls.arguments,
                                  progress=lambda done, total: cls.progress.append(
                                      (done, total)))

    def test_series_has_at_most_500_points_with_the_first_and_last_close(self):
        series = self.result["series"]
        self.assertEqual(len(series["dates"]), 500)
        for name in ("strategy", "equal_weight", "index"):
            self.assertEqual(len(series[name]), 500)
        self.assertEqual(series["dates"][0], "2003-01-02")
        self.assertEqual(series["dates"][-1], "2022-12-28")  # the last close by endDate
        self.assertEqual(series["dates"], sorted(set(series["dates"])))
        self.assertEqual(series["index"][0], 10_000.0)
        self.assertEqual(self.result["rebalances"][0]["date"], "2003-01-02")
        self.assertEqual(set(self.result["stats"]["equal_weight"]), STATS)

    def test_a_sampled_point_is_the_value_of_that_close(self):
        # The value at a close does not depend on later prices: a backtest ending at a
        # sampled date ends with the value sampled there.
        middle = len(self.result["series"]["dates"]) // 2
        date = self.result["series"]["dates"][middle]
        shorter = walk_forward(self.prices, None, **{**self.arguments, "end_date": date})
        self.assertEqual(shorter["series"]["dates"][-1], date)
        for name in ("strategy", "equal_weight"):
            assert_allclose(shorter["series"][name][-1], self.result["series"][name][middle],
                            rtol=1e-12)

    def test_progress_is_called_in_order(self):
        total = len(self.result["rebalances"])
        self.assertEqual(total, 80)
        self.assertEqual(self.progress, [(done, total) for done in range(1, total + 1)])

    def test_chunks_give_the_same_result(self):
        # The job plumbing's path: plan, rebalance_weights in chunks, simulate.
        arguments = dict(self.arguments)
        options = arguments.pop("options")
        cost_bps = arguments.pop("cost_bps")
        investment = arguments.pop("initial_investment")
        plan = plan_backtest(self.prices, **arguments)
        self.assertIsInstance(plan, BacktestPlan)
        weights = []
        for chunk in np.array_split(np.arange(plan.total), 7):
            weights.extend(rebalance_weights(self.prices, plan, chunk.tolist(), options))
        result = simulate(self.prices, sample_index(), plan, weights, cost_bps=cost_bps,
                          initial_investment=investment)
        self.assertEqual(result, self.result)
