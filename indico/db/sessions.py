"""The ``sessions`` collection: one document per bearer token.

Stored shape: ``_id`` (SHA-256 hex of the token: the token itself is never
stored), ``user_id`` (the user's id as a hex string: nx-27017 cannot match
ObjectId values outside ``_id``), ``user`` (a snapshot of the user without the
password hash, so that authenticating a request is one read; rewritten when
the user changes), ``created``, ``expires``. A TTL index removes expired
sessions; lookups also filter on ``expires`` so a session is dead the moment
it expires, whenever the TTL monitor (or, on nx-27017, the server's purge) runs.
"""

from pymongo import ASCENDING

from indico.db.util import journaled, now


async def create_indexes(db):
    """The user index; the expiry index comes from ``ensure_indexes``."""
    await db.sessions.create_index([("user_id", ASCENDING)], name="user")


def user_snapshot(user):
    """The part of a user document that sessions carry: no hash, times as ISO text.

    (Text, because nx-27017 turns dates written by ``$set`` into strings of
    another format.)
    """
    return {"_id": str(user["_id"]), "email": user["email"], "name": user.get("name"),
            "created": user["created"].isoformat(), "preferences": user.get("preferences") or {}}


async def create_session(db, token_hash, user, expires):
    """Store a session of ``user`` (a user document) under ``token_hash``."""
    document = {"_id": token_hash, "user_id": str(user["_id"]), "user": user_snapshot(user),
                "created": now(), "expires": expires}
    await journaled(db, "sessions").insert_one(document)
    return document


async def get_session(db, token_hash):
    """Return the unexpired session with this token hash, or None."""
    return await db.sessions.find_one({"_id": token_hash, "expires": {"$gt": now()}})


async def update_user_sessions(db, snapshot):
    """Rewrite the user snapshot of every session of that user after a change."""
    await journaled(db, "sessions").update_many({"user_id": snapshot["_id"]},
                                               {"$set": {"user": snapshot}})


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
