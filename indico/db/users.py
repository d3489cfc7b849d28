"""The ``users`` collection: one document per account, unique by email.

Stored shape: ``_id`` (ObjectId), ``email`` (normalized), ``name``,
``password_hash`` (Argon2id), ``password_version`` (how many times the
password was changed; absent means 0), ``preferences`` (an object, ``{}`` at
creation, holding only the keys that are set), ``created``, ``updated``. Only
``indico.services`` reads the hash; responses are built from the public shape
in ``indico.routes.models``. Writes stamp dates from ``clock``
(:data:`indico.db.util.Now`), so that tests can move it.

Reads hand up :class:`~indico.db.records.User` records (no hash) or
:class:`~indico.db.records.Account` records (with it); ids go in and come out
as strings, the ObjectId being this module's business. ``updated`` is written
by ``$set``, so on nx-27017 it is stored as a string after a change
(:func:`indico.db.records.as_datetime` reads it back).
"""

import datetime
from collections.abc import Sequence
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from indico.db.records import Account, User
from indico.db.util import Now, find_by_ids, journaled, now, object_id

# What a change of the profile may set: the request model's fields, and the
# re-hash at login.
Fields = dict[str, Any]


async def create_indexes(db: AsyncDatabase) -> None:
    await db.users.create_index([("email", ASCENDING)], unique=True, name="email_unique")


async def create_user(db: AsyncDatabase, email: str, password_hash: str, name: str | None,
                      clock: Now = now) -> Account:
    """Insert a user; raises DuplicateKeyError when the email is taken."""
    created = clock()
    document = {
        "_id": ObjectId(), "email": email, "name": name, "password_hash": password_hash,
        "preferences": {}, "created": created, "updated": created,
    }
    await journaled(db, "users").insert_one(document)
    return Account.from_document(document)


async def get_user(db: AsyncDatabase, user_id: str) -> Account | None:
    """Return the user with id ``user_id``, with its password hash, or None.

    A string that is no user id (not 24 hex digits) is no user: None.
    """
    oid = object_id(user_id)
    document = None if oid is None else await db.users.find_one({"_id": oid})
    return None if document is None else Account.from_document(document)


async def get_public_users(db: AsyncDatabase, user_ids: Sequence[str]) -> list[User | None]:
    """Return each user of ``user_ids`` without its password hash, or None, in order.

    One command for many lookups (see :mod:`indico.db.batch`). The hash is
    left out by the decoding rather than by a projection, which costs
    nx-27017 a fifth more per document. An id that is no ObjectId finds nothing.
    """
    oids = [object_id(user_id) for user_id in user_ids]
    found = iter(await find_by_ids(db.users, [oid for oid in oids if oid is not None]))
    users: list[User | None] = []
    for oid in oids:
        document = None if oid is None else next(found)
        users.append(None if document is None else User.from_document(document))
    return users


async def get_user_by_email(db: AsyncDatabase, email: str) -> Account | None:
    """Return the user with ``email`` (normalized), with its password hash, or None."""
    document = await db.users.find_one({"email": email})
    return None if document is None else Account.from_document(document)


def profile_update(fields: Fields, stamp: datetime.datetime) -> dict[str, Any]:
    """Return the update document that applies validated ``fields`` to a user.

    Top-level fields are set whole; ``preferences`` is applied key by key:
    ``{"preferences": {"risk_free_rate": 0.02}}`` sets
    ``preferences.risk_free_rate`` and keeps the other keys, and a key given
    as None is removed (``$unset``). The keys come from the request model's
    allowlist, so no dotted path is made of anything a client chose freely.
    (nx-27017 handles these dotted ``$set``/``$unset`` paths as MongoDB does,
    a missing ``preferences`` included; a ``preferences`` of null, which
    MongoDB refuses to descend into and nx-27017 silently leaves alone,
    cannot occur, since :func:`create_user` writes ``{}``.)

    Args:
        fields: the fields to change, as the request model validated them.
        stamp: the ``updated`` date to write.
    """
    to_set: dict[str, Any] = {"updated": stamp}
    to_unset: dict[str, str] = {}
    for name, value in fields.items():
        if name != "preferences":
            to_set[name] = value
            continue
        for key, item in value.items():
            if item is None:
                to_unset[f"preferences.{key}"] = ""
            else:
                to_set[f"preferences.{key}"] = item
    return {"$set": to_set, "$unset": to_unset} if to_unset else {"$set": to_set}


async def update_user(db: AsyncDatabase, user_id: str, fields: Fields,
                      clock: Now = now) -> bool:
    """Apply ``fields`` (already validated; see :func:`profile_update`).

    Returns:
        False when there is no such user.

    Raises:
        DuplicateKeyError: a new email is taken.
    """
    # update_one, not find_one_and_update: nx-27017 answers a unique-index
    # violation in findAndModify with null instead of error 11000.
    result = await journaled(db, "users").update_one(
        {"_id": object_id(user_id)}, profile_update(fields, clock()))
    return bool(result.matched_count)


async def set_password(db: AsyncDatabase, user_id: str, password_hash: str,
                       clock: Now = now) -> None:
    """Store a new password hash and count the change in ``password_version``.

    (A re-hash of the same password at login goes through :func:`update_user`
    and leaves the version alone.)
    """
    await journaled(db, "users").update_one(
        {"_id": object_id(user_id)},
        {"$set": {"password_hash": password_hash, "updated": clock()},
         "$inc": {"password_version": 1}})


async def update_users(db: AsyncDatabase, changes: Sequence[tuple[str, Fields]],
                       clock: Now = now) -> list[Exception | None]:
    """Apply many ``(user_id, fields)`` changes in one journaled command.

    Each change is applied as :func:`profile_update` says (preferences key by
    key), so concurrent changes of different keys of one user all count.

    Returns:
        one entry per change, in order: None when applied, else the error of
        that change alone (DuplicateKeyError when its new email is taken); the
        other changes are applied all the same.

    Raises:
        BulkWriteError: the write concern failed, so no change is known durable.
    """
    stamp = clock()
    requests = [UpdateOne({"_id": object_id(user_id)}, profile_update(fields, stamp))
                for user_id, fields in changes]
    results: list[Exception | None] = [None] * len(changes)
    try:
        await journaled(db, "users").bulk_write(requests, ordered=False)
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise
        for failure in exc.details["writeErrors"]:
            kind = DuplicateKeyError if failure["code"] == 11000 else OperationFailure
            results[failure["index"]] = kind(failure["errmsg"], failure["code"], failure)
    return results


async def delete_user(db: AsyncDatabase, user_id: str) -> int:
    """Delete the user ``user_id``; returns how many were deleted (0 or 1)."""
    result = await journaled(db, "users").delete_one({"_id": object_id(user_id)})
    return result.deleted_count
