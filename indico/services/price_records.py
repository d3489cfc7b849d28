"""What reading and importing prices share: the catalog's records and how to read one.

The store (see :mod:`indico.db.prices` and :mod:`indico.db.price_meta`) is a
head naming the current catalog; the catalog lists, per symbol, the
generation of its buckets, its first and last date and its number of prices
(a :class:`~indico.db.records.SymbolEntry`).
:mod:`indico.services.price_catalog` reads through it and
:mod:`indico.services.price_import` writes new ones; both start over when the
head moves under them, at most :data:`ATTEMPTS` times.
"""

import dataclasses
from types import ModuleType

from pymongo.asynchronous.database import AsyncDatabase

from indico.db.records import Head, SymbolEntry

# Reads and imports start over when the store moves under them; more than a
# few moves in a row means something is wrong.
ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The store at one version: ``entries`` maps each symbol to its SymbolEntry."""

    version: int
    generation: str | None
    entries: dict[str, SymbolEntry]


def head_version(head: Head | None) -> int:
    """Return the version of the store's ``head`` (0: nothing stored yet)."""
    return head.version if head else 0


async def read_catalog(db: AsyncDatabase, meta: ModuleType, head: Head | None) -> Catalog | None:
    """Return the catalog ``head`` names.

    Args:
        db: the database handle.
        meta: the module that reads ``price_meta`` (``indico.db.price_meta``).
        head: the store's head, or None when nothing is stored.

    Returns:
        the :class:`Catalog` (empty, version 0, when ``head`` is None), or
        None when that catalog was replaced and deleted meanwhile.
    """
    if head is None:
        return Catalog(0, None, {})
    record = await meta.get_catalog(db, head.catalog)
    if record is None:
        return None
    return Catalog(head.version, head.catalog, {entry.symbol: entry for entry in record.symbols})
