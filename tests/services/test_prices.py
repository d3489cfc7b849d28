"""PriceService against the real embedded database: imports, frames, cache, commits and races."""

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import pandas as pd
from bson import ObjectId
from numpy.testing import assert_array_equal
from pandas.testing import assert_frame_equal
from pymongo.errors import AutoReconnect

from indico import error
from indico.db import price_meta, prices
from indico.services import prices as service_module
from indico.services.price_files import FileRejected
from indico.services.prices import PriceService, validate_symbols
from tests.harness import ServerTest, test_config
from tests.test_prices_cli import ROOT, environment

WIDE = ("Date,AAPL,MSFT\n"
        "2019-12-30,10,20\n"
        "2019-12-31,11,21\n"
        "2020-01-02,12,\n"
        "2020-01-03,13,23\n")
D = datetime.date


class PricesTest(ServerTest):
    """A PriceService of its own on the test's database, and files in a temporary directory."""

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="indico-prices-")
        self.service = PriceService(self.db, self.config)

    def tearDown(self):
        shutil.rmtree(self.directory, ignore_errors=True)
        super().tearDown()

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(*args, **kwargs), timeout=30)

    def write(self, name, text):
        path = os.path.join(self.directory, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def load(self, name, text, symbol=None, service=None):
        service = service or self.service
        return self.run_async(service.import_file, self.write(name, text), symbol)

    def frame(self, symbols, start, end, service=None):
        return self.run_async((service or self.service).get_frame, symbols, start, end)

    def store(self):
        return self.snapshot("prices", "price_meta")

    def generations(self):
        return sorted({(doc["symbol"], doc["generation"]) for doc in self.find("prices")})


class ImportTest(PricesTest):

    def test_wide_file_is_stored_in_yearly_buckets(self):
        summary = self.load("wide.csv", WIDE)
        self.assertEqual((summary.layout, summary.symbols, summary.rows),
                         ("wide", ("AAPL", "MSFT"), 7))
        self.assertEqual((summary.first, summary.last, summary.version),
                         (D(2019, 12, 30), D(2020, 1, 3), 1))
        self.assertEqual(summary.changed, ("AAPL", "MSFT"))
        self.assertIn("2 symbols (AAPL, MSFT), 7 rows, 2019-12-30..2020-01-03", summary.describe())
        buckets = sorted(self.find("prices"), key=lambda doc: (doc["symbol"], doc["year"]))
        self.assertEqual([(doc["symbol"], doc["year"], doc["rows"]) for doc in buckets],
                         [("AAPL", 2019, 2), ("AAPL", 2020, 2),
                          ("MSFT", 2019, 2), ("MSFT", 2020, 1)])
        assert_array_equal(prices.decode_bucket(buckets[1])[1], [12.0, 13.0])
        frame = self.frame(["msft", "AAPL"], D(2019, 1, 1), D(2020, 12, 31))
        expected = pd.DataFrame({"MSFT": [20.0, 21.0, 23.0], "AAPL": [10.0, 11.0, 13.0]},
                                index=pd.DatetimeIndex(["2019-12-30", "2019-12-31", "2020-01-03"],
                                                       name="date").astype("datetime64[ns]"))
        assert_frame_equal(frame, expected)
        entries = self.run_async(self.service.list_symbols)
        self.assertEqual([(entry.symbol, entry.first, entry.last, entry.rows) for entry in entries],
                         [("AAPL", D(2019, 12, 30), D(2020, 1, 3), 4),
                          ("MSFT", D(2019, 12, 30), D(2020, 1, 3), 3)])

    def test_long_and_yahoo_files(self):
        self.load("long.csv", "price,symbol,date\n5,KO,2021-03-01\n6,ko,2021-03-02\n"
                              "7,PEP,03-02-21\n8,PEP,03-01-21\n")
        self.load("gld.csv", "Date,Open,High,Low,Close,Adj Close,Volume\n"
                             "2021-03-01,1,1,1,1,150.5,9\n2021-03-02,1,1,1,1,151.5,9\n")
        self.load("anything.csv", "Date,Open,High,Low,Close,Adj Close,Volume\n"
                                  "2021-03-01,1,1,1,1,2.5,9\n2021-03-02,1,1,1,1,3.5,9\n",
                  symbol="brk.b")
        frame = self.frame(["KO", "PEP", "GLD", "BRK.B"], D(2021, 3, 1), D(2021, 3, 2))
        assert_array_equal(frame.to_numpy(), [[5.0, 8.0, 150.5, 2.5], [6.0, 7.0, 151.5, 3.5]])

    def test_reimport_is_idempotent(self):
        self.load("wide.csv", WIDE)
        before = self.store()
        summary = self.load("again.csv", WIDE)
        self.assertEqual((summary.changed, summary.version), ((), 1))
        self.assertIn("already stored, nothing changed", summary.describe())
        self.assertEqual(self.store(), before)

    def test_newer_values_replace_older_and_dates_are_merged(self):
        self.load("wide.csv", WIDE)
        old = dict(self.generations())
        summary = self.load("update.csv",
                            "symbol,date,price\nAAPL,2020-01-03,13.5\nAAPL,2020-01-06,14\n")
        self.assertEqual((summary.changed, summary.version), (("AAPL",), 2))
        frame = self.frame(["AAPL"], D(2019, 12, 30), D(2020, 1, 6))
        assert_array_equal(frame["AAPL"], [10.0, 11.0, 12.0, 13.5, 14.0])
        new = dict(self.generations())
        # One generation per symbol: AAPL's old buckets are gone, MSFT's untouched.
        self.assertEqual(len(self.generations()), 2)
        self.assertNotEqual(new["AAPL"], old["AAPL"])
        self.assertEqual(new["MSFT"], old["MSFT"])
        catalogs = [doc["_id"] for doc in self.find("price_meta", {"kind": "catalog"})]
        self.assertEqual(catalogs, [new["AAPL"]])

    def test_rejected_files_leave_the_store_unchanged(self):
        self.load("wide.csv", WIDE)
        before = self.store()
        cases = {
            "date.csv": ("Date,AAPL\n2020-01-06,1\n2020-13-01,2\n", 3, "is not a date"),
            "number.csv": ("Date,AAPL\n2020-01-06,1\n2020-01-07,1.2.3\n", 3, "is not a number"),
            "negative.csv": ("symbol,date,price\nAAPL,2020-01-06,-4\n", 2, "is not positive"),
            "zero.csv": ("Date,AAPL,MSFT\n2020-01-06,1,0\n", 2, "for MSFT is not positive"),
            "duplicate.csv": ("Date,AAPL\n2020-01-06,1\n2020-01-06,2\n", 3, "appears twice"),
            "layout.csv": ("day,close\n2020-01-06,1\n", 1, "unknown layout"),
        }
        for name, (text, line, reason) in cases.items():
            with self.subTest(name=name):
                with self.assertRaises(FileRejected) as caught:
                    self.load(name, text)
                self.assertEqual(caught.exception.line, line)
                self.assertIn(reason, caught.exception.message)
                self.assertIn(name, caught.exception.message)
                self.assertEqual(self.store(), before)

    def test_sample_is_loaded_once_and_matches_pandas(self):
        summaries = self.run_async(self.service.load_sample_prices_if_empty)
        self.assertEqual([len(summary.symbols) for summary in summaries], [20, 1])
        self.assertEqual(summaries[1].symbols, ("SP500",))
        self.assertEqual(self.run_async(self.service.load_sample_prices_if_empty), [])
        symbols = ["AAPL", "XOM", "JPM", "KO"]
        frame = self.frame(symbols, D(2018, 1, 1), D(2022, 12, 31))
        path = os.path.join(service_module.DATA_DIRECTORY, "sp500_prices.csv.gz")
        expected = pd.read_csv(path, index_col="Date", parse_dates=True).loc["2018":"2022", symbols]
        assert_array_equal(frame.to_numpy(), expected.to_numpy())
        assert_array_equal(frame.index.to_numpy(), expected.index.to_numpy())
        benchmark = self.run_async(self.service.get_benchmark, D(2018, 1, 1), D(2022, 12, 31),
                                   frame.index)
        self.assertEqual(len(benchmark), len(frame))
        self.assertEqual(benchmark.iloc[0], 2695.81)


class FrameTest(PricesTest):

    def setUp(self):
        super().setUp()
        self.load("wide.csv", WIDE)

    def test_inner_join_on_common_dates_in_the_requested_order(self):
        self.load("ko.csv", "Date,KO\n2019-12-31,5\n2020-01-02,6\n2020-01-03,7\n")
        frame = self.frame(["KO", "MSFT", "AAPL"], D(2019, 12, 1), D(2020, 1, 31))
        self.assertEqual(list(frame.columns), ["KO", "MSFT", "AAPL"])
        self.assertEqual([str(day.date()) for day in frame.index], ["2019-12-31", "2020-01-03"])
        self.assertEqual(frame.dtypes.unique().tolist(), [np.float64])
        frame = self.frame(["AAPL"], "2019-12-31", "2020-01-02")
        assert_array_equal(frame["AAPL"], [11.0, 12.0])

    def test_gap_years_have_no_bucket(self):
        self.load("gap.csv", "Date,GAP\n2017-06-01,1\n2017-06-02,2\n2020-01-02,3\n")
        frame = self.frame(["GAP"], D(2016, 1, 1), D(2021, 1, 1))
        assert_array_equal(frame["GAP"], [1.0, 2.0, 3.0])
        self.assertEqual(sorted(doc["year"] for doc in self.find("prices", {"symbol": "GAP"})),
                         [2017, 2020])

    def test_request_errors(self):
        with self.assertRaises(error.UnknownSymbols) as caught:
            self.frame(["AAPL", "NOPE", "ZZZ"], D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(caught.exception.status, 422)
        self.assertEqual(caught.exception.to_dict()["symbols"], ["NOPE", "ZZZ"])
        self.assertIn("no prices for NOPE, ZZZ", caught.exception.message)
        for symbols, message in ((["AAPL", "aapl"], "AAPL is listed twice"),
                                 (["bad symbol"], "'bad symbol' is not a valid symbol"),
                                 ([], "at least one symbol"), ("AAPL", "at least one symbol")):
            with self.subTest(symbols=symbols), self.assertRaises(error.ValidationError) as caught:
                self.frame(symbols, D(2019, 1, 1), D(2020, 12, 31))
            self.assertIn(message, caught.exception.message)
            self.assertEqual(caught.exception.to_dict()["field"], "symbols")
        with self.assertRaises(error.Unprocessable) as caught:
            self.frame(["AAPL"], D(2020, 1, 2), D(2020, 1, 1))
        self.assertIn("the window is empty: 2020-01-01 is before 2020-01-02",
                      caught.exception.message)

    def test_fewer_than_two_common_dates(self):
        with self.assertRaises(error.Unprocessable) as caught:
            self.frame(["AAPL", "MSFT"], D(2020, 1, 2), D(2020, 1, 3))
        self.assertIn("only 1 date(s) between 2020-01-02 and 2020-01-03 have a price for every "
                      "symbol", caught.exception.message)
        self.assertEqual(caught.exception.to_dict()["dates"], 1)
        with self.assertRaises(error.Unprocessable) as caught:
            self.frame(["AAPL", "MSFT"], D(2021, 1, 1), D(2021, 6, 1))
        self.assertIn("no prices for AAPL, MSFT between 2021-01-01 and 2021-06-01 (AAPL is stored "
                      "from 2019-12-30 to 2020-01-03", caught.exception.message)

    def test_check_symbols(self):
        self.assertEqual(self.run_async(self.service.check_symbols, [" aapl", "MSFT"]),
                         ["AAPL", "MSFT"])
        with self.assertRaises(error.UnknownSymbols):
            self.run_async(self.service.check_symbols, ["KO"])
        self.assertEqual(validate_symbols(["brk.b"]), ["BRK.B"])

    def test_benchmark(self):
        start, end = D(2019, 12, 1), D(2020, 1, 31)
        self.assertIsNone(self.run_async(self.service.get_benchmark, start, end))
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n2020-01-03,103\n")
        benchmark = self.run_async(self.service.get_benchmark, start, end)
        self.assertEqual((benchmark.name, benchmark.tolist()), ("SP500", [100.0, 101.0, 103.0]))
        frame = self.frame(["AAPL"], start, end)
        aligned = self.run_async(self.service.get_benchmark, start, end, frame.index)
        # 2020-01-02 has no index level: the last earlier one stands in.
        self.assertEqual(aligned.tolist(), [100.0, 101.0, 101.0, 103.0])
        self.assertTrue(aligned.index.equals(frame.index))
        early = pd.DatetimeIndex(["2019-12-27", "2019-12-30"])
        self.assertIsNone(self.run_async(self.service.get_benchmark, start, end, early))


class CacheTest(PricesTest):

    def setUp(self):
        super().setUp()
        self.load("wide.csv", WIDE)

    def test_cache_hits_read_only_the_head(self):
        first = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31))
        self.counter.names.clear()
        again = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31))
        # Another window in the same years is built from cached buckets.
        other = self.frame(["AAPL"], D(2019, 12, 31), D(2020, 1, 3))
        # One look at the head each (INDICO_PRICE_RECHECK is 0 in tests); no bucket read.
        self.assertEqual(self.counter.names, ["find", "find"])
        assert_frame_equal(first, again)
        self.assertEqual(len(other), 3)

    def test_within_the_recheck_interval_the_cache_reads_nothing(self):
        service = PriceService(self.db, test_config(database=self.db_name, price_recheck=60))
        first = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), service)
        self.counter.names.clear()
        again = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), service)
        self.assertEqual(self.counter.names, [])
        assert_frame_equal(first, again)

    def test_callers_cannot_change_the_cache(self):
        frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31))
        frame.iloc[0, 0] = -1.0
        frame["AAPL"] *= 2
        self.assertEqual(self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31)).iloc[0, 0], 10.0)

    def test_an_import_elsewhere_is_seen_by_the_next_read(self):
        self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31))
        self.run_async(self.service.list_symbols)
        other_process = PriceService(self.db, self.config)
        self.load("fix.csv", "Date,AAPL\n2019-12-31,11.25\n", service=other_process)
        frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(frame.loc["2019-12-31", "AAPL"], 11.25)
        self.load("new.csv", "Date,KO\n2020-01-02,1\n", service=other_process)
        self.assertIn("KO", [entry.symbol for entry in self.run_async(self.service.list_symbols)])

    def test_small_caches_evict_and_stay_correct(self):
        service = PriceService(self.db, self.config, cache_rows=2, frame_cache_cells=1)
        for _ in range(2):
            frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), service)
            self.assertEqual(frame.shape, (3, 2))
        self.assertLessEqual(len(service._buckets.items), 2)
        self.assertEqual(len(service._frames.items), 1)

    def test_an_older_catalog_never_replaces_a_newer_one(self):
        self.run_async(self.service.get_catalog)
        current = self.service._catalog
        self.service._install(service_module.Catalog(current.version - 1, None, {}))
        self.assertIs(self.service._catalog, current)


def replaced(module, **functions):
    """``module``'s functions with some replaced: a store that fails or loses a race on cue.

    Everything not replaced still runs against the real database.
    """
    names = {name: getattr(module, name) for name in dir(module) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, **functions})


def failing(exception):
    """An async function that raises ``exception``."""
    async def fail(*args, **kwargs):
        raise exception
    return fail


def flaky(real, calls, before=None):
    """A stand-in for ``real`` that counts calls and runs ``before(n)`` first."""
    async def call(*args, **kwargs):
        calls.append(1)
        if before is not None:
            result = await before(len(calls), *args, **kwargs)
            if result is not None:
                return result
        return await real(*args, **kwargs)
    return call


class RaceTest(PricesTest):
    """What happens when other imports commit during a read or an import."""

    def setUp(self):
        super().setUp()
        self.load("wide.csv", WIDE)

    def test_a_commit_during_an_import_makes_it_start_over(self):
        other = PriceService(self.db, self.config)
        other_path = self.write("other.csv", "Date,KO\n2020-01-02,1\n")

        async def commit_first(n, *args):
            if n == 1:
                await other.import_file(other_path)
        calls = []
        mine = PriceService(self.db, self.config, meta=replaced(
            price_meta, update_head=flaky(price_meta.update_head, calls, commit_first)))
        summary = self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", service=mine)
        self.assertEqual((len(calls), summary.version), (2, 3))  # mine lost, mine again
        self.assertEqual([entry.symbol for entry in self.run_async(self.service.list_symbols)],
                         ["AAPL", "KO", "MSFT", "PEP"])
        # Nothing of the lost attempt is left.
        self.assertEqual(len({generation for _, generation in self.generations()}), 3)
        self.assertEqual(len(self.find("price_meta", {"kind": "catalog"})), 1)

    def test_endless_conflicts_give_up_and_leave_nothing(self):
        before = self.store()

        async def lost(*args):
            return None
        mine = PriceService(self.db, self.config, meta=replaced(price_meta, update_head=lost))
        with self.assertRaises(error.Conflict) as caught:
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", service=mine)
        self.assertIn("run this import again", caught.exception.message)
        self.assertEqual(self.store(), before)

    def test_a_failed_write_removes_what_was_staged(self):
        before = self.store()
        mine = PriceService(self.db, self.config, meta=replaced(
            price_meta, create_catalog=failing(AutoReconnect("down"))))
        with self.assertRaises(AutoReconnect):
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", service=mine)
        self.assertEqual(self.store(), before)

    def test_a_lost_commit_answer_keeps_what_was_staged(self):
        mine = PriceService(self.db, self.config, meta=replaced(
            price_meta, update_head=failing(AutoReconnect("lost"))))
        with self.assertRaises(AutoReconnect):
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", service=mine)
        # The head may have moved for all the importer knows: its buckets stay.
        self.assertIn("PEP", [doc["symbol"] for doc in self.find("prices")])
        listed = self.run_async(self.service.list_symbols)
        self.assertNotIn("PEP", [entry.symbol for entry in listed])

    def test_a_slow_import_does_not_commit(self):
        before = self.store()
        slow = PriceService(self.db, self.config, staging_limit=datetime.timedelta(seconds=-1))
        with self.assertRaises(error.Conflict) as caught:
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", service=slow)
        self.assertIn("more than 30 minutes", caught.exception.message)
        self.assertEqual(self.store(), before)

    def test_cleanup_failures_are_logged_not_raised(self):
        async def lost(*args):
            return None
        unlucky = PriceService(
            self.db, self.config, meta=replaced(price_meta, update_head=lost),
            buckets=replaced(prices, delete_generation=failing(AutoReconnect("down"))))
        with self.assertLogs(service_module.log, "WARNING") as logs:
            version = self.run_async(
                unlucky._commit, self.run_async(unlucky.get_catalog),
                {"PEP": (np.array([18263], np.int32), np.array([2.0]))}, None)
        self.assertIsNone(version)
        self.assertIn("could not remove the staged generation", logs.output[0])
        careless = PriceService(self.db, self.config, buckets=replaced(
            prices, delete_superseded=failing(AutoReconnect("down"))))
        with self.assertLogs(service_module.log, "WARNING") as logs:
            summary = self.load("fix.csv", "Date,AAPL\n2020-01-03,99\n", service=careless)
        self.assertEqual(summary.changed, ("AAPL",))
        self.assertIn("the import is stored", logs.output[0])
        # AAPL's replaced buckets and PEP's staged ones are still there; readers
        # and imports skip them.
        self.assertEqual(len(self.generations()), 4)
        fresh = PriceService(self.db, self.config)
        frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), fresh)
        self.assertEqual(frame["AAPL"].tolist(), [10.0, 11.0, 99.0])
        self.load("both.csv", "Date,AAPL,MSFT\n2020-01-06,14,24\n")
        frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), fresh)
        self.assertEqual(frame["AAPL"].tolist(), [10.0, 11.0, 99.0, 14.0])
        self.assertEqual(frame["MSFT"].tolist(), [20.0, 21.0, 23.0, 24.0])

    def test_stale_leftovers_are_swept_but_recent_ones_are_not(self):
        stale = str(ObjectId.from_datetime(datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)))
        recent = str(ObjectId())
        for generation in (stale, recent):
            self.run_async(prices.create_buckets, self.db, [prices.encode_bucket(
                "KO", generation, 2020, np.array([18263]), np.array([1.0]))])
            self.run_async(price_meta.create_catalog, self.db, generation, [])
        self.load("fix.csv", "Date,AAPL\n2020-01-03,99\n")
        left = {generation for _, generation in self.generations()}
        self.assertNotIn(stale, left)
        self.assertIn(recent, left)
        catalogs = {doc["_id"] for doc in self.find("price_meta", {"kind": "catalog"})}
        self.assertEqual(len(catalogs), 2)
        self.assertIn(recent, catalogs)

    def test_unchanged_file_while_the_store_moves(self):
        heads = []

        async def moved(n, *args):
            if n == 2:  # the check after comparing: pretend another import committed
                return {"version": 99, "catalog": "x"}
        watched = PriceService(self.db, self.config, meta=replaced(
            price_meta, get_head=flaky(price_meta.get_head, heads, moved)))
        summary = self.load("again.csv", WIDE, service=watched)
        self.assertEqual((summary.changed, len(heads)), ((), 4))

    def test_a_catalog_replaced_between_two_reads(self):
        catalogs = []
        real = price_meta.get_catalog

        async def first_gone(*args):
            catalogs.append(1)
            return None if len(catalogs) == 1 else await real(*args)
        summary = self.load("again.csv", WIDE, service=PriceService(
            self.db, self.config, meta=replaced(price_meta, get_catalog=first_gone)))
        self.assertEqual((summary.changed, len(catalogs)), ((), 2))
        catalogs.clear()
        frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31), PriceService(
            self.db, self.config, meta=replaced(price_meta, get_catalog=first_gone)))
        self.assertEqual(len(frame), 4)

    def test_a_commit_during_a_read_makes_it_start_over(self):
        heads = []

        async def moved(n, *args):
            if n == 2:  # the check after reading buckets
                return {"version": 99, "catalog": "x"}
        frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31), PriceService(
            self.db, self.config,
            meta=replaced(price_meta, get_head=flaky(price_meta.get_head, heads, moved))))
        self.assertEqual((len(frame), len(heads)), (4, 4))
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n")
        heads.clear()
        service = PriceService(self.db, self.config, meta=replaced(
            price_meta, get_head=flaky(price_meta.get_head, heads, moved)))
        benchmark = self.run_async(service.get_benchmark, D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(benchmark.tolist(), [100.0, 101.0])

    def test_a_store_that_never_settles(self):
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n")
        versions = iter(range(100, 200))
        real = price_meta.get_head

        async def always_moving(db):
            return {**await real(db), "version": next(versions)}
        service = PriceService(self.db, self.config,
                               meta=replaced(price_meta, get_head=always_moving))
        with self.assertRaises(error.ServiceUnavailable):
            self.run_async(service.get_frame, ["AAPL"], D(2019, 1, 1), D(2020, 1, 3))
        with self.assertRaises(error.ServiceUnavailable):
            self.run_async(service.get_benchmark, D(2019, 1, 1), D(2020, 1, 3))

        async def none(*args):
            return None
        lost = PriceService(self.db, self.config, meta=replaced(price_meta, get_catalog=none))
        with self.assertRaises(error.ServiceUnavailable):
            self.run_async(lost.get_catalog)
        with self.assertRaises(error.Conflict):
            self.load("again.csv", WIDE, service=lost)


class ServerStartTest(PricesTest):
    """``python -m indico.server`` loads the sample into an empty store before serving."""

    def start_server(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = environment(self.db_name, INDICO_PORT=str(port), INDICO_LOAD_SAMPLE_PRICES="true",
                          INDICO_DATA_DIR=self.directory)
        process = subprocess.Popen([sys.executable, "-m", "indico.server"], env=env, cwd=ROOT,
                                   stderr=subprocess.PIPE, text=True)
        self.addCleanup(process.kill)
        messages = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            messages.append(json.loads(line)["message"])
            if "listening on" in messages[-1]:
                break
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, rest)
        return messages

    def test_the_sample_is_loaded_on_first_start_only(self):
        messages = self.start_server()
        loaded = [message for message in messages if message.startswith("loaded sample prices")]
        self.assertEqual(len(loaded), 2, messages)
        self.assertIn("20 symbols", loaded[0])
        self.assertIn("1 symbol (SP500)", loaded[1])
        entries = self.run_async(self.service.list_symbols)
        self.assertEqual(len(entries), 21)
        self.assertEqual({entry.rows for entry in entries}, {8313})
        messages = self.start_server()
        self.assertFalse([message for message in messages if "sample" in message], messages)
