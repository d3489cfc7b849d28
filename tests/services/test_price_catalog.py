"""PriceCatalog against the real embedded database: frames, the benchmark, the caches, races."""

import asyncio
import dataclasses

import numpy as np
import pandas as pd
import pymongo.errors
from numpy.testing import assert_array_equal
from pandas.testing import assert_frame_equal

from indico import error
from indico.db import price_meta, prices
from indico.db.records import Head
from indico.db.util import now
from indico.services.price_catalog import PriceCatalog
from indico.services.price_import import PriceImporter
from indico.services.price_records import Catalog
from tests.harness import test_config
from tests.services.price_fixtures import WIDE, D, PricesTest, flaky, gone_once, replaced


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
        # The form of a symbol and repeats are the request models' rules, checked
        # once there: here a repeated symbol is a repeated column.
        frame = self.frame(["AAPL", "AAPL"], D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(list(frame.columns), ["AAPL", "AAPL"])
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

    def test_symbols_must_be_stored_as_given(self):
        # The request models normalize symbols (upper case, each once); the catalog
        # takes them as stored and does not check their form again.
        frame = self.frame(["MSFT", "AAPL"], D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(list(frame.columns), ["MSFT", "AAPL"])
        for symbols in (["KO"], ["aapl"], ["AAPL", "not a symbol"]):
            with self.subTest(symbols=symbols), self.assertRaises(error.UnknownSymbols) as caught:
                self.frame(symbols, D(2019, 1, 1), D(2020, 12, 31))
            self.assertEqual(caught.exception.details["symbols"], [symbols[-1]])

    def test_benchmark(self):
        start, end = D(2019, 12, 1), D(2020, 1, 31)
        self.assertIsNone(self.run_async(self.catalog.get_benchmark, start, end))
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n2020-01-03,103\n")
        benchmark = self.run_async(self.catalog.get_benchmark, start, end)
        self.assertEqual((benchmark.name, benchmark.tolist()), ("SP500", [100.0, 101.0, 103.0]))
        frame = self.frame(["AAPL"], start, end)
        aligned = self.run_async(self.catalog.get_benchmark, start, end, frame.index)
        # 2020-01-02 has no index level: the last earlier one stands in.
        self.assertEqual(aligned.tolist(), [100.0, 101.0, 101.0, 103.0])
        self.assertTrue(aligned.index.equals(frame.index))
        early = pd.DatetimeIndex(["2019-12-27", "2019-12-30"])
        self.assertIsNone(self.run_async(self.catalog.get_benchmark, start, end, early))

    def test_the_aligned_benchmark_is_cached_and_follows_imports(self):
        catalog = Counting(self.db, self.config)
        start, end = D(2019, 12, 1), D(2020, 1, 31)
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n2020-01-03,103\n")
        frame = self.frame(["AAPL"], start, end, catalog)

        def aligned(index):
            return self.run_async(catalog.get_benchmark, start, end, index)

        first = aligned(frame.index)
        self.assertEqual(catalog.loads, 1)
        first.iloc[0] = -1.0  # the caller's copy: the cache keeps its own
        self.assertEqual(aligned(frame.index).tolist(), [100.0, 101.0, 101.0, 103.0])
        self.assertEqual(catalog.loads, 1)  # served from the cache
        # Another index on the same window is aligned anew, not served the cached one.
        self.assertEqual(aligned(frame.index[1:]).tolist(), [101.0, 101.0, 103.0])
        self.assertEqual(catalog.loads, 2)
        aligned(frame.index)
        aligned(frame.index)
        self.assertEqual(catalog.loads, 3)  # realigned once, then cached again
        # An import of new index levels is seen by the next request.
        self.load("index.csv", "Date,SP500\n2019-12-30,200\n2019-12-31,201\n2020-01-03,203\n")
        self.assertEqual(aligned(frame.index).tolist(), [200.0, 201.0, 201.0, 203.0])
        self.assertEqual(catalog.loads, 4)


    def test_an_aligned_benchmark_larger_than_its_cache_is_not_kept(self):
        catalog = Counting(self.db, self.config, benchmark_cache_cells=7)  # 4 dates: 8 cells
        start, end = D(2019, 12, 1), D(2020, 1, 31)
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n2020-01-03,103\n")
        frame = self.frame(["AAPL"], start, end, catalog)
        for loads in (1, 2):
            aligned = self.run_async(catalog.get_benchmark, start, end, frame.index)
            self.assertEqual(aligned.tolist(), [100.0, 101.0, 101.0, 103.0])
            self.assertEqual(catalog.loads, loads)


class Counting(PriceCatalog):
    """A catalog that counts the benchmark's reads of the store (or of the bucket cache)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads = 0

    async def _load(self, catalog, symbols, first_day, last_day):
        if symbols == ["SP500"]:
            self.loads += 1
        return await super()._load(catalog, symbols, first_day, last_day)


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
        catalog = PriceCatalog(self.db, test_config(database=self.db_name, price_recheck=60))
        first = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), catalog)
        self.counter.names.clear()
        again = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), catalog)
        self.assertEqual(self.counter.names, [])
        assert_frame_equal(first, again)

    def test_callers_cannot_change_the_cache(self):
        frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31))
        frame.iloc[0, 0] = -1.0
        frame["AAPL"] *= 2
        self.assertEqual(self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31)).iloc[0, 0], 10.0)

    def test_an_import_elsewhere_is_seen_by_the_next_read(self):
        self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31))
        self.run_async(self.catalog.list_symbols)
        other_process = PriceImporter(self.db)
        self.load("fix.csv", "Date,AAPL\n2019-12-31,11.25\n", importer=other_process)
        frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(frame.loc["2019-12-31", "AAPL"], 11.25)
        self.load("new.csv", "Date,KO\n2020-01-02,1\n", importer=other_process)
        self.assertIn("KO", [entry.symbol for entry in self.run_async(self.catalog.list_symbols)])

    def test_small_caches_evict_and_stay_correct(self):
        # Room for one frame of 6 cells: the second frame evicts the first.
        catalog = PriceCatalog(self.db, self.config, cache_rows=2, frame_cache_cells=6)
        for _ in range(2):
            frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), catalog)
            self.assertEqual(frame.shape, (3, 2))
            frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31), catalog)
            self.assertEqual(frame.shape, (4, 1))
        self.assertLessEqual(len(catalog._buckets), 2)
        self.assertEqual(len(catalog._frames), 1)

    def test_a_frame_larger_than_the_whole_cache_is_served_uncached(self):
        catalog = PriceCatalog(self.db, self.config, cache_rows=1, frame_cache_cells=1)
        for _ in range(2):
            frame = self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31), catalog)
            self.assertEqual(frame.shape, (3, 2))
            self.assertEqual(frame["MSFT"].tolist(), [20.0, 21.0, 23.0])
        self.assertEqual(len(catalog._frames), 0)
        self.assertEqual(len(catalog._buckets), 1)  # MSFT's 2020 bucket holds 1 price

    def test_an_older_catalog_never_replaces_a_newer_one(self):
        self.run_async(self.catalog.get_catalog)
        current = self.catalog._catalog
        self.catalog._install(Catalog(current.version - 1, None, {}))
        self.assertIs(self.catalog._catalog, current)


class RaceTest(PricesTest):
    """What happens when imports commit during a read."""

    def setUp(self):
        super().setUp()
        self.load("wide.csv", WIDE)

    def test_a_catalog_replaced_between_two_reads(self):
        catalogs = []
        first_gone = gone_once(price_meta.get_catalog, catalogs)
        frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31), PriceCatalog(
            self.db, self.config, meta=replaced(price_meta, get_catalog=first_gone)))
        self.assertEqual(len(frame), 4)

    def test_a_commit_during_a_read_makes_it_start_over(self):
        heads = []

        async def moved(n, *args):
            if n == 2:  # the check after reading buckets
                return Head(99, "x", now())
        frame = self.frame(["AAPL"], D(2019, 1, 1), D(2020, 12, 31), PriceCatalog(
            self.db, self.config,
            meta=replaced(price_meta, get_head=flaky(price_meta.get_head, heads, moved))))
        self.assertEqual((len(frame), len(heads)), (4, 4))
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n")
        heads.clear()
        catalog = PriceCatalog(self.db, self.config, meta=replaced(
            price_meta, get_head=flaky(price_meta.get_head, heads, moved)))
        benchmark = self.run_async(catalog.get_benchmark, D(2019, 1, 1), D(2020, 12, 31))
        self.assertEqual(benchmark.tolist(), [100.0, 101.0])

    def test_a_store_that_never_settles(self):
        self.load("index.csv", "Date,SP500\n2019-12-30,100\n2019-12-31,101\n")
        versions = iter(range(100, 200))
        real = price_meta.get_head

        async def always_moving(db):
            return dataclasses.replace(await real(db), version=next(versions))
        catalog = PriceCatalog(self.db, self.config,
                               meta=replaced(price_meta, get_head=always_moving))
        with self.assertRaises(error.ServiceUnavailable):
            self.run_async(catalog.get_frame, ["AAPL"], D(2019, 1, 1), D(2020, 1, 3))
        with self.assertRaises(error.ServiceUnavailable):
            self.run_async(catalog.get_benchmark, D(2019, 1, 1), D(2020, 1, 3))

        async def none(*args):
            return None
        lost = PriceCatalog(self.db, self.config, meta=replaced(price_meta, get_catalog=none))
        with self.assertRaises(error.ServiceUnavailable):
            self.run_async(lost.get_catalog)


class SharedLoadTest(PricesTest):
    """Concurrent misses of the same buckets share one read of the store."""

    def setUp(self):
        super().setUp()
        self.load("wide.csv", WIDE)

    def catalog_with(self, list_buckets):
        return PriceCatalog(self.db, self.config,
                            buckets=replaced(prices, list_buckets=list_buckets))

    def test_concurrent_cold_loads_of_one_frame_read_the_buckets_once(self):
        calls = []
        catalog = self.catalog_with(flaky(prices.list_buckets, calls))

        async def five_at_once():
            return await asyncio.gather(*(catalog.get_frame(["AAPL", "MSFT"], D(2019, 1, 1),
                                                            D(2020, 12, 31)) for _ in range(5)))
        frames = self.run_async(five_at_once)
        self.assertEqual(len(calls), 1)  # before: one read per request, 5
        for frame in frames[1:]:
            assert_frame_equal(frame, frames[0])
        assert_frame_equal(frames[0], self.frame(["AAPL", "MSFT"], D(2019, 1, 1), D(2020, 12, 31)))

    def test_a_failed_shared_read_lets_each_waiter_read_for_itself(self):
        calls = []
        release = asyncio.Event()

        async def first_fails(number, *args, **kwargs):
            if number == 1:
                await release.wait()  # the others are waiting for this read by now
                raise pymongo.errors.NetworkTimeout("no answer from the database")
            return None
        catalog = self.catalog_with(flaky(prices.list_buckets, calls, first_fails))

        async def three_at_once():
            tasks = [asyncio.ensure_future(catalog.get_frame(["AAPL"], D(2019, 1, 1),
                                                             D(2020, 12, 31))) for _ in range(3)]
            while not catalog._loading:
                await asyncio.sleep(0)
            for _ in range(10):  # let the other two reach their wait for the first read
                await asyncio.sleep(0)
            release.set()
            return await asyncio.gather(*tasks, return_exceptions=True)
        first, *others = self.run_async(three_at_once)
        self.assertIsInstance(first, pymongo.errors.NetworkTimeout)
        for frame in others:
            assert_array_equal(frame["AAPL"], self.frame(["AAPL"], D(2019, 1, 1),
                                                         D(2020, 12, 31))["AAPL"])
        # The failed read, then the waiters' own: one of them reads, the other waits for it.
        self.assertEqual(len(calls), 2)
        self.assertEqual(catalog._loading, {})
