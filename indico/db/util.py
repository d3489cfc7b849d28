"""Helpers shared by the collection modules: time, ids, write concern."""

import datetime

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, WriteConcern

JOURNALED = WriteConcern(w=1, j=True)
EMBEDDED_PROCESS = "nx_27017"


def now():
    """The current UTC time, truncated to milliseconds as BSON stores it."""
    moment = datetime.datetime.now(datetime.timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def object_id(value):
    """Return ``value`` as an ObjectId, or None when it is not a valid one."""
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str) or len(value) != 24:
        return None
    try:
        return ObjectId(value)
    except InvalidId:
        return None


async def find_by_ids(collection, ids, conditions=None):
    """Return the document of ``collection`` with each of ``ids``, or None, in order.

    One command for all of them (see :mod:`indico.db.batch`); ``conditions``
    are more filters every document must meet.
    """
    keys = list(set(ids))
    query = {"_id": {"$in": keys}, **(conditions or {})}
    found = {document["_id"]: document
             async for document in collection.find(query, batch_size=len(keys))}
    return [found.get(key) for key in ids]


def journaled(db, name):
    """Return collection ``name`` with a journaled write concern (w=1, j=true)."""
    return db.get_collection(name, write_concern=JOURNALED)


async def is_embedded(db):
    """True when ``db`` lives on nx-27017 rather than on a MongoDB server."""
    info = await db.client.admin.command("buildInfo")
    return info.get("process") == EMBEDDED_PROCESS


async def create_expiry_index(db, name, embedded):
    """Index ``expires`` of collection ``name`` so that expired documents go away.

    On MongoDB this is a TTL index. nx-27017 runs two deletes before every read
    and write of a collection with a TTL index (about 1.2 ms each time), so
    there the index is a plain one, an old TTL index is dropped, and the server
    calls :func:`purge_expired` now and then instead. Queries filter on
    ``expires`` either way, so nothing expired is ever served.
    """
    collection = db[name]
    if not embedded:
        await collection.create_index([("expires", ASCENDING)], expireAfterSeconds=0,
                                      name="expires_ttl")
        return
    for index, info in (await collection.index_information()).items():
        if "expireAfterSeconds" in info:
            await collection.drop_index(index)
    await collection.create_index([("expires", ASCENDING)], name="expires")


async def purge_expired(db, name):
    """Delete the expired documents of collection ``name``; returns how many."""
    result = await db[name].delete_many({"expires": {"$lte": now()}})
    return result.deleted_count
