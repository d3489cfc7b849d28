"""Parse price files into per-symbol arrays: pure Python, numpy and pandas, no database.

A file is CSV, optionally gzip-compressed (told by its first bytes, not its
name), UTF-8, in one of three layouts told apart by the header row (names are
case-insensitive, and spaces and punctuation in ``Adj Close`` and the like do
not matter):

- **wide**: a ``Date`` column and one column per ticker, the column name being
  the symbol (the shipped sample). An empty cell means no price that day.
- **long**: exactly the columns ``symbol``, ``date``, ``price``, in any order.
- **Yahoo-style**: ``Date,Open,High,Low,Close,Adj Close,Volume`` for one
  ticker; the price is ``Adj Close`` (``Close`` when there is no ``Adj Close``),
  the symbol comes from the caller (``--symbol``) or the file name
  (``AAPL.csv``, ``brk-b.csv.gz``).

Dates are ISO ``YYYY-MM-DD`` or the seed's ``MM-DD-YY`` (``69``-``99`` are
1969-1999, ``00``-``68`` are 2000-2068). Symbols are upper-cased. Cells that
are empty or say ``NA``, ``N/A``, ``NaN``, ``null`` or ``#N/A`` are missing
prices and are skipped; any other price must be a finite number above zero.

A file is accepted whole or rejected whole: :func:`parse_file` reads and checks
all of it before returning, and raises :class:`FileRejected` naming the file,
the line (1 is the header) and the reason on the first problem it finds.
"""

import csv
import dataclasses
import datetime
import gzip
import io
import os
import re
import zlib
from collections.abc import Callable
from typing import Any, SupportsInt, TypeAlias

import numpy as np
import pandas as pd

from indico import error

Path: TypeAlias = str | os.PathLike[str]
Series: TypeAlias = tuple[np.ndarray, np.ndarray]  # (days since 1970-01-01 as int32, closes)
DateLike: TypeAlias = datetime.date | datetime.datetime | pd.Timestamp | str

LAYOUTS_HELP = """\
layouts (told apart by the header; names are case-insensitive):
  wide    Date,AAPL,MSFT,...          one column per ticker (the shipped sample)
  long    symbol,date,price           one price per line, columns in any order
  yahoo   Date,Open,High,Low,Close,Adj Close,Volume
                                      one ticker per file; the price is Adj Close
                                      (Close if absent); the symbol is --symbol or
                                      the file name (AAPL.csv, brk-b.csv.gz)
dates: YYYY-MM-DD or MM-DD-YY. Files may be gzip-compressed (.csv.gz).
Empty cells and NA, N/A, NaN, null, #N/A are missing prices (skipped).
A file is imported whole or not at all: an unparseable date or number, a price
that is zero or negative, the same date twice for a symbol or an unknown layout
rejects the file with its line and reason, and nothing from it is stored.
Importing again is safe: a date already stored for a symbol takes the file's
value, other stored dates stay, and a file already stored changes nothing."""

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9.\-]{1,10}$")
SYMBOL_RULE = "1 to 10 upper-case letters, digits, '.' or '-'"
MISSING_MARKERS = ("", "NA", "N/A", "NAN", "NULL", "#N/A")
YAHOO_COLUMNS = {"open", "high", "low", "close"}
LONG_COLUMNS = ("date", "price", "symbol")
EPOCH = datetime.date(1970, 1, 1)


class FileRejected(error.Unprocessable):
    """A price file that cannot be imported; nothing from it is stored.

    Args:
        path: the file as given.
        line: the 1-based line of the problem (1 is the header), or None when
            the problem is the whole file (unreadable, empty).
        reason: what is wrong, for humans.
    """

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        where = f"line {line}: " if line else ""
        super().__init__(f"{path}: {where}{reason}", file=str(path), line=line, reason=reason)
        self.path = path
        self.line = line
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ParsedFile:
    """A checked price file.

    Attributes:
        path: the file as given.
        layout: ``"wide"``, ``"long"`` or ``"yahoo"``.
        series: ``{symbol: (days, closes)}``; ``days`` is an int32 array of
            days since 1970-01-01, strictly increasing, and ``closes`` the
            float64 prices on those days, all finite and positive.
    """

    path: str
    layout: str
    series: dict[str, Series]

    @property
    def symbols(self) -> list[str]:
        """The file's symbols, sorted."""
        return sorted(self.series)

    @property
    def rows(self) -> int:
        """The number of prices in the file."""
        return sum(len(days) for days, _ in self.series.values())

    @property
    def first(self) -> datetime.date:
        """The file's first date."""
        return day_to_date(min(int(days[0]) for days, _ in self.series.values()))

    @property
    def last(self) -> datetime.date:
        """The file's last date."""
        return day_to_date(max(int(days[-1]) for days, _ in self.series.values()))


def day_to_date(day: SupportsInt) -> datetime.date:
    """Return the ``datetime.date`` that is ``day`` days after 1970-01-01."""
    return EPOCH + datetime.timedelta(days=int(day))


def date_to_day(value: DateLike) -> int:
    """Return the days since 1970-01-01 of a date, datetime, Timestamp or ISO string."""
    return int((pd.Timestamp(value).date() - EPOCH).days)


def normalize_symbol(value: object) -> str:
    """Return ``value`` stripped and upper-cased.

    Raises:
        ValueError: the result is not 1 to 10 upper-case letters, digits, '.' or '-'.
    """
    symbol = str(value).strip().upper()
    if not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"{_show(value)} is not a valid symbol ({SYMBOL_RULE})")
    return symbol


def symbol_from_path(path: Path) -> str | None:
    """Return the symbol a Yahoo-style file's name gives, or None.

    ``AAPL.csv`` -> ``AAPL``, ``brk-b.csv.gz`` -> ``BRK-B``.
    """
    name = os.path.basename(str(path))
    for suffix in (".gz", ".csv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
    try:
        return normalize_symbol(name)
    except ValueError:
        return None


def _show(value: object, limit: int = 40) -> str:
    """``repr`` of a cell, shortened: rejected files can hold anything."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _key(name: str) -> str:
    """A header name reduced for matching: ``" Adj. Close "`` -> ``"adjclose"``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _read_text(path: Path) -> str:
    """Return the file's text, gunzipped when it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise FileRejected(path, None, f"cannot read the file ({exc.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise FileRejected(path, None, f"the gzip data is damaged ({exc})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise FileRejected(path, line, "the file is not UTF-8 text") from None


def _read_records(path: Path) -> tuple[list[str], int, np.ndarray, np.ndarray]:
    """Return ``(header, header_line, cells, lines)``: the CSV records, blank ones dropped.

    ``cells`` is a 2-D object array of stripped strings, one row per record,
    and ``lines`` the line of each record. Every record must have as many
    fields as the header.
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = [cell.strip() for cell in record], reader.line_num
            elif len(record) != len(header):
                raise FileRejected(path, reader.line_num,
                                   f"{len(record)} fields where the header has {len(header)}")
            else:
                rows.append(record)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise FileRejected(path, reader.line_num, f"malformed CSV ({exc})") from None
    if header is None:
        raise FileRejected(path, None, "the file is empty")
    if not rows:
        raise FileRejected(path, None, "the file has a header but no data")
    cells = np.array(rows, dtype=object).reshape(len(rows), len(header))
    return header, header_line, cells, np.array(lines)


def _check_header(path: Path, header: list[str], line: int) -> list[str]:
    keys = [_key(name) for name in header]
    for position, name in enumerate(header):
        if not name:
            raise FileRejected(path, line, f"column {position + 1} has no name")
    seen: dict[str, int] = {}
    for position, name in enumerate(header):
        first = seen.setdefault(name.upper(), position)
        if first != position:
            raise FileRejected(path, line, f"column {_show(name)} appears twice "
                                           f"(columns {first + 1} and {position + 1})")
    return keys


def _layout(path: Path, header: list[str], line: int,
            symbol: str | None) -> tuple[str, int, list[int], list[str] | None]:
    """Tell the layout from the header.

    Returns:
        ``(layout, date_column, price_columns, symbols)``: for wide files one
        price column per symbol; for long files ``symbols`` is None (they are
        in the symbol column, returned as the second price column).
    """
    keys = _check_header(path, header, line)
    if "symbol" in keys or "price" in keys:
        if sorted(keys) != list(LONG_COLUMNS):
            raise FileRejected(path, line, "a long file has exactly the columns symbol, date, "
                                           f"price; this one has {', '.join(header)}")
        layout = "long"
    elif "date" in keys and YAHOO_COLUMNS <= set(keys):
        layout = "yahoo"
    elif "date" in keys:
        layout = "wide"
    else:
        raise FileRejected(
            path, line, "unknown layout: no Date column. Expected wide (Date + one column per "
                        "ticker), long (symbol,date,price) or Yahoo-style "
                        "(Date,Open,High,Low,Close,Adj Close,Volume); see --help")
    if symbol is not None and layout != "yahoo":
        raise FileRejected(path, line, f"--symbol is for Yahoo-style files; this file is {layout}")
    if keys.count("date") > 1:
        raise FileRejected(path, line, "more than one Date column")
    date_column = keys.index("date")
    if layout == "long":
        return layout, date_column, [keys.index("price"), keys.index("symbol")], None
    if layout == "yahoo":
        price = keys.index("adjclose") if "adjclose" in keys else keys.index("close")
        name = symbol if symbol is not None else symbol_from_path(path)
        if name is None:
            raise FileRejected(path, None, "cannot tell the symbol from the file name "
                                           f"{os.path.basename(str(path))!r}; pass --symbol")
        try:
            return layout, date_column, [price], [normalize_symbol(name)]
        except ValueError as exc:
            raise FileRejected(path, None, str(exc)) from None
    columns = [position for position in range(len(header)) if position != date_column]
    symbols = []
    for position in columns:
        try:
            symbols.append(normalize_symbol(header[position]))
        except ValueError:
            raise FileRejected(path, line, f"column {_show(header[position])} is not a valid "
                                           f"symbol ({SYMBOL_RULE})") from None
    return layout, date_column, columns, symbols


def _parse_dates(path: Path, values: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Return int32 days since 1970-01-01 for an object array of date strings."""
    text = pd.Series(values, dtype=object).str.strip()
    dates = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    seed = dates.isna()
    if seed.any():
        dates[seed] = pd.to_datetime(text[seed], format="%m-%d-%y", errors="coerce")
    bad = dates.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        value = text.iloc[row]
        reason = ("the date is missing" if not value else
                  f"{_show(value)} is not a date; write YYYY-MM-DD or MM-DD-YY")
        raise FileRejected(path, int(lines[row]), reason)
    days = dates.to_numpy().astype("datetime64[D]").astype(np.int64)
    return days.astype(np.int32)


def _parse_prices(path: Path, cells: np.ndarray, lines: np.ndarray,
                  symbols: np.ndarray) -> np.ndarray:
    """Return a float64 array shaped like ``cells``; NaN where a price is missing.

    ``symbols`` gives the symbol of each cell (same shape), for messages.
    """
    flat = pd.Series(cells.ravel(), dtype=object)
    try:
        # Fast path, 10x quicker than the string methods below: every cell is
        # a number (float() ignores surrounding spaces and reads "NaN" as NaN,
        # which is a missing marker anyway).
        numbers = flat.to_numpy().astype(np.float64)
        missing = np.isnan(numbers)
    except ValueError:
        flat = flat.str.strip()
        missing = flat.str.upper().isin(MISSING_MARKERS).to_numpy()
        numbers = pd.to_numeric(flat.mask(missing, "nan"), errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~missing & ~(np.isfinite(numbers) & (numbers > 0))
    if bad.any():
        index = int(np.argmax(bad))
        row, column = divmod(index, cells.shape[1])
        value, number = flat.iloc[index], numbers[index]
        symbol = symbols[row, column]
        if np.isnan(number):
            reason = f"price {_show(value)} for {symbol} is not a number"
        elif not np.isfinite(number):
            reason = f"price {_show(value)} for {symbol} is not a finite number"
        else:
            reason = f"price {_show(value)} for {symbol} is not positive"
        raise FileRejected(path, int(lines[row]), reason)
    return numbers.reshape(cells.shape)


def _check_duplicates(path: Path, keys: np.ndarray, days: np.ndarray, lines: np.ndarray,
                      what: Callable[[Any], str]) -> None:
    """Reject the file when the same (``keys``, day) pair appears twice."""
    frame = pd.DataFrame({"key": keys, "day": days})
    duplicated = frame.duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = int(np.argmax(duplicated))
        same = np.flatnonzero(duplicated & (days == days[first]) & (keys == keys[first]))
        raise FileRejected(path, int(lines[same[1]]),
                           f"{what(keys[first])}date {day_to_date(days[first])} appears twice "
                           f"(lines {lines[same[0]]} and {lines[same[1]]})")


def _series(keys: np.ndarray, days: np.ndarray, prices: np.ndarray) -> dict[str, Series]:
    """Group parallel arrays by key into ``{key: (days, closes)}``, sorted by day."""
    present = ~np.isnan(prices)
    keys, days, prices = keys[present], days[present], prices[present]
    order = np.lexsort((days, keys))
    keys, days, prices = keys[order], days[order], prices[order]
    bounds = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(keys)]
    return {str(keys[start]): (np.ascontiguousarray(days[start:end], dtype=np.int32),
                               np.ascontiguousarray(prices[start:end], dtype=np.float64))
            for start, end in zip(starts, ends, strict=True) if end > start}


def parse_file(path: Path, symbol: str | None = None) -> ParsedFile:
    """Read and check a whole price file.

    Args:
        path: the CSV or gzip-compressed CSV file.
        symbol: the ticker of a Yahoo-style file; its file name if None.

    Returns:
        a :class:`ParsedFile`.

    Raises:
        FileRejected: the file cannot be imported; the message names the file,
            the line and the reason.
    """
    header, header_line, cells, lines = _read_records(path)
    layout, date_column, price_columns, symbols = _layout(path, header, header_line, symbol)
    days = _parse_dates(path, cells[:, date_column], lines)
    if layout == "long":
        keys = np.empty(len(cells), dtype=object)
        for row, value in enumerate(cells[:, price_columns[1]]):
            try:
                keys[row] = normalize_symbol(value)
            except ValueError as exc:
                reason = "the symbol is missing" if not value.strip() else str(exc)
                raise FileRejected(path, int(lines[row]), reason) from None
        prices = _parse_prices(path, cells[:, price_columns[:1]], lines, keys[:, None])[:, 0]
        _check_duplicates(path, keys, days, lines, lambda key: f"{key}: ")
        keys = keys.astype(str)
    else:
        assert symbols is not None  # wide and Yahoo-style files name theirs in the header
        names = np.broadcast_to(np.array(symbols, dtype=object), (len(cells), len(symbols)))
        prices = _parse_prices(path, cells[:, price_columns], lines, names)
        _check_duplicates(path, np.zeros(len(days), dtype=np.int8), days, lines, lambda _: "")
        keys = np.repeat(np.array(symbols, dtype=str)[None, :], len(cells), axis=0).ravel()
        days = np.repeat(days, len(symbols))
        prices = prices.ravel()
    series = _series(keys, days, prices)
    if not series:
        raise FileRejected(path, None, "the file holds no prices (every price cell is empty)")
    return ParsedFile(str(path), layout, series)
