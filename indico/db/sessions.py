"""The ``sessions`` collection: one document per bearer token.

Stored shape: ``_id`` (SHA-256 hex of the token: the token itself is never
stored), ``user_id`` (the user's id as a hex string: nx-27017 cannot match
ObjectId values outside ``_id``), ``created``, ``expires``. A TTL index removes expired
sessions; lookups also filter on ``expires`` so a session is dead the moment
it expires, whenever the TTL monitor runs.
"""

from pymongo import ASCENDING

from indico.db.util import journaled, now


async def create_indexes(db):
    await db.sessions.create_index([("expires", ASCENDING)], expireAfterSeconds=0,
                                   name="expires_ttl")
    await db.sessions.create_index([("user_id", ASCENDING)], name="user")


async def create_session(db, token_hash, user_id, expires):
    document = {"_id": token_hash, "user_id": user_id, "created": now(), "expires": expires}
    await journaled(db, "sessions").insert_one(document)
    return document


async def get_session(db, token_hash):
    """Return the unexpired session with this token hash, or None."""
    return await db.sessions.find_one({"_id": token_hash, "expires": {"$gt": now()}})


async def delete_session(db, token_hash):
    result = await journaled(db, "sessions").delete_one({"_id": token_hash})
    return result.deleted_count


async def delete_user_sessions(db, user_id, keep=None):
    """Delete every session of ``user_id`` except the one whose hash is ``keep``."""
    query = {"user_id": user_id}
    if keep is not None:
        query["_id"] = {"$ne": keep}
    result = await journaled(db, "sessions").delete_many(query)
    return result.deleted_count
