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

COLLECTION_MODULES = (users, sessions, rate_limits, prices, price_meta, jobs)


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
    """Create every collection's indexes; safe to run at every start."""
    for module in COLLECTION_MODULES:
        await module.create_indexes(db)
