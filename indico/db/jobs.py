"""The ``jobs`` collection: one document per optimization (queued -> running -> done | failed).

Written by :mod:`indico.services.jobs` (``portfolio/optimize``'s steps 2 and 4:
:func:`create_job`, then :func:`complete_job`, whose answer is the stored job
the request gets back and :mod:`indico.services.events` announces), claimed
by any process's job runner (:func:`claim_job`), read and deleted by
:mod:`indico.services.portfolio`.

Stored shape: ``_id`` (24 hex characters, a string), ``owner`` (the user's id
as a string), ``status``, ``params`` (the normalized request), ``events``
(a list of ``{"id", "event", "at"}``, one per transition, read by the event
pollers of every process), ``result`` (when done), ``error`` (when failed),
``created`` (a date, set once), ``updated`` and ``lease_expires`` (epoch
seconds), ``lease_owner`` (the worker holding the job), ``attempts``, and
``slot`` (``"<owner>:<k>"``, only while the job is queued or running).

The quota of active jobs per user is the unique index on ``slot``: a new job
takes the first free one of ``max_active`` slots in its insert, and the update
that completes it gives the slot back. No count query is needed (on nx-27017 a
count of a user's jobs scans them all, tens of milliseconds).

Times that change are numbers, and lists are written whole with ``$set``:
nx-27017 stores dates written by ``$set`` as strings and documents written by
``$push`` as JSON strings. Owner-scoped queries with ``$or`` use an explicit
``$and``, because nx-27017 drops the sibling conditions of a top-level ``$or``.
"""

import time
import uuid

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from indico.db.util import journaled, now, reraise_lost_cancellation

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


async def create_indexes(db):
    await db.jobs.create_index([("owner", ASCENDING), ("created", DESCENDING)],
                               name="owner_created")
    await db.jobs.create_index([("status", ASCENDING), ("lease_expires", ASCENDING)],
                               name="status_lease")
    await db.jobs.create_index([("owner", ASCENDING), ("updated", ASCENDING)],
                               name="owner_updated")
    await db.jobs.create_index([("slot", ASCENDING)], unique=True, sparse=True, name="slot")


def new_event(event, **details):
    """An entry of a job's ``events`` list."""
    return {"id": uuid.uuid4().hex, "event": event, "at": time.time(), **details}


async def create_job(db, owner, params, max_active, worker=None, lease=None):
    """Insert a job, queued; or already running under ``worker`` when it is given.

    Args:
        max_active: how many queued or running jobs ``owner`` may have.

    Returns:
        the stored document, or None when all of ``owner``'s slots are taken.
    """
    moment = time.time()
    events = [new_event(QUEUED)]
    document = {
        "_id": str(ObjectId()), "owner": owner, "params": params, "status": QUEUED,
        "created": now(), "updated": moment, "attempts": 0, "lease_owner": None,
        "lease_expires": 0.0,
    }
    if worker is not None:
        events.append(new_event(RUNNING))
        document.update(status=RUNNING, lease_owner=worker, lease_expires=moment + lease,
                        attempts=1)
    document["events"] = events
    collection = journaled(db, "jobs")
    for slot in range(max_active):
        document["slot"] = f"{owner}:{slot}"
        try:
            await collection.insert_one(document)
            return document
        except DuplicateKeyError:
            continue  # that slot belongs to another active job
    return None


async def claim_job(db, worker, lease):
    """Atomically take the oldest queued job, or a running one whose lease expired.

    Returns:
        the claimed job (status running, ``lease_owner`` = ``worker``), or None.
    """
    moment = time.time()
    collection = journaled(db, "jobs")
    for query in ({"status": QUEUED},
                  {"status": RUNNING, "lease_expires": {"$lt": moment}}):
        candidate = await db.jobs.find_one(query, sort=[("created", ASCENDING)])
        reraise_lost_cancellation()  # the job runner stops by cancellation
        if candidate is None:
            continue
        events = candidate["events"] + [new_event(RUNNING)]
        # The filter repeats what made it claimable: two workers racing for
        # the same job cannot both match.
        claimed = await collection.find_one_and_update(
            {"_id": candidate["_id"], "status": candidate["status"],
             "lease_expires": candidate["lease_expires"]},
            {"$set": {"status": RUNNING, "lease_owner": worker, "lease_expires": moment + lease,
                      "updated": moment, "events": events},
             "$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )
        if claimed is not None:
            return claimed
        reraise_lost_cancellation()
    return None


async def renew_lease(db, job_id, worker, lease):
    """Extend ``worker``'s lease on a running job; False if the job is no longer its own."""
    result = await db.jobs.update_one(
        {"_id": job_id, "status": RUNNING, "lease_owner": worker},
        {"$set": {"lease_expires": time.time() + lease}})
    return bool(result.matched_count)


async def complete_job(db, job, worker, status, **fields):
    """Mark ``job`` done or failed with ``fields`` (``result`` or ``error``), if still ``worker``'s.

    The write appends the ``status`` event to the job's events.

    Returns:
        the job as stored by this write (the server's answer), or None when
        another worker took the job over (or it was deleted) meanwhile.
    """
    events = job["events"] + [new_event(status)]
    return await journaled(db, "jobs").find_one_and_update(
        {"_id": job["_id"], "status": RUNNING, "lease_owner": worker},
        {"$set": {"status": status, "updated": time.time(), "events": events,
                  "lease_owner": None, "lease_expires": 0.0, **fields},
         "$unset": {"slot": ""}},
        return_document=ReturnDocument.AFTER,
    )


async def get_job(db, owner, job_id):
    """Return ``owner``'s job ``job_id``, or None (also for someone else's job)."""
    return await db.jobs.find_one({"_id": job_id, "owner": owner})


async def list_jobs(db, owner, limit, after=None):
    """Return up to ``limit`` of ``owner``'s jobs, newest first.

    Args:
        after: ``(created, id)`` of the last job of the previous page, or None.
    """
    query = {"owner": owner}
    if after is not None:
        created, job_id = after
        query = {"$and": [query, {"$or": [
            {"created": {"$lt": created}},
            {"created": created, "_id": {"$lt": job_id}},
        ]}]}
    cursor = db.jobs.find(query, {"events": 0}).sort([("created", DESCENDING), ("_id", DESCENDING)])
    return await cursor.limit(limit).to_list()


async def list_changed_jobs(db, owners, since):
    """Jobs of ``owners`` updated at or after ``since`` (epoch seconds), with their events."""
    changed = await db.jobs.find(
        {"owner": {"$in": list(owners)}, "updated": {"$gte": since}},
        {"owner": 1, "events": 1, "status": 1, "result": 1, "error": 1, "updated": 1},
    ).to_list()
    reraise_lost_cancellation()  # the event poller stops by cancellation
    return changed


async def delete_job(db, owner, job_id):
    """Delete ``owner``'s job ``job_id``; returns how many were deleted (0 or 1)."""
    result = await journaled(db, "jobs").delete_one({"_id": job_id, "owner": owner})
    return result.deleted_count


async def delete_owner_jobs(db, owner):
    """Delete every job of ``owner``; returns how many."""
    result = await journaled(db, "jobs").delete_many({"owner": owner})
    return result.deleted_count
