"""The ``users`` collection: one document per account, unique by email.

Stored shape: ``_id`` (ObjectId), ``email`` (normalized), ``name``,
``password_hash`` (Argon2id), ``password_version`` (how many times the
password was changed; absent means 0), ``preferences`` (an object, ``{}`` at
creation, holding only the keys that are set), ``created``, ``updated``. Only
``indico.services`` reads the hash; responses are built from the public shape
in ``indico.routes.models``. Writes stamp dates from ``clock``
(:data:`indico.db.util.Now`), so that tests can move it.
"""

from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from indico.db.util import Now, find_by_ids, journaled, now, object_id


async def create_indexes(db):
    await db.users.create_index([("email", ASCENDING)], unique=True, name="email_unique")


async def create_user(db, email, password_hash, name, clock: Now = now):
    """Insert a user; raises DuplicateKeyError when the email is taken."""
    created = clock()
    document = {
        "_id": ObjectId(), "email": email, "name": name, "password_hash": password_hash,
        "preferences": {}, "created": created, "updated": created,
    }
    await journaled(db, "users").insert_one(document)
    return document


async def get_user(db, user_id):
    """Return the user with id ``user_id`` (ObjectId or string), or None."""
    oid = object_id(user_id)
    return None if oid is None else await db.users.find_one({"_id": oid})


async def get_public_users(db, user_ids):
    """Return each user of ``user_ids`` (ObjectIds) without its password hash, or None.

    One command for many lookups (see :mod:`indico.db.batch`); results in order.
    The hash is dropped here rather than by a projection, which costs nx-27017
    a fifth more per document.
    """
    found = await find_by_ids(db.users, user_ids)
    for user in found:
        if user is not None:
            user.pop("password_hash", None)
    return found


async def get_user_by_email(db, email):
    return await db.users.find_one({"email": email})


def profile_update(fields: dict, stamp) -> dict:
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
    to_set = {"updated": stamp}
    to_unset = {}
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


async def update_user(db, user_id, fields, clock: Now = now):
    """Apply ``fields`` (already validated; see :func:`profile_update`).

    Returns:
        False when there is no such user.

    Raises:
        DuplicateKeyError: a new email is taken.
    """
    # update_one, not find_one_and_update: nx-27017 answers a unique-index
    # violation in findAndModify with null instead of error 11000.
    result = await journaled(db, "users").update_one(
        {"_id": user_id}, profile_update(fields, clock()))
    return bool(result.matched_count)


async def set_password(db, user_id, password_hash, clock: Now = now):
    """Store a new password hash and count the change in ``password_version``.

    (A re-hash of the same password at login goes through :func:`update_user`
    and leaves the version alone.)
    """
    await journaled(db, "users").update_one(
        {"_id": user_id},
        {"$set": {"password_hash": password_hash, "updated": clock()},
         "$inc": {"password_version": 1}})


async def update_users(db, changes, clock: Now = now):
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
    requests = [UpdateOne({"_id": user_id}, profile_update(fields, stamp))
                for user_id, fields in changes]
    results = [None] * len(changes)
    try:
        await journaled(db, "users").bulk_write(requests, ordered=False)
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise
        for failure in exc.details["writeErrors"]:
            kind = DuplicateKeyError if failure["code"] == 11000 else OperationFailure
            results[failure["index"]] = kind(failure["errmsg"], failure["code"], failure)
    return results


async def delete_user(db, user_id):
    result = await journaled(db, "users").delete_one({"_id": user_id})
    return result.deleted_count
