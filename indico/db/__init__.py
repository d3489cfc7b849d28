"""The MongoDB layer: one module per collection, functions take the database first.

This package opens no connection at import time. ``create_client`` is called
by ``indico.server.main`` (and by the tests and the price importer), and the
database handle is handed down to the services.

Every client from ``create_client`` writes with ``w: "majority", j: true``
(``util.DURABLE``: acknowledged once a majority of the replica set has the
write in its journal; nx-27017 maps ``j`` to SQLite's ``synchronous=FULL``),
reads from the primary, retries a read or write once after a failover, and
bounds every call with an operation timeout.
"""

from pymongo import AsyncMongoClient

from indico.db import jobs, price_meta, prices, rate_limits, sessions, users
from indico.db.util import DURABLE, create_expiry_index, is_embedded, long_operation, purge_expired

COLLECTION_MODULES = (users, sessions, rate_limits, prices, price_meta, jobs)
# Collections whose documents carry an ``expires`` date and go away after it.
EXPIRING = ("sessions", "rate_limits")


def create_client(uri: str, timeout: float = 2.0, selection_timeout: float | None = None,
                  **options) -> AsyncMongoClient:
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


async def ensure_indexes(db) -> bool:
    """Create every collection's indexes; safe to run at every start.

    A long operation (:func:`indico.db.util.long_operation`): building an
    index on a large collection takes longer than one request's timeout.

    Returns:
        True when the database is nx-27017, whose expired documents the
        server must purge itself (see ``util.create_expiry_index``).
    """
    async with long_operation(db):
        embedded = await is_embedded(db)
        for module in COLLECTION_MODULES:
            await module.create_indexes(db)
        for name in EXPIRING:
            await create_expiry_index(db, name, embedded)
    return embedded


async def purge_all_expired(db) -> int:
    """Delete the expired documents of every expiring collection; returns how many."""
    total = 0
    for name in EXPIRING:
        total += await purge_expired(db, name)
    return total
