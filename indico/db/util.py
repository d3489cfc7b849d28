"""Helpers shared by the collection modules: time, ids, batched reads, durability, timeouts.

Time comes from :func:`now`, or from a :class:`Clock` that a caller passes
down (the session store, the rate limits), so that tests move a clock instead
of sleeping against a window.

Durability and timeouts are set once, on the client (see
:func:`indico.db.create_client`): every write waits for ``w: "majority", j:
true`` and every database call has an operation timeout (``timeoutMS``,
``INDICO_DB_TIMEOUT``). The few operations that may legitimately take longer
(index creation at start, price imports, purges) run in :func:`long_operation`.
"""

import asyncio
import contextlib
import datetime
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pymongo
from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

# Acknowledged only once a majority of the replica set's voting members have
# the write in their journal: such a write survives a failover, whereas one
# acknowledged by the primary alone (w: 1) can be rolled back when another
# member is elected. An explicit w also overrides the implicit default (w:
# "majority" since MongoDB 5.0, w: 1 in some arbiter layouts), so the
# guarantee does not depend on the deployment's topology.
# https://www.mongodb.com/docs/manual/reference/write-concern/
# https://www.mongodb.com/docs/manual/reference/mongodb-defaults/#default-write-concern
# No wtimeout: with an operation timeout (CSOT) set, PyMongo deprecates it
# (WriteConcern: "Deprecated parameter wtimeout, use pymongo.timeout()") and
# drops it from the command; the operation timeout bounds the wait for the
# majority instead (https://pymongo.readthedocs.io/en/stable/examples/timeouts.html).
# nx-27017, a single server, accepts any w and maps j to SQLite's synchronous=FULL.
DURABLE = WriteConcern(w="majority", j=True)
# Seconds a long operation (see long_operation) may take.
LONG_OPERATION = 120.0
# Documents the server returns in the first batch of a find without batchSize.
FIRST_BATCH = 101
EMBEDDED_PROCESS = "nx_27017"


#: Seconds a request gives a database that the driver last found unreachable
#: (see :func:`ensure_reachable`) to answer again before it is answered 503.
UNREACHABLE_PROBE = 0.5


def unreachable(client: Any) -> bool:
    """Whether the driver's last look at every known server of ``client`` failed.

    True after a refused or dropped connection (a database process that died,
    a host that is gone) until a check succeeds again; False before the first
    check, and while any member answers (a replica set electing a primary has
    reachable secondaries: then the operation's own timeout governs the wait,
    so that an election of up to ~12 s can be ridden out with
    ``INDICO_DB_SELECTION_TIMEOUT``). Reads the driver's topology description
    (SDAM: https://www.mongodb.com/docs/manual/reference/server-discovery-and-monitoring/
    -- a server description keeps the error of its last failed check), so it
    costs no round trip.
    """
    servers = client.topology_description.server_descriptions().values()
    return bool(servers) and all(server.error is not None for server in servers)


async def ensure_reachable(db: AsyncDatabase) -> None:
    """Fail fast while the database is known to be down.

    Without this, every request during an outage waits the whole operation
    timeout (``INDICO_DB_TIMEOUT``) in server selection before its 503, and
    under load the event loop adds its own delay to that. While
    :func:`unreachable` holds, one ``ping`` bounded by :data:`UNREACHABLE_PROBE`
    decides: it succeeds as soon as the server is back (server selection asks
    the driver's monitor for an immediate check), else the driver's error goes
    up and the request is answered 503 by the routes' mapper. The bound is
    scoped to the ping, so nothing the request starts afterwards inherits it.

    Raises:
        PyMongoError: the database still does not answer (``ServerSelectionTimeoutError``
            or a ``ConnectionFailure``).
    """
    if unreachable(db.client):
        with pymongo.timeout(UNREACHABLE_PROBE):
            await db.command("ping")


def now() -> datetime.datetime:
    """The current UTC time, truncated to milliseconds as BSON stores it."""
    moment = datetime.datetime.now(datetime.UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


#: What the collection functions accept as the time: a callable like :func:`now`.
Now = Callable[[], datetime.datetime]

#: An injectable wait, ``await sleep(seconds)``: ``asyncio.sleep`` outside tests.
Sleep = Callable[[float], Awaitable[Any]]


class Clock:
    """The time as indico reads it, in one object that tests replace by a subclass.

    ``now`` is the wall clock (stored dates: expiries, windows); ``monotonic``
    measures durations in this process (cache lifetimes), immune to the wall
    clock being set.
    """

    def now(self) -> datetime.datetime:
        """The current UTC time, truncated to milliseconds (:func:`now`)."""
        return now()

    def monotonic(self) -> float:
        """Seconds of a clock that never goes back (``time.monotonic``)."""
        return time.monotonic()


SYSTEM_CLOCK = Clock()


def object_id(value: object) -> ObjectId | None:
    """Return ``value`` as an ObjectId, or None when it is not a valid one."""
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str) or len(value) != 24:
        return None
    try:
        return ObjectId(value)
    except InvalidId:
        return None


async def find_by_ids(collection: AsyncCollection, ids: Iterable[Any],
                      conditions: dict[str, Any] | None = None) -> list[dict[str, Any] | None]:
    """Return the document of ``collection`` with each of ``ids``, or None, in order.

    One command for all of them (see :mod:`indico.db.batch`); ``conditions``
    are more filters every document must meet.

    Args:
        collection: the collection.
        ids: the ``_id`` values (repeats allowed).
        conditions: more filters, or None.

    Returns:
        one stored document or None per entry of ``ids`` (the collection
        modules decode them into records).
    """
    ids = list(ids)
    keys = list(set(ids))
    if not keys:
        return []  # a find with limit 0 would have no limit at all
    query = {"_id": {"$in": keys}, **(conditions or {})}
    # limit, not batch_size: no more than one document per key can match, and
    # a find with a limit ends its cursor once it has returned that many, so
    # MongoDB answers in one reply. With batchSize alone the cursor stays open
    # after a full batch and costs a getMore that finds nothing. Past the
    # first batch's default size, batchSize makes the whole limit fit in it.
    # https://www.mongodb.com/docs/manual/reference/command/find/
    options: dict[str, Any] = {"limit": len(keys)}
    if len(keys) > FIRST_BATCH:
        options["batch_size"] = len(keys)
    found = {document["_id"]: document
             async for document in collection.find(query, **options)}
    return [found.get(key) for key in ids]


def journaled(db: AsyncDatabase, name: str) -> AsyncCollection:
    """Return collection ``name`` for writes that must survive a crash and a failover.

    Every collection of a client from ``create_client`` already writes with
    :data:`DURABLE`; this names the intent at the call site, and holds on a
    handle whose client was built otherwise.
    """
    return db.get_collection(name, write_concern=DURABLE)


@contextlib.asynccontextmanager
async def long_operation(db: AsyncDatabase,
                         seconds: float = LONG_OPERATION) -> AsyncIterator[None]:
    """Give the database calls of the block ``seconds`` instead of the client's timeout.

    First waits for the primary to answer a ping, for at most the client's
    server selection timeout (``INDICO_DB_SELECTION_TIMEOUT``): within an
    operation timeout PyMongo waits for a server as long as the operation may
    last, so without this a database that is down would hold the block for
    ``seconds``. ``pymongo.timeout`` overrides the client's ``timeoutMS``
    (https://pymongo.readthedocs.io/en/stable/examples/timeouts.html, "pymongo.timeout
    overrides timeoutMS"); it is per asyncio task, and a block nested in
    another can shorten its deadline, never extend it.

    Args:
        db: the database handle.
        seconds: the operation timeout of the block; at least the client's.

    Raises:
        PyMongoError: the primary did not answer in time (``timeout`` is True).
    """
    options = db.client.options
    with pymongo.timeout(options.server_selection_timeout):
        await db.command("ping")
    with pymongo.timeout(max(seconds, options.timeout or 0.0)):
        yield


def reraise_lost_cancellation() -> None:
    """Raise CancelledError when this task was cancelled but a database call swallowed it.

    Python 3.11's ``asyncio.wait_for`` returns the result instead of raising
    when the awaited operation completes in the same loop step as the
    cancellation (python/cpython#86296, #107547; fixed by the 3.12 rewrite).
    PyMongo's async network layer awaits every send through ``wait_for`` with
    the operation timeout, so a task cancelled during a call (the job runner
    and the event poller at shutdown) would go on as if nothing happened, and
    whoever waits for it would wait forever. The request stays counted in
    ``Task.cancelling()``, which this checks; loops that are stopped by
    cancellation call it after their database calls.

    Raises:
        asyncio.CancelledError: the task was asked to stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


# client -> whether it talks to nx-27017 (asked once per client: it cannot change).
_EMBEDDED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


async def is_embedded(db: AsyncDatabase) -> bool:
    """True when ``db`` lives on nx-27017 rather than on a MongoDB server.

    Asked once per client (``buildInfo``), so that query shapes that differ
    between the two servers cost no command on the hot path.
    """
    known = _EMBEDDED.get(db.client)
    if known is None:
        info = await db.client.admin.command("buildInfo")
        known = _EMBEDDED[db.client] = info.get("process") == EMBEDDED_PROCESS
    return known


async def create_expiry_index(db: AsyncDatabase, name: str, embedded: bool) -> None:
    """Index ``expires`` of collection ``name`` so that expired documents go away.

    On MongoDB this is a TTL index. nx-27017 runs two deletes before every read
    and write of a collection with a TTL index (about 1.2 ms each time), so
    there the index is a plain one, an old TTL index is dropped, and the server
    calls :func:`purge_expired` now and then instead. Queries filter on
    ``expires`` either way, so nothing expired is ever served.
    """
    collection = db[name]
    if not embedded:
        await collection.create_index([("expires", ASCENDING)], expireAfterSeconds=0,
                                      name="expires_ttl")
        return
    for index, info in (await collection.index_information()).items():
        if "expireAfterSeconds" in info:
            await collection.drop_index(index)
    await collection.create_index([("expires", ASCENDING)], name="expires")


async def purge_expired(db: AsyncDatabase, name: str) -> int:
    """Delete the expired documents of collection ``name``; returns how many.

    A long operation: after a while without purges there may be many.
    """
    async with long_operation(db):
        result = await db[name].delete_many({"expires": {"$lte": now()}})
    return result.deleted_count
