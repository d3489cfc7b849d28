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

Reads hand up :class:`~indico.db.records.Head` and
:class:`~indico.db.records.CatalogRecord` records. The head's ``updated`` is
written by ``$set`` at every commit but the first, so on nx-27017 it is stored
as a string (:func:`indico.db.records.as_datetime` reads it back).
"""

from collections.abc import Iterable, Sequence

from pymongo import DeleteMany
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from indico.db.records import CatalogRecord, Head, SymbolEntry
from indico.db.util import journaled, now

HEAD_ID = "head"


async def create_indexes(db: AsyncDatabase) -> None:
    """Nothing to create: every read is by ``_id``."""


async def get_head(db: AsyncDatabase) -> Head | None:
    """Return the head, or None when nothing was ever imported."""
    document = await db.price_meta.find_one({"_id": HEAD_ID})
    return None if document is None else Head.from_document(document)


async def get_catalog(db: AsyncDatabase, generation: str) -> CatalogRecord | None:
    """Return the catalog of ``generation``, or None."""
    document = await db.price_meta.find_one({"_id": generation, "kind": "catalog"})
    return None if document is None else CatalogRecord.from_document(document)


async def create_catalog(db: AsyncDatabase, generation: str,
                         symbols: Sequence[SymbolEntry]) -> None:
    """Store the catalog of ``generation``.

    Args:
        generation: the import generation (also the catalog's ``_id``).
        symbols: its entries, one per stored symbol.
    """
    await journaled(db, "price_meta").insert_one(
        {"_id": generation, "kind": "catalog", "created": now(),
         "symbols": [entry.to_document() for entry in symbols]})


async def update_head(db: AsyncDatabase, expected_version: int, catalog: str) -> int | None:
    """Point the head at ``catalog`` if its version is still ``expected_version``.

    Args:
        expected_version: the version read before the import; 0 when there was no head.
        catalog: the generation of the new catalog.

    Returns:
        the new version, or None when another import committed first.
    """
    collection = journaled(db, "price_meta")
    head: dict[str, object] = {"version": expected_version + 1, "catalog": catalog,
                               "updated": now()}
    if expected_version == 0:
        try:
            await collection.insert_one({"_id": HEAD_ID, **head})
        except DuplicateKeyError:
            return None
        return expected_version + 1
    result = await collection.update_one({"_id": HEAD_ID, "version": expected_version},
                                         {"$set": head})
    return expected_version + 1 if result.matched_count else None


async def delete_catalogs(db: AsyncDatabase, generations: Iterable[str],
                          stale_before: str | None = None, keep: str | None = None) -> int:
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
