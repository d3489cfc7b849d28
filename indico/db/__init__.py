"""The MongoDB layer: one module per collection, functions take the database first.

This package opens no connection at import time. ``create_client`` is called
by ``indico.server.main`` (and by the tests and the price importer), and the
database handle is handed down to the services.

Writes that must survive a crash go through ``util.journaled``, which asks for
``w=1, j=True``: the server acknowledges them only once they are in its
journal (nx-27017 maps ``j`` to SQLite's ``synchronous=FULL``).
"""

from pymongo import AsyncMongoClient

from indico.db import jobs, price_meta, prices, rate_limits, sessions, users
from indico.db.util import create_expiry_index, is_embedded, purge_expired

COLLECTION_MODULES = (users, sessions, rate_limits, prices, price_meta, jobs)
# Collections whose documents carry an ``expires`` date and go away after it.
EXPIRING = ("sessions", "rate_limits")


def create_client(uri, timeout=2.0, **options):
    """Return an ``AsyncMongoClient`` for ``uri``; it connects on first use.

    Args:
        uri: a ``mongodb://`` or ``mongodb+srv://`` URI.
        timeout: seconds to wait for a server before an operation fails.
        **options: more ``AsyncMongoClient`` keyword arguments (event listeners).
    """
    millis = int(timeout * 1000)
    return AsyncMongoClient(
        uri,
        serverSelectionTimeoutMS=millis,
        connectTimeoutMS=millis,
        tz_aware=True,
        uuidRepresentation="standard",
        appname="indico",
        **options,
    )


async def ensure_indexes(db):
    """Create every collection's indexes; safe to run at every start.

    Returns:
        True when the database is nx-27017, whose expired documents the
        server must purge itself (see ``util.create_expiry_index``).
    """
    embedded = await is_embedded(db)
    for module in COLLECTION_MODULES:
        await module.create_indexes(db)
    for name in EXPIRING:
        await create_expiry_index(db, name, embedded)
    return embedded


async def purge_all_expired(db):
    """Delete the expired documents of every expiring collection; returns how many."""
    total = 0
    for name in EXPIRING:
        total += await purge_expired(db, name)
    return total
