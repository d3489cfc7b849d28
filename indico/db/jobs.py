"""The ``jobs`` collection: one document per optimization (queued -> running -> done | failed)."""

from pymongo import ASCENDING, DESCENDING

from indico.db.util import journaled


async def create_indexes(db):
    await db.jobs.create_index([("owner", ASCENDING), ("created", DESCENDING)], name="owner_created")


async def delete_owner_jobs(db, owner):
    """Delete every job of ``owner``; returns how many."""
    result = await journaled(db, "jobs").delete_many({"owner": owner})
    return result.deleted_count
