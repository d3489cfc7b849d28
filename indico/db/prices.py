"""The ``prices`` collection: adjusted closes, one bucket document per symbol, year and generation.

Stored shape::

    {"symbol": "AAPL", "year": 2020, "generation": "<24 hex digits>",
     "days": <bytes: int32 little-endian, days since 1970-01-01, increasing>,
     "closes": <bytes: float64 little-endian, the price on each of those days>,
     "rows": 253, "first": <datetime>, "last": <datetime>}

A bucket holds one calendar year (about 252 prices), so reading 20 symbols
over 5 years is about 120 small documents through one index. The arrays are
packed as bytes rather than BSON arrays: BSON stores every array element with
its index as a key, and decoding packed bytes is one ``numpy.frombuffer``;
against the embedded server, reading packed buckets measured 3x faster.
``rows``, ``first`` and ``last`` are there for people looking at the data.

Buckets are immutable. An import writes a complete new set of buckets for the
symbols it changes, under a new *generation* (the hex string of an ObjectId:
unique and ordered by creation time; a string because nx-27017 does not
compare ObjectId values outside ``_id``), and only the catalog that the head
document of ``price_meta`` points to says which generation of a symbol is
current. Readers therefore filter by generation.

Buckets go in and come out as :class:`~indico.db.records.Bucket` records
(numpy arrays); the packing is this module's business.
"""

import datetime
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
from bson import ObjectId
from pymongo import ASCENDING, DeleteMany
from pymongo.asynchronous.database import AsyncDatabase

from indico.db.records import Bucket
from indico.db.util import journaled, long_operation

INDEX_NAME = "symbol_year_generation"
# The stub's unique index, one bucket per (symbol, year): it forbids staging a
# new generation, so databases created before buckets had generations lose it.
LEGACY_INDEX_KEY = [("symbol", 1), ("year", 1)]
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


async def create_indexes(db: AsyncDatabase) -> None:
    # By key, not name: nx-27017 reports index names with a prefix of its own.
    for name, index in (await db.prices.index_information()).items():
        if index.get("unique") and list(index["key"]) == LEGACY_INDEX_KEY:
            await db.prices.drop_index(name)
    await db.prices.create_index(
        [("symbol", ASCENDING), ("year", ASCENDING), ("generation", ASCENDING)],
        unique=True, name=INDEX_NAME)


def new_generation() -> tuple[str, datetime.datetime]:
    """Return a new generation and the time it was made (to the second)."""
    oid = ObjectId()
    return str(oid), oid.generation_time


def generation_before(moment: datetime.datetime) -> str:
    """Return the least generation made at ``moment``: every older one compares below it."""
    return str(ObjectId.from_datetime(moment))


def _moment(day: int) -> datetime.datetime:
    return EPOCH + datetime.timedelta(days=int(day))


def encode_bucket(bucket: Bucket) -> dict[str, Any]:
    """Return the stored document of ``bucket`` (its ``days`` in one calendar year)."""
    return {
        "symbol": bucket.symbol, "year": int(bucket.year), "generation": bucket.generation,
        "days": np.ascontiguousarray(bucket.days, dtype="<i4").tobytes(),
        "closes": np.ascontiguousarray(bucket.closes, dtype="<f8").tobytes(),
        "rows": bucket.rows, "first": _moment(bucket.days[0]), "last": _moment(bucket.days[-1]),
    }


def decode_bucket(document: dict[str, Any]) -> Bucket:
    """Return the bucket a stored document holds; its arrays are read-only."""
    return Bucket(document["symbol"], document["generation"], int(document["year"]),
                  np.frombuffer(document["days"], dtype="<i4"),
                  np.frombuffer(document["closes"], dtype="<f8"))


async def list_buckets(db: AsyncDatabase, symbols: Iterable[str], generations: Iterable[str],
                       first_year: int | None = None,
                       last_year: int | None = None) -> list[Bucket]:
    """Return the buckets of ``symbols`` in ``generations`` between two years (inclusive).

    The result may include buckets of a listed generation for another listed
    symbol; callers keep the (symbol, generation) pairs they asked for.
    ``$or`` over the pairs would be exact, but it is 4x slower on nx-27017.

    Args:
        symbols: the symbols.
        generations: the generations to read.
        first_year, last_year: bounds on ``year``; no bound when None.
    """
    query: dict[str, Any] = {"symbol": {"$in": sorted(set(symbols))},
             "generation": {"$in": sorted(set(generations))}}
    years: dict[str, int] = {}
    if first_year is not None:
        years["$gte"] = int(first_year)
    if last_year is not None:
        years["$lte"] = int(last_year)
    if years:
        query["year"] = years
    return [decode_bucket(document) for document in await db.prices.find(query).to_list()]


async def create_buckets(db: AsyncDatabase, buckets: Sequence[Bucket]) -> None:
    """Insert buckets (journaled, unordered: one bulk round trip per batch).

    A long operation (``util.long_operation``): a batch is up to a few megabytes.
    """
    if buckets:
        async with long_operation(db):
            await journaled(db, "prices").insert_many(
                [encode_bucket(bucket) for bucket in buckets], ordered=False)


async def delete_generation(db: AsyncDatabase, generation: str) -> int:
    """Delete every bucket of ``generation`` (an import attempt that did not commit).

    A long operation, like every bulk deletion of buckets.
    """
    async with long_operation(db):
        result = await journaled(db, "prices").delete_many({"generation": generation})
    return result.deleted_count


async def delete_superseded(db: AsyncDatabase, pairs: Iterable[tuple[str, str]],
                            stale_before: str | None = None,
                            keep: Collection[str] = ()) -> int:
    """Delete buckets no catalog needs any more, in one bulk write.

    Args:
        pairs: ``(symbol, generation)`` pairs replaced by a newer generation.
        stale_before: also delete buckets of generations older than this one
            (a generation string) that are not in ``keep``: left by an import
            that crashed before it committed.
        keep: the generations the current catalog uses.

    Returns:
        the number of buckets deleted.
    """
    operations = [DeleteMany({"symbol": symbol, "generation": generation})
                  for symbol, generation in pairs]
    if stale_before is not None:
        operations.append(DeleteMany({"generation": {"$lt": stale_before,
                                                     "$nin": sorted(set(keep))}}))
    if not operations:
        return 0
    async with long_operation(db):
        result = await journaled(db, "prices").bulk_write(operations, ordered=False)
    return result.deleted_count
