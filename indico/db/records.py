"""The typed records that the collection modules hand up, and the decoding of stored shapes.

Every read and every write that answers with a document returns one of the
frozen dataclasses below instead: ids are strings (a user's ObjectId as its
24 hex digits), times are timezone-aware UTC datetimes. What the stored
documents look like, and the shapes nx-27017 leaves behind, is known here
and in the collection modules only:

- times that change are stored as epoch seconds (``updated``,
  ``lease_expires``, an event's ``at``; see :mod:`indico.db.jobs`);
- nx-27017 stores a date written by ``$set`` as a string,
  ``"2026-12-01 23:53:39.123000"`` (UTC, no offset: measured with nx-27017
  0.8), so a user's ``updated`` after a profile change and the price head's
  ``updated`` after a commit read back as strings there;
- nx-27017 stores a document written by ``$push`` as a JSON string; job
  events are written whole with ``$set`` for that reason, and an event read
  back as a string is decoded all the same;
- a client built without ``tz_aware`` reads naive datetimes (UTC).

:func:`as_datetime` and :func:`as_event` accept all of these.
"""

import dataclasses
import datetime
import enum
import json
from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import orjson
from bson import ObjectId

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

Document = Mapping[str, Any]


def as_datetime(value: object) -> datetime.datetime:
    """Return a stored time as a timezone-aware UTC datetime.

    Args:
        value: a datetime (aware, or naive UTC), epoch seconds, or the string
            nx-27017 stores for a date written by ``$set`` (any ISO 8601 form).

    Raises:
        TypeError: none of those.
        ValueError: a string that is not an ISO 8601 time.
    """
    if isinstance(value, str):
        value = datetime.datetime.fromisoformat(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.UTC)
        return value.astimezone(datetime.UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    raise TypeError(f"not a stored time: {value!r}")


def as_epoch(moment: datetime.datetime) -> float:
    """Return ``moment`` as the epoch seconds stored for times that change."""
    return moment.timestamp()


def as_id(value: object) -> str:
    """Return a stored id (an ObjectId or a string) as a string."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"not a stored id: {value!r}")


@dataclasses.dataclass(frozen=True)
class User:
    """A user as requests see it: no password hash.

    Attributes:
        id: the user's id (24 hex digits).
        email: normalized (trimmed, lower-case).
        name: or None.
        preferences: only the keys that are set.
        created, updated: when the account was made and last changed.
        password_version: how many times the password was changed.
    """

    id: str
    email: str
    name: str | None
    preferences: dict[str, Any]
    created: datetime.datetime
    updated: datetime.datetime
    password_version: int = 0

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode a stored ``users`` document (a password hash in it is left out)."""
        return cls(
            id=as_id(document["_id"]), email=document["email"], name=document.get("name"),
            preferences=dict(document.get("preferences") or {}),
            created=as_datetime(document["created"]),
            updated=as_datetime(document.get("updated", document["created"])),
            password_version=int(document.get("password_version", 0)),
        )


@dataclasses.dataclass(frozen=True)
class Account(User):
    """A user with its password hash: what the services check passwords against."""

    password_hash: str = ""

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode a stored ``users`` document, its password hash included."""
        user = User.from_document(document)
        return cls(**dataclasses.asdict(user), password_hash=document["password_hash"])


@dataclasses.dataclass(frozen=True)
class Session:
    """A session: stored under the SHA-256 of its token, never the token itself.

    Attributes:
        id: the token's hash (64 hex digits).
        user_id: its user's id.
        created, expires: when it was opened and when it stops working.
    """

    id: str
    user_id: str
    created: datetime.datetime
    expires: datetime.datetime

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode a stored ``sessions`` document."""
        return cls(id=as_id(document["_id"]), user_id=as_id(document["user_id"]),
                   created=as_datetime(document["created"]),
                   expires=as_datetime(document["expires"]))


@dataclasses.dataclass(frozen=True)
class Window:
    """A rate-limit counter's live window: the count in it, and when it ends."""

    count: int
    expires: datetime.datetime


class JobKind(enum.StrEnum):
    """What a job computes: one optimization, or a walk-forward backtest."""

    OPTIMIZE = "optimize"
    BACKTEST = "backtest"


@dataclasses.dataclass(frozen=True)
class JobEvent:
    """One event of a job: a transition (``queued``, ``running``, ``done``, ``failed``)
    or, while a backtest runs, ``progress``.

    Attributes:
        id: unique; no event is sent twice (:mod:`indico.services.events`).
        event: the status the job entered, or ``progress``.
        at: when, by the clock of the process that wrote it.
        done, total: of a ``progress`` event, the rebalances computed and to compute
            (None for the others).
    """

    id: str
    event: str
    at: datetime.datetime
    done: int | None = None
    total: int | None = None

    @classmethod
    def from_document(cls, document: Document | str) -> Self:
        """Decode an entry of a job's ``events`` (a JSON string when ``$push`` wrote it)."""
        entry = json.loads(document) if isinstance(document, str) else document
        return cls(id=entry["id"], event=entry["event"], at=as_datetime(entry["at"]),
                   done=entry.get("done"), total=entry.get("total"))

    def to_document(self) -> dict[str, Any]:
        """The stored entry: ``at`` in epoch seconds, like every time that changes."""
        entry: dict[str, Any] = {"id": self.id, "event": self.event, "at": as_epoch(self.at)}
        if self.done is not None:
            entry.update(done=self.done, total=self.total)
        return entry


def encode_result(result: Mapping[str, Any]) -> str:
    """A job's result as stored: its JSON text.

    The result is only ever read whole, never queried, and nx-27017 decodes
    every document a query looks at: stored as a nested document (500-point
    series), a result made the completion write 5.3 ms instead of 2.0 ms and
    every scan of the jobs (the job runner's look for work, once a second in
    each process) decode some 1,500 numbers per stored job
    (benchmarks/job_write_bench.py).

    orjson, not the standard library: 32 µs for an optimization's result
    (27 KB) where ``json.dumps`` took 800 µs of the server's one core, the
    largest single cost of a ``portfolio/optimize`` outside the engine
    (docs/PERFORMANCE.md). NaN and infinities are written ``null``, as
    pydantic writes them in the answers; numpy scalars are written as numbers.
    """
    return orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                        ).decode()


def decode_result(stored: object) -> dict[str, Any] | None:
    """A stored result: JSON text, or a document as jobs written before were stored.

    Text written by ``json.dumps`` before orjson may hold ``NaN`` or
    ``Infinity``, which orjson refuses: such text is read by the standard
    library, as it was written.
    """
    if stored is None:
        return None
    if isinstance(stored, str):
        try:
            decoded = orjson.loads(stored)
        except orjson.JSONDecodeError:
            decoded = json.loads(stored)
        return decoded if isinstance(decoded, dict) else None
    return dict(stored) if isinstance(stored, Mapping) else None


@dataclasses.dataclass(frozen=True)
class Job:
    """A job (queued -> running -> done | failed) and, once done, its result.

    Attributes:
        id: the job's id (24 hex digits).
        owner: the user's id.
        status: ``queued``, ``running``, ``done`` or ``failed``.
        kind: a :class:`JobKind` (jobs stored before kinds existed are optimizations).
        params: the normalized request.
        created: set once, when the job was written.
        updated: its last transition.
        events: its transitions, oldest first (empty when a listing left them out).
        result: the engine's JSON-ready result, when done.
        error: the message, when failed (``cancelled`` after ``portfolio/cancel``).
        progress: ``{"done", "total"}`` of a backtest's rebalances, once it has any.
        lease_owner: the worker holding the job, while it runs.
        lease_expires: the end of that worker's lease (the epoch when none).
        attempts: how many times a worker took the job.
        slot: the owner's quota slot, only while queued or running.
    """

    id: str
    owner: str
    status: str
    params: dict[str, Any]
    created: datetime.datetime
    updated: datetime.datetime
    events: tuple[JobEvent, ...] = ()
    result: dict[str, Any] | None = None
    error: str | None = None
    kind: JobKind = JobKind.OPTIMIZE
    progress: dict[str, int] | None = None
    lease_owner: str | None = None
    lease_expires: datetime.datetime = EPOCH
    attempts: int = 0
    slot: str | None = None

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode a stored ``jobs`` document (or a projection of it without events)."""
        return cls(
            id=as_id(document["_id"]), owner=document["owner"], status=document["status"],
            params=document["params"], created=as_datetime(document["created"]),
            updated=as_datetime(document["updated"]),
            events=tuple(JobEvent.from_document(entry)
                         for entry in document.get("events") or ()),
            result=decode_result(document.get("result")), error=document.get("error"),
            kind=JobKind(document.get("kind", JobKind.OPTIMIZE)),
            progress=document.get("progress"), lease_owner=document.get("lease_owner"),
            lease_expires=as_datetime(document.get("lease_expires") or 0.0),
            attempts=int(document.get("attempts", 0)), slot=document.get("slot"),
        )


@dataclasses.dataclass(frozen=True)
class SymbolEntry:
    """One stored symbol of a catalog: its generation, first and last date, number of prices."""

    symbol: str
    generation: str
    first: datetime.date
    last: datetime.date
    rows: int

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode an item of a catalog's ``symbols``."""
        return cls(document["symbol"], document["generation"],
                   as_datetime(document["first"]).date(), as_datetime(document["last"]).date(),
                   int(document["rows"]))

    def to_document(self) -> dict[str, Any]:
        """The stored item: the dates as UTC midnights."""
        midnight = datetime.time(tzinfo=datetime.UTC)
        return {"symbol": self.symbol, "generation": self.generation,
                "first": datetime.datetime.combine(self.first, midnight),
                "last": datetime.datetime.combine(self.last, midnight), "rows": self.rows}


@dataclasses.dataclass(frozen=True)
class Head:
    """The head of the price store: its version and the generation of its current catalog."""

    version: int
    catalog: str
    updated: datetime.datetime

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode the stored head (``updated`` is a string on nx-27017 after a ``$set``)."""
        return cls(int(document["version"]), document["catalog"],
                   as_datetime(document["updated"]))


@dataclasses.dataclass(frozen=True)
class CatalogRecord:
    """A stored catalog: every symbol of one version of the store. Written once."""

    generation: str
    created: datetime.datetime
    symbols: tuple[SymbolEntry, ...]

    @classmethod
    def from_document(cls, document: Document) -> Self:
        """Decode a stored catalog document."""
        return cls(as_id(document["_id"]), as_datetime(document["created"]),
                   tuple(SymbolEntry.from_document(entry) for entry in document["symbols"]))


@dataclasses.dataclass(frozen=True, eq=False)
class Bucket:
    """The prices of one symbol in one calendar year, in one generation.

    Attributes:
        symbol, generation, year: what the bucket holds.
        days: int32 days since 1970-01-01, increasing (read-only when read back).
        closes: float64 prices on those days.
    """

    symbol: str
    generation: str
    year: int
    days: np.ndarray
    closes: np.ndarray

    @property
    def rows(self) -> int:
        """How many prices the bucket holds."""
        return len(self.days)
