"""The ``sessions`` collection: one document per bearer token.

Stored shape: ``_id`` (SHA-256 hex of the token: the token itself is never
stored), ``user_id`` (the user's id as a hex string: nx-27017 cannot match
ObjectId values outside ``_id``), ``created``, ``expires``. A TTL index removes
expired sessions; lookups also filter on ``expires`` so a session is dead the
moment it expires, whenever the TTL monitor (or, on nx-27017, the server's
purge) runs. The user itself is read from ``users`` on every request (sessions
carry no copy of it, so a profile change is one write). Functions that read
the time take ``clock`` (:data:`indico.db.util.Now`), so that tests can move it.
"""

from pymongo import ASCENDING

from indico.db.util import Now, find_by_ids, journaled, now


async def create_indexes(db):
    """The user index; the expiry index comes from ``ensure_indexes``."""
    await db.sessions.create_index([("user_id", ASCENDING)], name="user")


async def create_session(db, token_hash, user, expires, clock: Now = now):
    """Store a session of ``user`` (a user document) under ``token_hash``."""
    document = {"_id": token_hash, "user_id": str(user["_id"]), "created": clock(),
                "expires": expires}
    await journaled(db, "sessions").insert_one(document)
    return document


async def get_sessions(db, token_hashes, clock: Now = now):
    """Return the unexpired session under each of ``token_hashes``, or None, in order.

    One command for many lookups (see :mod:`indico.db.batch`).
    """
    return await find_by_ids(db.sessions, token_hashes, {"expires": {"$gt": clock()}})


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
