"""The MongoDB layer: one module per collection, functions take the database first.

This package opens no connection at import time. :func:`open_database` is how
the server (``indico.server``), the ``indico-prices`` command and the tests
(``tests.harness``) get a database: it starts or attaches to the embedded
nx-27017 when no ``INDICO_MONGODB_URI`` is set, creates the client and the
indexes, runs the expiry purge on nx-27017 (:class:`ExpiryPurge`), and closes
all of it, in reverse order, when its block ends. The database handle is
handed down to the services.

Every client from ``create_client`` writes with ``w: "majority", j: true``
(``util.DURABLE``: acknowledged once a majority of the replica set has the
write in its journal; nx-27017 maps ``j`` to SQLite's ``synchronous=FULL``),
reads from the primary, retries a read or write once after a failover, and
bounds every call with an operation timeout.
"""

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from config import Config
from indico.db import jobs, price_meta, prices, rate_limits, sessions, users
from indico.db.embedded import EmbeddedServer
from indico.db.util import (
    DURABLE,
    Sleep,
    create_expiry_index,
    is_embedded,
    long_operation,
    purge_expired,
)
from indico.utils.logs import describe_database_error

log = logging.getLogger(__name__)

COLLECTION_MODULES = (users, sessions, rate_limits, prices, price_meta, jobs)
# Collections whose documents carry an ``expires`` date and go away after it.
EXPIRING = ("sessions", "rate_limits")
# How often expired sessions and rate-limit windows are deleted on nx-27017,
# which has no TTL monitor we can afford (see db.util.create_expiry_index).
PURGE_INTERVAL = 60.0
# After a failed purge (the database is down), wait this long, doubling up to
# PURGE_INTERVAL, instead of logging the same failure every round.
PURGE_RETRY = 5.0



def create_client(uri: str, timeout: float = 2.0, selection_timeout: float | None = None,
                  **options: Any) -> AsyncMongoClient:
    """Return an ``AsyncMongoClient`` for ``uri``; it connects on first use.

    The durability, read and retry options below are keyword arguments, which
    PyMongo lets win over the same options in the URI ("If the same option is
    passed in a URI and as a keyword parameter the keyword parameter takes
    precedence", MongoClient's documentation): a URI cannot weaken them.

    Args:
        uri: a ``mongodb://`` or ``mongodb+srv://`` URI.
        timeout: seconds any one database call may take, all included
            (``timeoutMS``, ``INDICO_DB_TIMEOUT``).
        selection_timeout: seconds to wait for a suitable server (the
            primary), and to open a connection, ``timeout`` if None
            (``INDICO_DB_SELECTION_TIMEOUT``); see README, "MongoDB and replica sets".
        **options: more ``AsyncMongoClient`` keyword arguments (event listeners).

    Returns:
        the client.
    """
    selection_millis = int((selection_timeout or timeout) * 1000)
    return AsyncMongoClient(
        uri,
        # Client-side operation timeout (CSOT): bounds server selection,
        # connection checkout, retries and the server's own execution (sent as
        # maxTimeMS) of every call; a database that accepts connections but
        # does not answer raises a timeout error instead of holding a request.
        # https://www.mongodb.com/docs/languages/python/pymongo-driver/current/connect/connection-options/csot/
        timeoutMS=int(timeout * 1000),
        # Within timeoutMS, the CSOT specification waits for a server
        # min(serverSelectionTimeoutMS, the remaining time); PyMongo (4.20,
        # measured) waits the remaining time, so for an operation the timeout
        # above is the bound; util.long_operation uses this one explicitly.
        # A replica set has no primary for up to ~12 s during an election
        # ("should not typically exceed 12 seconds", with the default 10 s
        # electionTimeoutMillis): https://www.mongodb.com/docs/manual/core/replica-set-elections/
        serverSelectionTimeoutMS=selection_millis,
        connectTimeoutMS=selection_millis,
        # Reads from the primary only, whatever the URI says: a lagging
        # secondary could miss a price bucket that the catalog already names
        # (the price service would cache the gap) or a session revoked on the
        # primary a moment ago (logout, password change) would still work.
        # https://www.mongodb.com/docs/manual/core/read-preference/#mongodb-readmode-primary
        readPreference="primary",
        # Majority and journaled; see util.DURABLE.
        w=DURABLE.document["w"],
        journal=DURABLE.document["j"],
        # A write or read interrupted by a failover (the primary stepped down,
        # the connection dropped) is retried once on the new primary; within
        # timeoutMS, retries go on until the timeout. Retryable writes need a
        # replica set or a sharded cluster; on a standalone they are not used.
        # https://www.mongodb.com/docs/manual/core/retryable-writes/
        # https://www.mongodb.com/docs/manual/core/retryable-reads/
        retryWrites=True,
        retryReads=True,
        tz_aware=True,
        uuidRepresentation="standard",
        appname="indico",
        **options,
    )


async def ensure_indexes(db: AsyncDatabase) -> None:
    """Create every collection's indexes; safe to run at every start.

    A long operation (:func:`indico.db.util.long_operation`): building an
    index on a large collection takes longer than one request's timeout.
    On nx-27017 the expiring collections get no TTL index (see
    ``util.create_expiry_index``); :func:`open_database` runs an
    :class:`ExpiryPurge` there instead.
    """
    async with long_operation(db):
        embedded = await is_embedded(db)
        for module in COLLECTION_MODULES:
            await module.create_indexes(db)
        for name in EXPIRING:
            await create_expiry_index(db, name, embedded)


async def purge_all_expired(db: AsyncDatabase) -> int:
    """Delete the expired documents of every expiring collection; returns how many."""
    total = 0
    for name in EXPIRING:
        total += await purge_expired(db, name)
    return total


class ExpiryPurge:
    """Deletes expired sessions and rate-limit windows on nx-27017, every ``interval`` seconds.

    MongoDB does this itself with its TTL indexes; nx-27017 gets plain indexes
    instead (see ``util.create_expiry_index``), so this loop stands in for the
    TTL monitor. Queries filter on ``expires`` either way: a purge late or
    failed serves nothing expired, it only lets documents pile up.

    Args:
        db: the database handle.
        interval: seconds between rounds.
        retry: seconds before the round after a database error, doubled after
            each further one up to ``interval``.
        sleep: ``await sleep(seconds)``, injectable for tests.
    """

    def __init__(self, db: AsyncDatabase, interval: float = PURGE_INTERVAL,
                 retry: float = PURGE_RETRY, sleep: Sleep = asyncio.sleep) -> None:
        self.db = db
        self.interval = interval
        self.retry = retry
        self.sleep = sleep
        self.task: asyncio.Task | None = None
        self.stopping = asyncio.Event()
        self.purged = asyncio.Event()  # set once a round has ended

    async def run(self) -> None:
        """Purge, wait, and again, until :meth:`stop`; a failed round logs one line."""
        delay = self.retry
        while not self.stopping.is_set():
            try:
                removed = await purge_all_expired(self.db)
                if removed:
                    log.info("purged %d expired sessions and rate-limit windows", removed)
                wait, delay = self.interval, self.retry
            except PyMongoError as exc:  # down or timing out: one line, no traceback
                log.warning("purge of expired documents failed (%s); next try in %g s",
                            describe_database_error(exc), delay)
                wait, delay = delay, min(delay * 2, self.interval)
            except Exception:  # a bug: keep its traceback; the next round tries again
                log.exception("purge of expired documents failed")
                wait = self.interval
            self.purged.set()
            if not self.stopping.is_set():
                await self.sleep(wait)

    async def start(self) -> None:
        """Start :meth:`run` in a task; return once its first round has ended.

        What was expired before the start is gone before anything is served,
        and the round's commands do not interleave with the first requests'.
        """
        self.task = asyncio.ensure_future(self.run())
        purged = asyncio.ensure_future(self.purged.wait())
        try:
            await asyncio.wait({self.task, purged}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            purged.cancel()

    async def stop(self) -> None:
        """Stop the loop; returns once its task has ended.

        The loop checks :attr:`stopping` before each round and each wait, and
        the task is cancelled until it is done: Python 3.11's
        ``asyncio.wait_for`` (inside the driver) may swallow one cancellation
        (see :func:`indico.db.util.reraise_lost_cancellation`).
        """
        self.stopping.set()
        while self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=0.1)


@dataclasses.dataclass(frozen=True)
class Database:
    """What :func:`open_database` opened.

    Attributes:
        client: the ``AsyncMongoClient``.
        db: the database handle (``INDICO_DATABASE``), indexes created.
        embedded: the nx-27017 server started or attached to for this block,
            None with ``INDICO_MONGODB_URI``.
        purge: the running :class:`ExpiryPurge` on nx-27017, else None.
    """

    client: AsyncMongoClient
    db: AsyncDatabase
    embedded: EmbeddedServer | None
    purge: ExpiryPurge | None


@contextlib.asynccontextmanager
async def open_database(config: Config, *, watch: bool = True,
                        **client_options: Any) -> AsyncIterator[Database]:
    """Open the configured database for the block; close everything it opened after it.

    In order: without ``INDICO_MONGODB_URI``, attach to the embedded nx-27017
    of ``INDICO_DATA_DIR`` or start it (and, if ``watch``, restart it
    whenever it dies: :meth:`EmbeddedServer.watch`); create the client; create
    the indexes; on nx-27017, start the :class:`ExpiryPurge`. At the end of
    the block, or when a step fails, what was opened is closed in reverse
    order; the embedded server is stopped only if it was started here.

    Args:
        config: the Config (URI, database name, data directory, timeouts).
        watch: restart the embedded database when it dies (the server does;
            ``indico-prices``, which may have attached to the server's, does not).
        **client_options: more :func:`create_client` keyword arguments (the
            tests' command listeners).

    Yields:
        the :class:`Database`.

    Raises:
        StartupError: the embedded database cannot start.
        PyMongoError: the database does not answer in time.
    """
    async with contextlib.AsyncExitStack() as stack:
        embedded = None
        uri = config.mongodb_uri
        if not uri:
            embedded = EmbeddedServer(config.data_path, config.embedded_start_timeout)
            uri = await asyncio.to_thread(embedded.start)
            stack.push_async_callback(asyncio.to_thread, embedded.stop)  # it waits for the exit
            if watch:
                watcher = asyncio.ensure_future(embedded.watch())
                stack.push_async_callback(_cancel, watcher)
        client = create_client(uri, config.db_timeout, config.db_selection_timeout,
                               **client_options)
        stack.push_async_callback(client.close)
        db = client[config.database]
        await ensure_indexes(db)
        purge = None
        if await is_embedded(db):
            purge = ExpiryPurge(db)
            stack.push_async_callback(purge.stop)
            await purge.start()
        yield Database(client, db, embedded, purge)


async def _cancel(task: asyncio.Task) -> None:
    """Cancel ``task`` and wait for it to end."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
