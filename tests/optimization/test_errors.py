"""Every domain failure of the engine raises OptimizationError with a useful message."""

import unittest

import numpy as np
import pandas as pd

from indico.error import OptimizationError
from indico.optimization import optimize
from tests.optimization.sample import sample_prices


def window(symbols=("AAPL", "JNJ", "XOM"), start="2015", end="2019"):
    return sample_prices().loc[start:end, list(symbols)].copy()


class ErrorsTest(unittest.TestCase):
    def assert_fails(self, *words, **kwargs):
        prices = kwargs.pop("prices", None)
        with self.assertRaises(OptimizationError) as caught:
            optimize(window() if prices is None else prices, **kwargs)
        self.assertEqual(caught.exception.status, 422)
        for word in words:
            self.assertIn(word, caught.exception.message)
        return caught.exception

    def test_too_few_common_dates(self):
        for rows in (0, 1, 2):
            self.assert_fails("common dates", "Widen the date range",
                              prices=window().iloc[:rows])

    def test_constant_prices(self):
        prices = window()
        prices["XOM"] = 50.0
        error = self.assert_fails("Constant prices for XOM", prices=prices)
        self.assertEqual(error.details["symbols"], ["XOM"])

    def test_missing_prices(self):
        prices = window()
        prices.iloc[10, 1] = np.nan
        error = self.assert_fails("Missing prices for JNJ", prices=prices)
        self.assertEqual(error.details["symbols"], ["JNJ"])

    def test_infinite_prices(self):
        for value in (np.inf, -np.inf):
            with self.subTest(value=value):
                prices = window()
                prices.iloc[-1, 2] = value
                error = self.assert_fails("Missing prices for XOM", prices=prices)
                self.assertEqual(error.details["symbols"], ["XOM"])

    def test_non_positive_prices(self):
        prices = window()
        prices.iloc[5, 0] = 0.0
        self.assert_fails("Non-positive prices for AAPL", prices=prices)

    def test_not_a_frame(self):
        self.assert_fails("DataFrame", prices=np.ones((10, 3)))

    def test_bounds_cannot_sum_to_one_with_advice_that_helps(self):
        # Three assets: caps of 0.2 total 0.6; floors of 0.4 total 1.2, where more
        # symbols or higher caps cannot help.
        error = self.assert_fails("cannot sum to 1", "upper bounds of the 3 assets total 0.6",
                                  "Raise the upper bounds (to at least 0.333333",
                                  "or add symbols", weight_bounds=(0.0, 0.2))
        self.assertNotIn("lower", error.message)
        error = self.assert_fails("cannot sum to 1", "lower bounds of the 3 assets total 1.2",
                                  "Lower the lower bounds (to at most 0.333333",
                                  "drop symbols", weight_bounds=(0.4, 1.0))
        self.assertNotIn("add symbols", error.message)
        self.assertNotIn("upper", error.message)
        self.assert_fails("lower bounds of the 3 assets total 1.05",
                          weight_bounds={"AAPL": (0.5, 1.0), "XOM": (0.55, 1.0)})

    def test_bounds_outside_unit_interval_or_reversed(self):
        self.assert_fails("short selling", weight_bounds=(-0.5, 1.0))
        self.assert_fails("exceeds", weight_bounds=(0.5, 0.2))
        self.assert_fails("pair", weight_bounds="wide")
        self.assert_fails("not in the portfolio", weight_bounds={"MSFT": (0, 0.5)})

    def test_target_return_outside_reach_names_the_range(self):
        error = self.assert_fails("outside what these assets can reach", "between",
                                  objective="efficient_return", target_return=0.9)
        low, high = error.details["reachable"]
        self.assertLess(low, high)
        self.assertLess(high, 0.9)
        self.assert_fails("outside", objective="efficient_return", target_return=-0.5)

    def test_target_volatility_below_minimum_names_the_range(self):
        error = self.assert_fails("below the lowest volatility",
                                  objective="efficient_risk", target_volatility=0.01)
        self.assertGreater(error.details["reachable"][0], 0.01)

    def test_missing_targets(self):
        self.assert_fails("targetReturn", objective="efficient_return")
        self.assert_fails("targetVolatility", objective="efficient_risk")

    def test_max_sharpe_when_nothing_beats_the_risk_free_rate(self):
        self.assert_fails("exceeds riskFreeRate", "min_volatility", "lower riskFreeRate",
                          objective="max_sharpe", risk_free_rate=0.9)
        # A falling market: no asset's expected return is positive.
        falling = sample_prices().loc["2008-01":"2008-12", ["AMD", "AAPL", "GE"]]
        self.assert_fails("min_volatility", prices=falling, objective="max_sharpe")

    def test_unknown_objective_and_bad_numbers(self):
        self.assert_fails("Unknown objective", "max_sharpe", objective="moonshot")
        self.assert_fails("riskFreeRate", risk_free_rate=float("nan"))
        self.assert_fails("initialInvestment", initial_investment=0)
        self.assert_fails("initialInvestment", initial_investment="lots")

    def test_benchmark_must_cover_the_window(self):
        prices = window()
        late = pd.Series(1.0 + np.arange(100.0), index=prices.index[-100:])
        self.assert_fails("benchmark", benchmark=late)
        self.assert_fails("benchmark", benchmark=[1, 2, 3])

    def test_errors_chain_their_cause(self):
        with self.assertRaises(OptimizationError) as caught:
            optimize(window(), objective="nope")
        self.assertIsInstance(caught.exception.__cause__, ValueError)


if __name__ == "__main__":
    unittest.main()
