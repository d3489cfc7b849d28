"""Prices: aligned frames of adjusted closes, symbol listing and validation, imports.

Reading. :meth:`PriceService.get_frame` returns the adjusted closes of some
symbols between two dates as a DataFrame holding only the dates on which every
symbol has a price (the seed's inner join); :meth:`PriceService.get_benchmark`
the ``SP500`` series on the same dates.

Caching. Buckets never change once written (see :mod:`indico.db.prices`), so
the service keeps decoded buckets keyed by (symbol, generation, year) and built
frames keyed by the (symbol, generation) pairs and the window, both in bounded
LRU maps. Before it serves anything, it reads the head of ``price_meta`` (one
small read by ``_id``) and, when the version moved, the new catalog: an import
by any process, such as ``indico-prices`` in another terminal, is seen by the
next request. Entries of generations that left the catalog are dropped then.

Importing. :meth:`PriceService.import_prices` merges a checked file (see
:mod:`indico.services.price_files`) into the store: for each symbol, the
union of stored and new dates, the file's value winning on a date both have.
Symbols whose prices do not change are left alone, so importing the same file
twice writes nothing the second time. The changed symbols get a complete new
set of buckets under a new generation and a new catalog; moving the head to
that catalog is the single write that commits the file. A failed or lost
attempt removes what it staged; superseded buckets are deleted after the
commit, and anything left by a crashed import is swept by a later one.
"""

import asyncio
import collections
import dataclasses
import datetime
import functools
import logging
import os
import time

import numpy as np
import pandas as pd
from bson import ObjectId
from pymongo.errors import PyMongoError

from indico import error
from indico.db import price_meta, prices
from indico.db.util import long_operation, now
from indico.services import price_files
from indico.services.price_files import (  # noqa: F401 - part of this module's interface
    SYMBOL_PATTERN,
    SYMBOL_RULE,
    FileRejected,
    date_to_day,
    day_to_date,
    normalize_symbol,
)

log = logging.getLogger(__name__)

BENCHMARK_SYMBOL = "SP500"
DATA_DIRECTORY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data")
SAMPLE_FILES = ("sp500_prices.csv.gz", "sp500_index.csv.gz")
# Reads and imports start over when the store moves under them; more than a
# few moves in a row means something is wrong.
ATTEMPTS = 5
# An import commits within this time of its generation's creation or not at
# all, so that the sweep below never removes buckets a slow import still needs.
STAGING_LIMIT = datetime.timedelta(minutes=30)
STALE_AFTER = datetime.timedelta(hours=2)
WRITE_BATCH = 500
EMPTY = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class SymbolEntry:
    """One stored symbol: its generation, first and last date, number of prices."""

    symbol: str
    generation: str
    first: datetime.date
    last: datetime.date
    rows: int

    @classmethod
    def from_document(cls, document):
        return cls(document["symbol"], document["generation"], document["first"].date(),
                   document["last"].date(), int(document["rows"]))

    def to_document(self):
        midnight = datetime.time(tzinfo=datetime.UTC)
        return {"symbol": self.symbol, "generation": self.generation,
                "first": datetime.datetime.combine(self.first, midnight),
                "last": datetime.datetime.combine(self.last, midnight), "rows": self.rows}


@dataclasses.dataclass(frozen=True)
class Catalog:
    """The store at one version: ``entries`` maps each symbol to its SymbolEntry."""

    version: int
    generation: str | None
    entries: dict


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
    symbols: tuple
    rows: int
    first: datetime.date
    last: datetime.date
    changed: tuple
    version: int

    def describe(self):
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


def validate_symbols(symbols, field="symbols"):
    """Return ``symbols`` stripped and upper-cased, or raise ValidationError.

    Raises:
        ValidationError: not a non-empty list, a symbol that is not 1 to 10
            upper-case letters, digits, '.' or '-', or a symbol given twice.
    """
    if isinstance(symbols, str) or not symbols:
        raise error.ValidationError(f"{field}: give a list of at least one symbol", field=field)
    normalized = []
    for value in symbols:
        try:
            symbol = normalize_symbol(value)
        except ValueError as exc:
            raise error.ValidationError(f"{field}: {exc}", field=field) from None
        if symbol in normalized:
            raise error.ValidationError(f"{field}: {symbol} is listed twice", field=field)
        normalized.append(symbol)
    return normalized


def merge_series(stored, new):
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


def split_years(days):
    """Yield ``(year, start, end)`` for each calendar year of sorted ``days``."""
    years = days.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970
    bounds = np.flatnonzero(years[1:] != years[:-1]) + 1
    for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(days)]):
        yield int(years[start]), int(start), int(end)


def _year(day):
    return day_to_date(day).year


def _version(head):
    return head["version"] if head else 0


def _same(left, right):
    return np.array_equal(left[0], right[0]) and np.array_equal(left[1], right[1])


class _LRU:
    """A least-recently-used map bounded by the total ``size`` of its values."""

    def __init__(self, limit, size):
        self.limit = limit
        self.size = size
        self.items = collections.OrderedDict()
        self.total = 0

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key, value):
        self.discard(key)
        self.items[key] = value
        self.total += self.size(value)
        while self.total > self.limit and len(self.items) > 1:
            _, oldest = self.items.popitem(last=False)
            self.total -= self.size(oldest)

    def discard(self, key):
        value = self.items.pop(key, None)
        if value is not None:
            self.total -= self.size(value)

    def keep_only(self, predicate):
        for key in [key for key in self.items if not predicate(key)]:
            self.discard(key)


class PriceService:
    """The price store: aligned frames, symbols, imports.

    Args:
        db: the database handle.
        config: the Config.
        executor: where file parsing runs (``None``: the loop's default executor).
        cache_rows: the most prices the bucket cache keeps (12 bytes each).
        frame_cache_cells: the most cells the frame cache keeps (8 bytes each).
        meta, buckets: the collection modules it stores through
            (``indico.db.price_meta`` and ``indico.db.prices``); parameters so
            that tests can make one call fail or lose a race, on the real database.
        staging_limit: how old staged buckets may be when an import commits.
    """

    def __init__(self, db, config, *, executor=None, cache_rows=2_000_000,
                 frame_cache_cells=2_000_000, meta=price_meta, buckets=prices,
                 staging_limit=STAGING_LIMIT):
        self.db = db
        self.config = config
        self.executor = executor
        self.meta = meta
        self.buckets = buckets
        self.staging_limit = staging_limit
        self._catalog = None
        self._checked = float("-inf")
        self._buckets = _LRU(cache_rows, lambda arrays: len(arrays[0]))
        self._frames = _LRU(frame_cache_cells, lambda frame: max(frame.size, 1))

    # reading

    async def get_catalog(self):
        """Return the current :class:`Catalog`, reading the store only when it moved.

        The store's head is read at most once per ``INDICO_PRICE_RECHECK``
        seconds: an import by another process is seen within that time, and a
        busy server spends no database command on it for most requests.

        Raises:
            ServiceUnavailable: the store kept changing during every attempt.
        """
        if (self._catalog is not None
                and time.monotonic() - self._checked < self.config.price_recheck):
            return self._catalog
        for _ in range(ATTEMPTS):
            checked = time.monotonic()
            head = await self.meta.get_head(self.db)
            if self._catalog is not None and self._catalog.version == _version(head):
                self._checked = checked
                return self._catalog
            catalog = await self._read_catalog(head)
            if catalog is not None:
                self._install(catalog)
                self._checked = checked
                return catalog
        raise error.ServiceUnavailable("the price store is changing too fast; try again")

    async def _read_catalog(self, head):
        """Return the catalog ``head`` names; None when it was replaced meanwhile."""
        if head is None:
            return Catalog(0, None, {})
        document = await self.meta.get_catalog(self.db, head["catalog"])
        if document is None:
            return None
        entries = [SymbolEntry.from_document(entry) for entry in document["symbols"]]
        return Catalog(head["version"], head["catalog"],
                       {entry.symbol: entry for entry in entries})

    def _install(self, catalog):
        """Make ``catalog`` current and drop cache entries of generations it does not use."""
        if self._catalog is not None and catalog.version < self._catalog.version:
            return  # a slower concurrent read of an older version
        self._catalog = catalog
        current = {(entry.symbol, entry.generation) for entry in catalog.entries.values()}
        self._buckets.keep_only(lambda key: key[:2] in current)
        self._frames.keep_only(lambda key: set(key[0]) <= current)

    async def list_symbols(self):
        """Return every stored symbol's :class:`SymbolEntry`, sorted by symbol."""
        catalog = await self.get_catalog()
        return [catalog.entries[symbol] for symbol in sorted(catalog.entries)]

    async def check_symbols(self, symbols):
        """Validate ``symbols`` and check that each one is stored.

        Returns:
            the symbols, normalized (upper case).

        Raises:
            ValidationError: a malformed or repeated symbol.
            UnknownSymbols: symbols without prices; ``symbols`` lists them.
        """
        symbols = validate_symbols(symbols)
        self._check_known(await self.get_catalog(), symbols)
        return symbols

    @staticmethod
    def _check_known(catalog, symbols):
        unknown = [symbol for symbol in symbols if symbol not in catalog.entries]
        if unknown:
            raise error.UnknownSymbols(
                f"no prices for {', '.join(unknown)}; prices/symbols lists the stored symbols",
                symbols=unknown)

    async def get_frame(self, symbols, start, end):
        """Return the adjusted closes of ``symbols`` on the dates all of them have.

        Args:
            symbols: the symbols (case-insensitive).
            start, end: the first and last date of the window, inclusive
                (``datetime.date``, ``datetime``, Timestamp or ISO string).

        Returns:
            a DataFrame of float64, shape ``(dates, len(symbols))``: a
            DatetimeIndex named ``date`` of the dates between ``start`` and
            ``end`` on which every symbol has a price, and one column per
            symbol in the order given. Callers may modify it.

        Raises:
            ValidationError: a malformed or repeated symbol.
            UnknownSymbols: symbols without prices (422); ``symbols`` lists them.
            Unprocessable: ``end`` is before ``start``, or fewer than 2 dates
                in the window have a price for every symbol.
        """
        symbols = validate_symbols(symbols)
        first_day, last_day = self._window(start, end)
        for _ in range(ATTEMPTS):
            catalog = await self.get_catalog()
            self._check_known(catalog, symbols)
            key = (tuple((symbol, catalog.entries[symbol].generation) for symbol in symbols),
                   first_day, last_day)
            frame = self._frames.get(key)
            if frame is None:
                series = await self._load(catalog, symbols, first_day, last_day)
                if series is None:
                    continue
                frame = self._align(catalog, symbols, series, first_day, last_day)
                self._frames.put(key, frame)
            # Copy-on-write (pandas 3): the caller's changes never reach the cache.
            return frame.copy(deep=False)
        raise error.ServiceUnavailable("the price store is changing too fast; try again")

    async def get_benchmark(self, start, end, index=None):
        """Return the ``SP500`` benchmark's prices between ``start`` and ``end``.

        Args:
            start, end: the window, inclusive.
            index: a sorted DatetimeIndex (a frame's from :meth:`get_frame`)
                to align the series on; a date without a benchmark price takes
                the last earlier one in the window.

        Returns:
            a float64 Series named ``SP500``, or None when the benchmark is not
            stored, or when ``index`` starts before its first price in the window.
        """
        first_day, last_day = self._window(start, end)
        for _ in range(ATTEMPTS):
            catalog = await self.get_catalog()
            if BENCHMARK_SYMBOL not in catalog.entries:
                return None
            series = await self._load(catalog, [BENCHMARK_SYMBOL], first_day, last_day)
            if series is None:
                continue
            days, closes = series[BENCHMARK_SYMBOL]
            benchmark = pd.Series(np.array(closes), index=self._index(days),
                                  name=BENCHMARK_SYMBOL)
            if index is None:
                return benchmark
            aligned = benchmark.reindex(index, method="ffill")
            if aligned.isna().any():
                log.info("the benchmark has no price on or before %s", index[0].date())
                return None
            return aligned
        raise error.ServiceUnavailable("the price store is changing too fast; try again")

    @staticmethod
    def _window(start, end):
        first_day, last_day = date_to_day(start), date_to_day(end)
        if last_day < first_day:
            raise error.Unprocessable(
                f"the window is empty: {day_to_date(last_day)} is before {day_to_date(first_day)}")
        return first_day, last_day

    @staticmethod
    def _index(days):
        return pd.DatetimeIndex(days.astype("datetime64[D]").astype("datetime64[ns]"),
                                name="date")

    async def _load(self, catalog, symbols, first_day, last_day):
        """Return ``{symbol: (days, closes)}`` within the window, from cache or store.

        Returns None when the store moved while buckets were read (an import
        may have deleted some of them): the caller starts over.
        """
        first_year, last_year = _year(first_day), _year(last_day)
        found, missing = {}, []
        for symbol in symbols:
            entry = catalog.entries[symbol]
            for year in range(max(first_year, entry.first.year),
                              min(last_year, entry.last.year) + 1):
                key = (symbol, entry.generation, year)
                arrays = self._buckets.get(key)
                if arrays is None:
                    missing.append(key)
                else:
                    found[key] = arrays
        if missing:
            documents = await self.buckets.list_buckets(
                self.db, {key[0] for key in missing}, {key[1] for key in missing},
                min(key[2] for key in missing), max(key[2] for key in missing))
            # A year without a bucket is a gap in the symbol's history.
            loaded = dict.fromkeys(missing, EMPTY)
            for document in documents:
                key = (document["symbol"], document["generation"], document["year"])
                if key in loaded:
                    loaded[key] = prices.decode_bucket(document)
            if _version(await self.meta.get_head(self.db)) != catalog.version:
                return None
            for key, arrays in loaded.items():
                self._buckets.put(key, arrays)
            found.update(loaded)
        series = {}
        for symbol in symbols:
            entry = catalog.entries[symbol]
            parts = [found[(symbol, entry.generation, year)]
                     for year in range(max(first_year, entry.first.year),
                                       min(last_year, entry.last.year) + 1)]
            days = np.concatenate([part[0] for part in parts]) if parts else EMPTY[0]
            closes = np.concatenate([part[1] for part in parts]) if parts else EMPTY[1]
            low = np.searchsorted(days, first_day, side="left")
            high = np.searchsorted(days, last_day, side="right")
            series[symbol] = (days[low:high], closes[low:high])
        return series

    def _align(self, catalog, symbols, series, first_day, last_day):
        """Build the inner-joined frame; raise Unprocessable under 2 common dates."""
        common = functools.reduce(
            lambda left, right: np.intersect1d(left, right, assume_unique=True),
            [series[symbol][0] for symbol in symbols])
        if len(common) < 2:
            window = f"between {day_to_date(first_day)} and {day_to_date(last_day)}"
            empty = [symbol for symbol in symbols if not len(series[symbol][0])]
            if empty:
                stored = "; ".join(f"{symbol} is stored from {catalog.entries[symbol].first} "
                                   f"to {catalog.entries[symbol].last}" for symbol in empty)
                message = f"no prices for {', '.join(empty)} {window} ({stored})"
            else:
                message = (f"only {len(common)} date(s) {window} have a price for every "
                           "symbol; at least 2 are needed: widen the window")
            raise error.Unprocessable(message, symbols=symbols, dates=len(common))
        matrix = np.empty((len(common), len(symbols)), dtype=np.float64)
        for column, symbol in enumerate(symbols):
            days, closes = series[symbol]
            matrix[:, column] = closes[np.searchsorted(days, common)]
        return pd.DataFrame(matrix, index=self._index(common), columns=list(symbols))

    # importing

    async def import_file(self, path, symbol=None, progress=None):
        """Parse ``path`` (in the executor) and import it; see :meth:`import_prices`.

        Raises:
            FileRejected: the file cannot be imported; nothing was stored.
        """
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(self.executor, price_files.parse_file, path, symbol)
        return await self.import_prices(parsed, progress)

    async def import_prices(self, parsed, progress=None):
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
            catalog = await self._read_catalog(head)
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
                if _version(await self.meta.get_head(self.db)) == catalog.version:
                    return self._summary(parsed, (), catalog.version)
                continue
            version = await self._commit(catalog, changed, progress)
            if version is not None:
                return self._summary(parsed, tuple(sorted(changed)), version)
        raise error.Conflict(f"{parsed.path}: other imports kept changing the same prices; "
                             "run this import again")

    @staticmethod
    def _summary(parsed, changed, version):
        return ImportSummary(parsed.path, parsed.layout, tuple(parsed.symbols), parsed.rows,
                             parsed.first, parsed.last, changed, version)

    async def _read_whole(self, catalog, symbols):
        """Return ``{symbol: (days, closes)}``: the whole stored history of ``symbols``."""
        if not symbols:
            return {}
        wanted = {(symbol, catalog.entries[symbol].generation) for symbol in symbols}
        # Every bucket of these symbols: longer than a request's read.
        async with long_operation(self.db):
            documents = await self.buckets.list_buckets(
                self.db, symbols, {generation for _, generation in wanted})
        parts = collections.defaultdict(list)
        for document in sorted(documents, key=lambda document: document["year"]):
            if (document["symbol"], document["generation"]) in wanted:
                parts[document["symbol"]].append(prices.decode_bucket(document))
        return {symbol: (np.concatenate([part[0] for part in pieces]),
                         np.concatenate([part[1] for part in pieces]))
                for symbol, pieces in parts.items()}

    async def _commit(self, catalog, changed, progress):
        """Stage buckets and a catalog for ``changed``, then move the head.

        Returns:
            the new version, or None when another import committed first
            (what was staged is removed).
        """
        generation = str(ObjectId())
        entries = dict(catalog.entries)
        documents = []
        for symbol, (days, closes) in changed.items():
            entries[symbol] = SymbolEntry(symbol, generation, day_to_date(days[0]),
                                          day_to_date(days[-1]), len(days))
            for year, start, end in split_years(days):
                documents.append(prices.encode_bucket(symbol, generation, year,
                                                      days[start:end], closes[start:end]))
        version = None
        outcome_known = True
        total = sum(len(days) for days, _ in changed.values())
        try:
            for offset in range(0, len(documents), WRITE_BATCH):
                batch = documents[offset:offset + WRITE_BATCH]
                await self.buckets.create_buckets(self.db, batch)
                if progress is not None:
                    progress(sum(document["rows"] for document in batch), total)
            await self.meta.create_catalog(
                self.db, generation, [entries[symbol].to_document() for symbol in sorted(entries)])
            if now() - ObjectId(generation).generation_time > self.staging_limit:
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

    async def _discard(self, generation):
        """Remove what an uncommitted attempt staged; a failure leaves it to the sweep."""
        try:
            await self.buckets.delete_generation(self.db, generation)
            await self.meta.delete_catalogs(self.db, [generation])
        except PyMongoError as exc:
            log.warning("could not remove the staged generation %s (%s); a later import "
                        "will", generation, exc)

    async def _clean_up(self, catalog, changed, entries, generation):
        """After a commit: delete superseded buckets and catalogs, and stale leftovers."""
        superseded = [(symbol, catalog.entries[symbol].generation)
                      for symbol in changed if symbol in catalog.entries]
        stale_before = str(ObjectId.from_datetime(now() - STALE_AFTER))
        keep = {entry.generation for entry in entries.values()}
        try:
            await self.buckets.delete_superseded(self.db, superseded, stale_before, keep)
            await self.meta.delete_catalogs(
                self.db, [catalog.generation] if catalog.generation else [], stale_before,
                generation)
        except PyMongoError as exc:
            log.warning("the import is stored, but deleting old buckets failed (%s); a later "
                        "import will", exc)

    async def load_sample_prices_if_empty(self):
        """Import the shipped sample (20 stocks and the S&P 500 index) into an empty store.

        Returns:
            the ImportSummary of each sample file; an empty list when the store
            already holds prices.
        """
        catalog = await self.get_catalog()
        if catalog.entries:
            return []
        return [await self.import_file(os.path.join(DATA_DIRECTORY, name))
                for name in SAMPLE_FILES]
