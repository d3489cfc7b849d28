"""The prices and price_meta collections: bucket encoding, indexes, the head's compare-and-set."""

import datetime

import numpy as np
from bson import ObjectId
from numpy.testing import assert_array_equal
from pymongo.errors import BulkWriteError

from indico.db import price_meta, prices
from indico.db.records import Bucket, CatalogRecord, Head, SymbolEntry
from indico.db.util import is_embedded
from tests.harness import ServerTest

OLD = str(ObjectId.from_datetime(datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)))
MIDDLE = str(ObjectId.from_datetime(datetime.datetime(2010, 1, 1, tzinfo=datetime.UTC)))
NEW = str(ObjectId())


def bucket(symbol, generation, year=2020):
    first = (datetime.date(year, 1, 2) - datetime.date(1970, 1, 1)).days
    return Bucket(symbol, generation, year, np.array([first, first + 1]), np.array([1.5, 2.25]))


class BucketsTest(ServerTest):

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(self.db, *args, **kwargs))

    def test_encoding_round_trip(self):
        self.run_async(prices.create_buckets, [bucket("AAPL", NEW)])
        [stored] = self.find("prices")
        self.assertEqual((stored["symbol"], stored["year"], stored["generation"], stored["rows"]),
                         ("AAPL", 2020, NEW, 2))
        self.assertEqual(stored["first"].date(), datetime.date(2020, 1, 2))
        self.assertEqual(stored["last"].date(), datetime.date(2020, 1, 3))
        [read] = self.run_async(prices.list_buckets, ["AAPL"], [NEW])
        self.assertIsInstance(read, Bucket)
        self.assertEqual((read.symbol, read.generation, read.year, read.rows),
                         ("AAPL", NEW, 2020, 2))
        assert_array_equal(read.closes, [1.5, 2.25])
        self.assertEqual(read.days[1] - read.days[0], 1)
        self.assertEqual((read.days.dtype, read.closes.dtype), (np.dtype("<i4"), np.dtype("<f8")))

    def test_one_bucket_per_symbol_year_and_generation(self):
        self.run_async(prices.create_buckets, [bucket("AAPL", NEW), bucket("AAPL", OLD)])
        with self.assertRaises(BulkWriteError):
            self.run_async(prices.create_buckets, [bucket("AAPL", NEW)])
        self.run_async(prices.create_buckets, [])
        self.assertEqual(len(self.find("prices")), 2)

    def test_legacy_index_is_replaced(self):
        async def legacy():
            await self.db.prices.create_index([("symbol", 1), ("year", 1)], unique=True,
                                              name="symbol_year")
            await prices.create_indexes(self.db)
            await prices.create_indexes(self.db)
            return await self.db.prices.index_information()
        keys = [list(index["key"]) for index in self.io_loop.run_sync(legacy).values()]
        self.assertNotIn(prices.LEGACY_INDEX_KEY, keys)
        self.assertIn([("symbol", 1), ("year", 1), ("generation", 1)], keys)
        self.run_async(prices.create_buckets, [bucket("AAPL", NEW), bucket("AAPL", OLD)])

    def test_list_buckets_filters_symbols_generations_and_years(self):
        self.run_async(prices.create_buckets, [
            bucket("AAPL", NEW, 2019), bucket("AAPL", NEW, 2020), bucket("AAPL", OLD, 2020),
            bucket("MSFT", NEW, 2020), bucket("KO", NEW, 2020)])
        found = self.run_async(prices.list_buckets, ["AAPL", "MSFT"], [NEW], 2020, 2020)
        self.assertEqual(sorted((read.symbol, read.year) for read in found),
                         [("AAPL", 2020), ("MSFT", 2020)])
        found = self.run_async(prices.list_buckets, ["AAPL"], [NEW, OLD])
        self.assertEqual(len(found), 3)
        found = self.run_async(prices.list_buckets, ["AAPL"], [NEW], 2020)
        self.assertEqual([bucket.year for bucket in found], [2020])

    def test_deletions(self):
        self.run_async(prices.create_buckets, [
            bucket("AAPL", OLD), bucket("AAPL", MIDDLE), bucket("AAPL", NEW),
            bucket("MSFT", MIDDLE), bucket("KO", OLD)])
        self.assertEqual(self.run_async(prices.delete_superseded, []), 0)
        # AAPL's MIDDLE was replaced; nothing is stale while every generation is kept.
        deleted = self.run_async(prices.delete_superseded, [("AAPL", MIDDLE)], NEW,
                                 {OLD, MIDDLE, NEW})
        self.assertEqual(deleted, 1)
        # Then OLD is unused and older than MIDDLE: AAPL's and KO's go.
        deleted = self.run_async(prices.delete_superseded, [], MIDDLE, {NEW, MIDDLE})
        self.assertEqual(deleted, 2)
        self.assertEqual(sorted((doc["symbol"], doc["generation"]) for doc in self.find("prices")),
                         [("AAPL", NEW), ("MSFT", MIDDLE)])
        self.assertEqual(self.run_async(prices.delete_generation, NEW), 1)


class HeadTest(ServerTest):

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(self.db, *args, **kwargs))

    def test_compare_and_set(self):
        self.assertIsNone(self.run_async(price_meta.get_head))
        self.assertEqual(self.run_async(price_meta.update_head, 0, OLD), 1)
        self.assertIsNone(self.run_async(price_meta.update_head, 0, MIDDLE))
        self.assertIsNone(self.run_async(price_meta.update_head, 2, MIDDLE))
        self.assertEqual(self.run_async(price_meta.update_head, 1, NEW), 2)
        head = self.run_async(price_meta.get_head)
        self.assertIsInstance(head, Head)
        self.assertEqual((head.version, head.catalog), (2, NEW))
        # Written by $set, which nx-27017 stores as a string: read back as a UTC datetime.
        [stored] = self.find("price_meta", {"_id": "head"})
        embedded = self.io_loop.run_sync(lambda: is_embedded(self.db))
        self.assertIsInstance(stored["updated"], str if embedded else datetime.datetime)
        self.assertIsInstance(head.updated, datetime.datetime)
        self.assertEqual(head.updated.utcoffset(), datetime.timedelta(0))

    def test_catalogs(self):
        entry = SymbolEntry("AAPL", NEW, datetime.date(2020, 1, 2), datetime.date(2020, 1, 2), 1)
        for generation in (OLD, MIDDLE, NEW):
            self.run_async(price_meta.create_catalog, generation, [entry])
        self.run_async(price_meta.update_head, 0, NEW)
        catalog = self.run_async(price_meta.get_catalog, NEW)
        self.assertIsInstance(catalog, CatalogRecord)
        self.assertEqual((catalog.generation, catalog.symbols), (NEW, (entry,)))
        self.assertIsInstance(catalog.created, datetime.datetime)
        [stored] = self.find("price_meta", {"_id": NEW})
        self.assertEqual(stored["symbols"][0]["first"],
                         datetime.datetime(2020, 1, 2, tzinfo=datetime.UTC))
        self.assertIsNone(self.run_async(price_meta.get_catalog, "head"))
        self.assertEqual(self.run_async(price_meta.delete_catalogs, [MIDDLE]), 1)
        self.assertEqual(self.run_async(price_meta.delete_catalogs, [], NEW, NEW), 1)
        self.assertEqual(sorted(doc["_id"] for doc in self.find("price_meta")), [NEW, "head"])
