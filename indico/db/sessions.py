"""The ``sessions`` collection: one document per bearer token.

Stored shape: ``_id`` (SHA-256 hex of the token: the token itself is never
stored), ``user_id`` (the user's id as a hex string: nx-27017 cannot match
ObjectId values outside ``_id``), ``created``, ``expires``. A TTL index removes
expired sessions; lookups also filter on ``expires`` so a session is dead the
moment it expires, whenever the TTL monitor (or, on nx-27017, the server's
purge) runs. The user itself is read from ``users`` on every request (sessions
carry no copy of it, so a profile change is one write). Functions that read
the time take ``clock`` (:data:`indico.db.util.Now`), so that tests can move it.
Reads and writes hand up :class:`~indico.db.records.Session` records.
"""

import datetime
from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from indico.db.records import Session
from indico.db.util import Now, find_by_ids, journaled, now


async def create_indexes(db: AsyncDatabase) -> None:
    """The user index; the expiry index comes from ``ensure_indexes``."""
    await db.sessions.create_index([("user_id", ASCENDING)], name="user")


async def create_session(db: AsyncDatabase, token_hash: str, user_id: str,
                         expires: datetime.datetime, clock: Now = now) -> Session:
    """Store a session of user ``user_id`` under ``token_hash``."""
    document = {"_id": token_hash, "user_id": user_id, "created": clock(), "expires": expires}
    await journaled(db, "sessions").insert_one(document)
    return Session.from_document(document)


async def get_sessions(db: AsyncDatabase, token_hashes: Sequence[str],
                       clock: Now = now) -> list[Session | None]:
    """Return the unexpired session under each of ``token_hashes``, or None, in order.

    One command for many lookups (see :mod:`indico.db.batch`).
    """
    found = await find_by_ids(db.sessions, token_hashes, {"expires": {"$gt": clock()}})
    return [None if document is None else Session.from_document(document) for document in found]


async def delete_session(db: AsyncDatabase, token_hash: str) -> int:
    """Delete the session under ``token_hash``; returns how many were deleted (0 or 1)."""
    result = await journaled(db, "sessions").delete_one({"_id": token_hash})
    return result.deleted_count


async def delete_user_sessions(db: AsyncDatabase, user_id: str, keep: str | None = None) -> int:
    """Delete every session of ``user_id`` except the one whose hash is ``keep``."""
    query: dict[str, Any] = {"user_id": user_id}
    if keep is not None:
        query["_id"] = {"$ne": keep}
    result = await journaled(db, "sessions").delete_many(query)
    return result.deleted_count
