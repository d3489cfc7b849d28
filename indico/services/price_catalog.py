"""The read path of the price store: symbols, aligned frames and the benchmark.

:meth:`PriceCatalog.get_frame` returns the adjusted closes of some symbols
between two dates as a DataFrame holding only the dates on which every symbol
has a price (the seed's inner join); :meth:`PriceCatalog.get_benchmark` the
``SP500`` series on the same dates; :meth:`PriceCatalog.list_symbols` what is
stored. Prices are written by :mod:`indico.services.price_import`.

Caching. Buckets never change once written (see :mod:`indico.db.prices`), so
the catalog keeps decoded buckets keyed by (symbol, generation, year) and built
frames keyed by the (symbol, generation) pairs and the window, both in
size-bounded LRU caches (``cachetools.LRUCache``). Before it serves anything,
it reads the head of ``price_meta`` (one small read by ``_id``) and, when the
version moved, the new catalog: an import by any process, such as
``indico-prices`` in another terminal, is seen by the next request. Entries of
generations that left the catalog are dropped then.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from types import ModuleType
from typing import Any

import cachetools
import numpy as np
import pandas as pd
from pymongo.asynchronous.database import AsyncDatabase

from config import Config
from indico import error
from indico.db import price_meta, prices
from indico.db.records import SymbolEntry
from indico.services.price_files import DateLike, Series, date_to_day, day_to_date
from indico.services.price_records import ATTEMPTS, Catalog, head_version, read_catalog

log = logging.getLogger(__name__)

BENCHMARK_SYMBOL = "SP500"
EMPTY = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float64))



def _year(day: int) -> int:
    return day_to_date(day).year


def _remember(cache: cachetools.LRUCache, key: Hashable, value: Any) -> None:
    """Cache ``value`` under ``key``, evicting the least recently used entries."""
    try:
        cache[key] = value
    except ValueError:
        pass  # larger than the whole cache: cachetools refuses it, the caller uses it uncached


def _keep_only(cache: cachetools.LRUCache, keep: Callable[[Any], bool]) -> None:
    """Drop the entries of ``cache`` whose key ``keep`` refuses."""
    for key in [key for key in cache if not keep(key)]:
        del cache[key]


class PriceCatalog:
    """The stored prices as requests read them: symbols, aligned frames, the benchmark.

    Args:
        db: the database handle.
        config: the Config (``price_recheck``).
        cache_rows: the most prices the bucket cache keeps (12 bytes each).
        frame_cache_cells: the most cells the frame cache keeps (8 bytes each).
        benchmark_cache_cells: the most dates the aligned-benchmark cache keeps, counting
            the index and the series (8 bytes each).
        meta, buckets: the collection modules it reads through
            (``indico.db.price_meta`` and ``indico.db.prices``); parameters so
            that tests can make one call fail or lose a race, on the real database.
    """

    def __init__(self, db: AsyncDatabase, config: Config, *, cache_rows: int = 2_000_000,
                 frame_cache_cells: int = 2_000_000, benchmark_cache_cells: int = 500_000,
                 meta: ModuleType = price_meta,
                 buckets: ModuleType = prices) -> None:
        self.db = db
        self.config = config
        self.meta = meta
        self.buckets = buckets
        self._catalog: Catalog | None = None
        self._checked = float("-inf")
        # (symbol, generation, year) -> (days, closes)
        self._buckets: cachetools.LRUCache[tuple[str, str, int], Series] = cachetools.LRUCache(
            maxsize=cache_rows, getsizeof=lambda arrays: len(arrays[0]))
        # (((symbol, generation), ...), first day, last day) -> frame
        self._frames: cachetools.LRUCache[Hashable, pd.DataFrame] = cachetools.LRUCache(
            maxsize=frame_cache_cells, getsizeof=lambda frame: max(frame.size, 1))
        # (benchmark generation, first day, last day) -> (the frame index, the aligned
        # series), sized in dates of both (about 200 five-year windows by default)
        self._benchmarks: cachetools.LRUCache[Hashable, tuple[pd.DatetimeIndex, pd.Series]] = (
            cachetools.LRUCache(maxsize=benchmark_cache_cells,
                                getsizeof=lambda entry: max(2 * len(entry[1]), 1)))
        # (symbol, generation, year) -> the load under way that will bring it
        self._loading: dict[tuple[str, str, int], asyncio.Future[Series | None]] = {}

    async def get_catalog(self) -> Catalog:
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
            if self._catalog is not None and self._catalog.version == head_version(head):
                self._checked = checked
                return self._catalog
            catalog = await read_catalog(self.db, self.meta, head)
            if catalog is not None:
                self._install(catalog)
                self._checked = checked
                return catalog
        raise error.ServiceUnavailable("the price store is changing too fast; try again")

    def _install(self, catalog: Catalog) -> None:
        """Make ``catalog`` current and drop cache entries of generations it does not use."""
        if self._catalog is not None and catalog.version < self._catalog.version:
            return  # a slower concurrent read of an older version
        self._catalog = catalog
        current = {(entry.symbol, entry.generation) for entry in catalog.entries.values()}
        _keep_only(self._buckets, lambda key: key[:2] in current)
        _keep_only(self._frames, lambda key: set(key[0]) <= current)
        _keep_only(self._benchmarks, lambda key: (BENCHMARK_SYMBOL, key[0]) in current)

    async def list_symbols(self) -> list[SymbolEntry]:
        """Return every stored symbol's :class:`SymbolEntry`, sorted by symbol.

        Raises:
            ServiceUnavailable: the store kept changing during every attempt.
        """
        catalog = await self.get_catalog()
        return [catalog.entries[symbol] for symbol in sorted(catalog.entries)]

    @staticmethod
    def _check_known(catalog: Catalog, symbols: list[str]) -> None:
        unknown = [symbol for symbol in symbols if symbol not in catalog.entries]
        if unknown:
            raise error.UnknownSymbols(
                f"no prices for {', '.join(unknown)}; prices/symbols lists the stored symbols; "
                "add prices with indico-prices import FILE",
                symbols=unknown)

    async def get_frame(self, symbols: Sequence[str], start: DateLike,
                        end: DateLike) -> pd.DataFrame:
        """Return the adjusted closes of ``symbols`` on the dates all of them have.

        Args:
            symbols: the symbols as stored: upper case, each once (the request
                models normalize and check them; the catalog does not again).
            start, end: the first and last date of the window, inclusive
                (``datetime.date``, ``datetime``, Timestamp or ISO string).

        Returns:
            a DataFrame of float64, shape ``(dates, len(symbols))``: a
            DatetimeIndex named ``date`` of the dates between ``start`` and
            ``end`` on which every symbol has a price, and one column per
            symbol in the order given. Callers may modify it.

        Raises:
            UnknownSymbols: symbols without prices (422); ``symbols`` lists them.
            Unprocessable: ``end`` is before ``start``, or fewer than 2 dates
                in the window have a price for every symbol.
            ServiceUnavailable: the store kept changing during every attempt.
        """
        symbols = list(symbols)
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
                _remember(self._frames, key, frame)
            # Copy-on-write (pandas 3): the caller's changes never reach the cache.
            return frame.copy(deep=False)
        raise error.ServiceUnavailable("the price store is changing too fast; try again")

    async def get_benchmark(self, start: DateLike, end: DateLike,
                            index: pd.DatetimeIndex | None = None) -> pd.Series | None:
        """Return the ``SP500`` benchmark's prices between ``start`` and ``end``.

        Args:
            start, end: the window, inclusive.
            index: a sorted DatetimeIndex (a frame's from :meth:`get_frame`)
                to align the series on; a date without a benchmark price takes
                the last earlier one in the window.

        Returns:
            a float64 Series named ``SP500``, or None when the benchmark is not
            stored, or when ``index`` starts before its first price in the window.
            The series aligned on ``index`` is cached (by the benchmark's
            generation, the window and the index's dates), as the frames are.

        Raises:
            Unprocessable: ``end`` is before ``start``.
            ServiceUnavailable: the store kept changing during every attempt.
        """
        first_day, last_day = self._window(start, end)
        for _ in range(ATTEMPTS):
            catalog = await self.get_catalog()
            if BENCHMARK_SYMBOL not in catalog.entries:
                return None
            key = (catalog.entries[BENCHMARK_SYMBOL].generation, first_day, last_day)
            cached = self._benchmarks.get(key) if index is not None else None
            if cached is not None and cached[0].equals(index):
                return cached[1].copy(deep=False)
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
            _remember(self._benchmarks, key, (index, aligned))
            return aligned.copy(deep=False)
        raise error.ServiceUnavailable("the price store is changing too fast; try again")

    @staticmethod
    def _window(start: DateLike, end: DateLike) -> tuple[int, int]:
        first_day, last_day = date_to_day(start), date_to_day(end)
        if last_day < first_day:
            raise error.Unprocessable(
                f"the window is empty: {day_to_date(last_day)} is before {day_to_date(first_day)}")
        return first_day, last_day

    @staticmethod
    def _index(days: np.ndarray) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(days.astype("datetime64[D]").astype("datetime64[ns]"),
                                name="date")

    async def _load(self, catalog: Catalog, symbols: list[str], first_day: int,
                    last_day: int) -> dict[str, Series] | None:
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
            loaded = await self._fetch(catalog, missing)
            if loaded is None:
                return None
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

    async def _fetch(self, catalog: Catalog, missing: list[tuple[str, str, int]]
                     ) -> dict[tuple[str, str, int], Series] | None:
        """Read the ``missing`` buckets from the store, once for concurrent callers.

        A bucket another request is already reading is waited for, not read
        again: 20 requests that miss the same 33-year frame at once send one
        read, not 20 (which kept nx-27017 busy past ``INDICO_DB_TIMEOUT``).
        A caller whose read fails or is cancelled hands its waiters None, and
        they start over as after a move of the store.

        Returns:
            ``{key: (days, closes)}``; None when the store moved meanwhile.
        """
        waiting = {key: self._loading[key] for key in missing if key in self._loading}
        mine = [key for key in missing if key not in waiting]
        promised: dict[tuple[str, str, int], asyncio.Future[Series | None]] = {}
        loaded: dict[tuple[str, str, int], Series] = {}
        checked: dict[tuple[str, str, int], Series] = {}  # read, and the store did not move
        if mine:
            loop = asyncio.get_running_loop()
            promised = {key: loop.create_future() for key in mine}
            self._loading.update(promised)
            try:
                buckets = await self.buckets.list_buckets(
                    self.db, {key[0] for key in mine}, {key[1] for key in mine},
                    min(key[2] for key in mine), max(key[2] for key in mine))
                # A year without a bucket is a gap in the symbol's history.
                loaded = dict.fromkeys(mine, EMPTY)
                for bucket in buckets:
                    key = (bucket.symbol, bucket.generation, bucket.year)
                    if key in loaded:
                        loaded[key] = (bucket.days, bucket.closes)
                if head_version(await self.meta.get_head(self.db)) == catalog.version:
                    for key, arrays in loaded.items():
                        _remember(self._buckets, key, arrays)
                    checked = loaded
            finally:
                for key, future in promised.items():
                    if self._loading.get(key) is future:
                        del self._loading[key]
                    future.set_result(checked.get(key))
            loaded = checked
            if not loaded:
                return None
        for key, future in waiting.items():
            # shield: a waiter that is cancelled must not cancel the others' load.
            shared = await asyncio.shield(future)
            if shared is None:
                return None
            loaded[key] = shared
        return loaded

    def _align(self, catalog: Catalog, symbols: list[str], series: dict[str, Series],
               first_day: int, last_day: int) -> pd.DataFrame:
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
