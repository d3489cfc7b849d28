"""The ``rate_limits`` collection: fixed-window counters shared by every process.

Stored shape: ``_id`` (the counter's key, e.g. ``login:account:<email>``),
``count``, ``expires`` (end of the window; TTL-indexed). A counter whose
window has passed counts as zero even before the TTL monitor removes it.

Callers count an attempt *before* the work it guards and compare the count
:func:`increment` returns with their limit: the count is the result of one
atomic write, so of N concurrent attempts exactly the first ``limit`` see a
count within it, in every process sharing the database. (Reading the counter
first and incrementing after the work lets every concurrent attempt pass.)
There is deliberately no function that only reads a counter.
"""

import datetime

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from indico.db.records import Window, as_datetime
from indico.db.util import Now, journaled, now


async def create_indexes(db: AsyncDatabase) -> None:
    """Nothing beyond the expiry index, which comes from ``ensure_indexes``."""


async def increment(db: AsyncDatabase, key: str, window: float, clock: Now = now) -> Window:
    """Add one to ``key``'s counter, opening a window of ``window`` s if none is live.

    Each call gets a count of its own: the ``$inc`` of a live window is one
    atomic findAndModify, and only one of several concurrent callers that find
    no live window can insert the new one (the others hit the unique ``_id``
    and count in it).

    Args:
        key: the counter's key.
        window: the length in seconds of a window opened by this call.
        clock: the time (tests move it instead of waiting for a window to end).

    Returns:
        the :class:`~indico.db.records.Window` counted in: its count after
        the increment and its end.

    Raises:
        RuntimeError: the window kept appearing and disappearing (three tries).
    """
    collection = journaled(db, "rate_limits")
    for _ in range(3):
        moment = clock()
        document = await collection.find_one_and_update(
            {"_id": key, "expires": {"$gt": moment}}, {"$inc": {"count": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if document:
            return Window(int(document["count"]), as_datetime(document["expires"]))
        expires = moment + datetime.timedelta(seconds=window)
        # No live window: drop an expired counter, then open a new one. (A
        # delete and an insert, not a $set: nx-27017 stores dates written by
        # $set as strings, which would break the expiry comparisons. Nor one
        # upsert: nx-27017 ignores $setOnInsert and refuses pipeline updates,
        # and on MongoDB an upsert filtered on a live window collides with the
        # expired counter's _id. The insert is still the one write that decides:
        # the unique _id lets only one caller open the window.)
        await collection.delete_one({"_id": key, "expires": {"$lte": moment}})
        try:
            await collection.insert_one({"_id": key, "count": 1, "expires": expires})
            return Window(1, expires)
        except DuplicateKeyError:
            continue  # another process opened the window first: count in it
    raise RuntimeError(f"rate limit counter {key!r} kept changing under us")


async def give_back(db: AsyncDatabase, key: str, expires: datetime.datetime) -> None:
    """Take back one attempt counted in the window of ``key`` that ends at ``expires``.

    A later window (the one counted in has passed) is left alone, and the
    count never goes below zero.

    Args:
        key: the counter's key.
        expires: the end of the window the attempt was counted in, as
            :func:`increment` returned it.
    """
    await journaled(db, "rate_limits").update_one(
        {"_id": key, "expires": expires, "count": {"$gt": 0}}, {"$inc": {"count": -1}})


async def reset(db: AsyncDatabase, key: str) -> None:
    """Delete ``key``'s counter: the next attempt opens a new window."""
    await journaled(db, "rate_limits").delete_one({"_id": key})
