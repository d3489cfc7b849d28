"""The shipped sample prices, read once per process, for the engine's tests."""

import functools
import pathlib

import pandas as pd

DATA = pathlib.Path(__file__).resolve().parents[2] / "indico" / "data"


@functools.lru_cache(maxsize=1)
def sample_prices():
    """The shipped sample: 20 S&P 500 stocks, 1990-2022."""
    return pd.read_csv(DATA / "sp500_prices.csv.gz", parse_dates=["Date"], index_col="Date")


@functools.lru_cache(maxsize=1)
def sample_index():
    """The shipped S&P 500 index level, same dates."""
    frame = pd.read_csv(DATA / "sp500_index.csv.gz", parse_dates=["Date"], index_col="Date")
    return frame["SP500"]
