"""What reading and importing prices share: the catalog's records and how to read one.

The store (see :mod:`indico.db.prices` and :mod:`indico.db.price_meta`) is a
head naming the current catalog; the catalog lists, per symbol, the
generation of its buckets, its first and last date and its number of prices.
:mod:`indico.services.price_catalog` reads through it and
:mod:`indico.services.price_import` writes new ones; both start over when the
head moves under them, at most :data:`ATTEMPTS` times.
"""

import dataclasses
import datetime
from types import ModuleType
from typing import Any, Self

from pymongo.asynchronous.database import AsyncDatabase

# Reads and imports start over when the store moves under them; more than a
# few moves in a row means something is wrong.
ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class SymbolEntry:
    """One stored symbol: its generation, first and last date, number of prices."""

    symbol: str
    generation: str
    first: datetime.date
    last: datetime.date
    rows: int

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Self:
        """Return the entry a catalog document's ``symbols`` item describes."""
        return cls(document["symbol"], document["generation"], document["first"].date(),
                   document["last"].date(), int(document["rows"]))

    def to_document(self) -> dict[str, Any]:
        """Return the entry as a catalog document's ``symbols`` item (UTC midnights)."""
        midnight = datetime.time(tzinfo=datetime.UTC)
        return {"symbol": self.symbol, "generation": self.generation,
                "first": datetime.datetime.combine(self.first, midnight),
                "last": datetime.datetime.combine(self.last, midnight), "rows": self.rows}


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The store at one version: ``entries`` maps each symbol to its SymbolEntry."""

    version: int
    generation: str | None
    entries: dict[str, SymbolEntry]


def head_version(head: dict[str, Any] | None) -> int:
    """Return the version of the store's ``head`` document (0: nothing stored yet)."""
    return head["version"] if head else 0


async def read_catalog(db: AsyncDatabase, meta: ModuleType,
                       head: dict[str, Any] | None) -> Catalog | None:
    """Return the catalog ``head`` names.

    Args:
        db: the database handle.
        meta: the module that reads ``price_meta`` (``indico.db.price_meta``).
        head: the store's head document, or None when nothing is stored.

    Returns:
        the :class:`Catalog` (empty, version 0, when ``head`` is None), or
        None when that catalog was replaced and deleted meanwhile.
    """
    if head is None:
        return Catalog(0, None, {})
    document = await meta.get_catalog(db, head["catalog"])
    if document is None:
        return None
    entries = [SymbolEntry.from_document(entry) for entry in document["symbols"]]
    return Catalog(head["version"], head["catalog"], {entry.symbol: entry for entry in entries})
