"""Helpers shared by the collection modules: time, ids, write concern."""

import datetime

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import WriteConcern

JOURNALED = WriteConcern(w=1, j=True)


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


def journaled(db, name):
    """Return collection ``name`` with a journaled write concern (w=1, j=true)."""
    return db.get_collection(name, write_concern=JOURNALED)
