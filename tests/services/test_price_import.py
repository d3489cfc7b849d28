"""PriceImporter on the real embedded database: imports, commits, clean-up, races, the sample."""

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from bson import ObjectId
from numpy.testing import assert_array_equal
from pandas.testing import assert_frame_equal
from pymongo.errors import AutoReconnect

from indico import error
from indico.db import price_meta, prices
from indico.db.records import Bucket, Head
from indico.db.util import now
from indico.services import price_import
from indico.services.price_catalog import PriceCatalog
from indico.services.price_files import FileRejected
from indico.services.price_import import PriceImporter
from tests.services.price_fixtures import (
    WIDE,
    D,
    PricesTest,
    failing,
    flaky,
    gone_once,
    replaced,
)
from tests.test_prices_cli import ROOT, environment


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
        assert_array_equal(prices.decode_bucket(buckets[1]).closes, [12.0, 13.0])
        frame = self.frame(["MSFT", "AAPL"], D(2019, 1, 1), D(2020, 12, 31))
        expected = pd.DataFrame({"MSFT": [20.0, 21.0, 23.0], "AAPL": [10.0, 11.0, 13.0]},
                                index=pd.DatetimeIndex(["2019-12-30", "2019-12-31", "2020-01-03"],
                                                       name="date").astype("datetime64[ns]"))
        assert_frame_equal(frame, expected)
        entries = self.run_async(self.catalog.list_symbols)
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
        summaries = self.run_async(self.importer.load_sample_prices_if_empty)
        self.assertEqual([len(summary.symbols) for summary in summaries], [20, 1])
        self.assertEqual(summaries[1].symbols, ("SP500",))
        self.assertEqual(self.run_async(self.importer.load_sample_prices_if_empty), [])
        symbols = ["AAPL", "XOM", "JPM", "KO"]
        frame = self.frame(symbols, D(2018, 1, 1), D(2022, 12, 31))
        path = os.path.join(price_import.DATA_DIRECTORY, "sp500_prices.csv.gz")
        expected = pd.read_csv(path, index_col="Date", parse_dates=True).loc["2018":"2022", symbols]
        assert_array_equal(frame.to_numpy(), expected.to_numpy())
        assert_array_equal(frame.index.to_numpy(), expected.index.to_numpy())
        benchmark = self.run_async(self.catalog.get_benchmark, D(2018, 1, 1), D(2022, 12, 31),
                                   frame.index)
        self.assertEqual(len(benchmark), len(frame))
        self.assertEqual(benchmark.iloc[0], 2695.81)


class RaceTest(PricesTest):
    """What happens when other imports commit during an import, or a write fails."""

    def setUp(self):
        super().setUp()
        self.load("wide.csv", WIDE)

    def test_a_commit_during_an_import_makes_it_start_over(self):
        other = PriceImporter(self.db)
        other_path = self.write("other.csv", "Date,KO\n2020-01-02,1\n")

        async def commit_first(n, *args):
            if n == 1:
                await other.import_file(other_path)
        calls = []
        mine = PriceImporter(self.db, meta=replaced(
            price_meta, update_head=flaky(price_meta.update_head, calls, commit_first)))
        summary = self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", importer=mine)
        self.assertEqual((len(calls), summary.version), (2, 3))  # mine lost, mine again
        self.assertEqual([entry.symbol for entry in self.run_async(self.catalog.list_symbols)],
                         ["AAPL", "KO", "MSFT", "PEP"])
        # Nothing of the lost attempt is left.
        self.assertEqual(len({generation for _, generation in self.generations()}), 3)
        self.assertEqual(len(self.find("price_meta", {"kind": "catalog"})), 1)

    def test_endless_conflicts_give_up_and_leave_nothing(self):
        before = self.store()

        async def lost(*args):
            return None
        mine = PriceImporter(self.db, meta=replaced(price_meta, update_head=lost))
        with self.assertRaises(error.Conflict) as caught:
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", importer=mine)
        self.assertIn("run this import again", caught.exception.message)
        self.assertEqual(self.store(), before)

    def test_a_failed_write_removes_what_was_staged(self):
        before = self.store()
        mine = PriceImporter(self.db, meta=replaced(
            price_meta, create_catalog=failing(AutoReconnect("down"))))
        with self.assertRaises(AutoReconnect):
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", importer=mine)
        self.assertEqual(self.store(), before)

    def test_a_lost_commit_answer_keeps_what_was_staged(self):
        mine = PriceImporter(self.db, meta=replaced(
            price_meta, update_head=failing(AutoReconnect("lost"))))
        with self.assertRaises(AutoReconnect):
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", importer=mine)
        # The head may have moved for all the importer knows: its buckets stay.
        self.assertIn("PEP", [doc["symbol"] for doc in self.find("prices")])
        listed = self.run_async(self.catalog.list_symbols)
        self.assertNotIn("PEP", [entry.symbol for entry in listed])

    def test_a_slow_import_does_not_commit(self):
        before = self.store()
        slow = PriceImporter(self.db, staging_limit=datetime.timedelta(seconds=-1))
        with self.assertRaises(error.Conflict) as caught:
            self.load("mine.csv", "Date,PEP\n2020-01-02,2\n", importer=slow)
        self.assertIn("more than 30 minutes", caught.exception.message)
        self.assertEqual(self.store(), before)

    def test_cleanup_failures_are_logged_not_raised(self):
        async def lost(*args):
            return None
        unlucky = PriceImporter(
            self.db, meta=replaced(price_meta, update_head=lost),
            buckets=replaced(prices, delete_generation=failing(AutoReconnect("down"))))
        with self.assertLogs(price_import.log, "WARNING") as logs:
            version = self.run_async(
                unlucky._commit, self.run_async(self.catalog.get_catalog),
                {"PEP": (np.array([18263], np.int32), np.array([2.0]))}, None)
        self.assertIsNone(version)
        self.assertIn("could not remove the staged generation", logs.output[0])
        careless = PriceImporter(self.db, buckets=replaced(
            prices, delete_superseded=failing(AutoReconnect("down"))))
        with self.assertLogs(price_import.log, "WARNING") as logs:
            summary = self.load("fix.csv", "Date,AAPL\n2020-01-03,99\n", importer=careless)
        self.assertEqual(summary.changed, ("AAPL",))
        self.assertIn("the import is stored", logs.output[0])
        # AAPL's replaced buckets and PEP's staged ones are still there; readers
        # and imports skip them.
        self.assertEqual(len(self.generations()), 4)
        fresh = PriceCatalog(self.db, self.config)
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
            self.run_async(prices.create_buckets, self.db, [Bucket(
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
                return Head(99, "x", now())
        watched = PriceImporter(self.db, meta=replaced(
            price_meta, get_head=flaky(price_meta.get_head, heads, moved)))
        summary = self.load("again.csv", WIDE, importer=watched)
        self.assertEqual((summary.changed, len(heads)), ((), 4))

    def test_a_catalog_replaced_between_two_reads(self):
        catalogs = []
        first_gone = gone_once(price_meta.get_catalog, catalogs)
        summary = self.load("again.csv", WIDE, importer=PriceImporter(
            self.db, meta=replaced(price_meta, get_catalog=first_gone)))
        self.assertEqual((summary.changed, len(catalogs)), ((), 2))

    def test_a_store_that_never_settles(self):
        async def none(*args):
            return None
        lost = PriceImporter(self.db, meta=replaced(price_meta, get_catalog=none))
        with self.assertRaises(error.Conflict):
            self.load("again.csv", WIDE, importer=lost)


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
        entries = self.run_async(self.catalog.list_symbols)
        self.assertEqual(len(entries), 21)
        self.assertEqual({entry.rows for entry in entries}, {8313})
        messages = self.start_server()
        self.assertFalse([message for message in messages if "sample" in message], messages)
