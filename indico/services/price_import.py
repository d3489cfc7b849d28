"""The write path of the price store: merge a checked file, stage it, commit it, clean up.

:meth:`PriceImporter.import_prices` merges a checked file (see
:mod:`indico.services.price_files`) into the store: for each symbol, the
union of stored and new dates, the file's value winning on a date both have.
Symbols whose prices do not change are left alone, so importing the same file
twice writes nothing the second time. The changed symbols get a complete new
set of buckets under a new generation and a new catalog; moving the head to
that catalog is the single write that commits the file. A failed or lost
attempt removes what it staged; superseded buckets are deleted after the
commit, and anything left by a crashed import is swept by a later one.

The ``indico-prices`` command imports files with it, and the server's first
start loads the shipped sample (:meth:`PriceImporter.load_sample_prices_if_empty`).
Readers (:mod:`indico.services.price_catalog`) see a commit on their next check
of the head.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from indico import error
from indico.db import price_meta, prices
from indico.db.prices import generation_before, new_generation
from indico.db.records import Bucket, SymbolEntry
from indico.db.util import long_operation, now
from indico.services import price_files
from indico.services.price_files import ParsedFile, Series, day_to_date
from indico.services.price_records import ATTEMPTS, Catalog, head_version, read_catalog

log = logging.getLogger(__name__)

DATA_DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data")
SAMPLE_FILES = ("sp500_prices.csv.gz", "sp500_index.csv.gz")
# An import commits within this time of its generation's creation or not at
# all, so that the sweep below never removes buckets a slow import still needs.
STAGING_LIMIT = datetime.timedelta(minutes=30)
STALE_AFTER = datetime.timedelta(hours=2)
WRITE_BATCH = 500

Progress = Callable[[int, int], object]


@dataclasses.dataclass(frozen=True)
class ImportSummary:
    """What importing one file did.

    Attributes:
        path, layout: the file and its layout.
        symbols: the file's symbols, sorted.
        rows: the number of prices in the file.
        first, last: its first and last date.
        changed: the symbols whose stored prices changed (none on a re-import).
        version: the store's version after the import.
    """

    path: str
    layout: str
    symbols: tuple[str, ...]
    rows: int
    first: datetime.date
    last: datetime.date
    changed: tuple[str, ...]
    version: int

    def describe(self) -> str:
        """One line for people: symbols, rows, date range, what changed."""
        count = len(self.symbols)
        names = ", ".join(self.symbols[:5]) + (", ..." if count > 5 else "")
        if not self.changed:
            outcome = "already stored, nothing changed"
        else:
            outcome = (f"{len(self.changed)} new or changed, stored (store version "
                       f"{self.version})")
        return (f"{self.path}: {self.layout}, {count} symbol{'s' * (count != 1)} ({names}), "
                f"{self.rows:,} rows, {self.first}..{self.last}: {outcome}")


def merge_series(stored: Series | None, new: Series) -> Series:
    """Return the union of two ``(days, closes)`` series; ``new`` wins on shared days.

    Args:
        stored: the stored series, or None.
        new: the imported series; both sorted by day, without repeated days.
    """
    if stored is None:
        return new
    days = np.concatenate([stored[0], new[0]])
    closes = np.concatenate([stored[1], new[1]])
    # A stable sort keeps the new value after the stored one on a shared day;
    # keeping the last of each run of equal days keeps the new value.
    order = np.argsort(days, kind="stable")
    days, closes = days[order], closes[order]
    keep = np.ones(len(days), dtype=bool)
    keep[:-1] = days[1:] != days[:-1]
    return days[keep], closes[keep]


def split_years(days: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """Yield ``(year, start, end)`` for each calendar year of sorted ``days``."""
    years = days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    bounds = np.flatnonzero(years[1:] != years[:-1]) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(days)], strict=True):
        yield int(years[start]), int(start), int(end)


def _same(left: Series, right: Series) -> bool:
    return np.array_equal(left[0], right[0]) and np.array_equal(left[1], right[1])


class PriceImporter:
    """Imports price files into the store, each one whole or not at all.

    Args:
        db: the database handle.
        executor: where file parsing runs (``None``: the loop's default executor).
        meta, buckets: the collection modules it stores through
            (``indico.db.price_meta`` and ``indico.db.prices``); parameters so
            that tests can make one call fail or lose a race, on the real database.
        staging_limit: how old staged buckets may be when an import commits.
    """

    def __init__(self, db: AsyncDatabase, *,
                 executor: concurrent.futures.Executor | None = None,
                 meta: ModuleType = price_meta, buckets: ModuleType = prices,
                 staging_limit: datetime.timedelta = STAGING_LIMIT) -> None:
        self.db = db
        self.executor = executor
        self.meta = meta
        self.buckets = buckets
        self.staging_limit = staging_limit

    async def import_file(self, path: str, symbol: str | None = None,
                          progress: Progress | None = None) -> ImportSummary:
        """Parse ``path`` (in the executor) and import it; see :meth:`import_prices`.

        Raises:
            FileRejected: the file cannot be imported; nothing was stored.
            Conflict: as :meth:`import_prices`.
        """
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(self.executor, price_files.parse_file, path, symbol)
        return await self.import_prices(parsed, progress)

    async def import_prices(self, parsed: ParsedFile,
                            progress: Progress | None = None) -> ImportSummary:
        """Merge a checked file into the store, all of it or nothing.

        Args:
            parsed: a :class:`indico.services.price_files.ParsedFile`.
            progress: called as ``progress(written, total)`` after each batch of
                prices written (``total``: the prices of the changed symbols).

        Returns:
            an :class:`ImportSummary`.

        Raises:
            Conflict: other imports kept committing first (retry), or the
                import took longer than 30 minutes to write.
        """
        for _ in range(ATTEMPTS):
            head = await self.meta.get_head(self.db)
            catalog = await read_catalog(self.db, self.meta, head)
            if catalog is None:
                continue
            stored = await self._read_whole(
                catalog, [symbol for symbol in parsed.series if symbol in catalog.entries])
            changed = {}
            for symbol, new in parsed.series.items():
                merged = merge_series(stored.get(symbol), new)
                if symbol not in stored or not _same(stored[symbol], merged):
                    changed[symbol] = merged
            if not changed:
                # Unchanged only if no import replaced what was just compared.
                if head_version(await self.meta.get_head(self.db)) == catalog.version:
                    return self._summary(parsed, (), catalog.version)
                continue
            version = await self._commit(catalog, changed, progress)
            if version is not None:
                return self._summary(parsed, tuple(sorted(changed)), version)
        raise error.Conflict(f"{parsed.path}: other imports kept changing the same prices; "
                             "run this import again")

    @staticmethod
    def _summary(parsed: ParsedFile, changed: tuple[str, ...], version: int) -> ImportSummary:
        return ImportSummary(parsed.path, parsed.layout, tuple(parsed.symbols), parsed.rows,
                             parsed.first, parsed.last, changed, version)

    async def _read_whole(self, catalog: Catalog, symbols: list[str]) -> dict[str, Series]:
        """Return ``{symbol: (days, closes)}``: the whole stored history of ``symbols``."""
        if not symbols:
            return {}
        wanted = {(symbol, catalog.entries[symbol].generation) for symbol in symbols}
        # Every bucket of these symbols: longer than a request's read.
        async with long_operation(self.db):
            buckets = await self.buckets.list_buckets(
                self.db, symbols, {generation for _, generation in wanted})
        parts: dict[str, list[Series]] = collections.defaultdict(list)
        for bucket in sorted(buckets, key=lambda bucket: bucket.year):
            if (bucket.symbol, bucket.generation) in wanted:
                parts[bucket.symbol].append((bucket.days, bucket.closes))
        return {symbol: (np.concatenate([part[0] for part in pieces]),
                         np.concatenate([part[1] for part in pieces]))
                for symbol, pieces in parts.items()}

    async def _commit(self, catalog: Catalog, changed: dict[str, Series],
                      progress: Progress | None) -> int | None:
        """Stage buckets and a catalog for ``changed``, then move the head.

        Returns:
            the new version, or None when another import committed first
            (what was staged is removed).
        """
        generation, started = new_generation()
        entries = dict(catalog.entries)
        buckets = []
        for symbol, (days, closes) in changed.items():
            entries[symbol] = SymbolEntry(symbol, generation, day_to_date(days[0]),
                                          day_to_date(days[-1]), len(days))
            for year, start, end in split_years(days):
                buckets.append(Bucket(symbol, generation, year, days[start:end],
                                      closes[start:end]))
        version = None
        outcome_known = True
        total = sum(len(days) for days, _ in changed.values())
        try:
            for offset in range(0, len(buckets), WRITE_BATCH):
                batch = buckets[offset:offset + WRITE_BATCH]
                await self.buckets.create_buckets(self.db, batch)
                if progress is not None:
                    progress(sum(bucket.rows for bucket in batch), total)
            await self.meta.create_catalog(
                self.db, generation, [entries[symbol] for symbol in sorted(entries)])
            if now() - started > self.staging_limit:
                raise error.Conflict("the import took more than 30 minutes to write its prices; "
                                     "nothing was stored, run it again")
            # If this write fails, it may still have been applied: keep what was
            # staged (a later import sweeps it when unused).
            outcome_known = False
            version = await self.meta.update_head(self.db, catalog.version, generation)
            outcome_known = True
        finally:
            if version is None and outcome_known:
                await self._discard(generation)
        if version is not None:
            await self._clean_up(catalog, changed, entries, generation)
        return version

    async def _discard(self, generation: str) -> None:
        """Remove what an uncommitted attempt staged; a failure leaves it to the sweep."""
        try:
            await self.buckets.delete_generation(self.db, generation)
            await self.meta.delete_catalogs(self.db, [generation])
        except PyMongoError as exc:
            log.warning("could not remove the staged generation %s (%s); a later import "
                        "will", generation, exc)

    async def _clean_up(self, catalog: Catalog, changed: dict[str, Series],
                        entries: dict[str, SymbolEntry], generation: str) -> None:
        """After a commit: delete superseded buckets and catalogs, and stale leftovers."""
        superseded = [(symbol, catalog.entries[symbol].generation)
                      for symbol in changed if symbol in catalog.entries]
        stale_before = generation_before(now() - STALE_AFTER)
        keep = {entry.generation for entry in entries.values()}
        try:
            await self.buckets.delete_superseded(self.db, superseded, stale_before, keep)
            await self.meta.delete_catalogs(
                self.db, [catalog.generation] if catalog.generation else [], stale_before,
                generation)
        except PyMongoError as exc:
            log.warning("the import is stored, but deleting old buckets failed (%s); a later "
                        "import will", exc)

    async def load_sample_prices_if_empty(self) -> list[ImportSummary]:
        """Import the shipped sample (20 stocks and the S&P 500 index) into an empty store.

        Returns:
            the ImportSummary of each sample file; an empty list when the store
            already holds prices.

        Raises:
            Conflict: as :meth:`import_prices`.
        """
        # Every commit stores at least one symbol, so a store with a head holds prices.
        if await self.meta.get_head(self.db) is not None:
            return []
        return [await self.import_file(os.path.join(DATA_DIRECTORY, name))
                for name in SAMPLE_FILES]
