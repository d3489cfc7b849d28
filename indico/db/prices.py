"""The ``prices`` collection: adjusted closes, bucketed per symbol and year."""

from pymongo import ASCENDING


async def create_indexes(db):
    await db.prices.create_index([("symbol", ASCENDING), ("year", ASCENDING)], unique=True,
                                 name="symbol_year")
