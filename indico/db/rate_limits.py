"""The ``rate_limits`` collection: fixed-window counters shared by every process.

Stored shape: ``_id`` (the counter's key, e.g. ``login:account:<email>``),
``count``, ``expires`` (end of the window; TTL-indexed). A counter whose
window has passed counts as zero even before the TTL monitor removes it.
"""

import datetime

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from indico.db.util import journaled, now


async def create_indexes(db):
    """Nothing beyond the expiry index, which comes from ``ensure_indexes``."""


async def get_counter(db, key):
    """Return ``(count, expires)`` of the live window for ``key``; (0, None) if none."""
    document = await db.rate_limits.find_one({"_id": key, "expires": {"$gt": now()}})
    return (document["count"], document["expires"]) if document else (0, None)


async def increment(db, key, window):
    """Add one to ``key``'s counter, opening a window of ``window`` s if none is live.

    Returns:
        ``(count, expires)`` after the increment.
    """
    collection = journaled(db, "rate_limits")
    for _ in range(3):
        moment = now()
        document = await collection.find_one_and_update(
            {"_id": key, "expires": {"$gt": moment}}, {"$inc": {"count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if document:
            return document["count"], document["expires"]
        expires = moment + datetime.timedelta(seconds=window)
        # No live window: drop an expired counter, then open a new one. (A
        # delete and an insert, not a $set: nx-27017 stores dates written by
        # $set as strings, which would break the expiry comparisons.)
        await collection.delete_one({"_id": key, "expires": {"$lte": moment}})
        try:
            await collection.insert_one({"_id": key, "count": 1, "expires": expires})
            return 1, expires
        except DuplicateKeyError:
            continue  # another process opened the window first: count in it
    raise RuntimeError(f"rate limit counter {key!r} kept changing under us")


async def reset(db, key):
    await journaled(db, "rate_limits").delete_one({"_id": key})
