"""The ``price_meta`` collection: the head of the price store and its catalogs.

Stored shapes::

    {"_id": "head", "version": 7, "catalog": "<generation>", "updated": <datetime>}

    {"_id": "<generation>", "kind": "catalog", "created": <datetime>,
     "symbols": [{"symbol": "AAPL", "generation": "<generation>",
                  "first": <datetime>, "last": <datetime>, "rows": 8313}, ...]}

A catalog lists every stored symbol with the generation of its buckets in
``prices``; catalogs are written once and never changed. The head names the
current catalog, and an import commits by moving the head with one
compare-and-set on ``version`` (:func:`update_head`): a single-document write,
so every reader sees either all of a file or none of it, even if the importer
dies half way, and two imports that overlap cannot both commit on the same
version. ``version`` only grows; servers compare it with the version of their
cache before each read (one small read by ``_id``).
"""

from pymongo import DeleteMany
from pymongo.errors import DuplicateKeyError

from indico.db.util import journaled, now

HEAD_ID = "head"


async def create_indexes(db):
    """Nothing to create: every read is by ``_id``."""


async def get_head(db):
    """Return the head document, or None when nothing was ever imported."""
    return await db.price_meta.find_one({"_id": HEAD_ID})


async def get_catalog(db, generation):
    """Return the catalog document of ``generation``, or None."""
    return await db.price_meta.find_one({"_id": generation, "kind": "catalog"})


async def create_catalog(db, generation, symbols):
    """Store the catalog of ``generation``.

    Args:
        generation: the import generation (also the catalog's ``_id``).
        symbols: the entries: dicts with ``symbol``, ``generation``, ``first``,
            ``last`` and ``rows``.
    """
    await journaled(db, "price_meta").insert_one(
        {"_id": generation, "kind": "catalog", "created": now(), "symbols": symbols})


async def update_head(db, expected_version, catalog):
    """Point the head at ``catalog`` if its version is still ``expected_version``.

    Args:
        expected_version: the version read before the import; 0 when there was no head.
        catalog: the generation of the new catalog.

    Returns:
        the new version, or None when another import committed first.
    """
    collection = journaled(db, "price_meta")
    head = {"version": expected_version + 1, "catalog": catalog, "updated": now()}
    if expected_version == 0:
        try:
            await collection.insert_one({"_id": HEAD_ID, **head})
        except DuplicateKeyError:
            return None
        return head["version"]
    result = await collection.update_one({"_id": HEAD_ID, "version": expected_version},
                                         {"$set": head})
    return head["version"] if result.matched_count else None


async def delete_catalogs(db, generations, stale_before=None, keep=None):
    """Delete the catalogs of ``generations``, and unused ones older than ``stale_before``.

    Args:
        generations: catalogs replaced by a newer one.
        stale_before: a generation; older catalogs other than ``keep`` are
            deleted too (left by imports that did not commit).
        keep: the current catalog's generation.
    """
    operations = [DeleteMany({"kind": "catalog", "_id": {"$in": sorted(set(generations))}})]
    if stale_before is not None:
        operations.append(DeleteMany({"kind": "catalog",
                                      "_id": {"$lt": stale_before, "$ne": keep}}))
    result = await journaled(db, "price_meta").bulk_write(operations, ordered=False)
    return result.deleted_count
