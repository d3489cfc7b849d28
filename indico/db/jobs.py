"""The ``jobs`` collection: one document per job (queued -> running -> done | failed).

Written by :mod:`indico.services.jobs` (``portfolio/optimize``'s steps 2 and 4:
:func:`create_job`, then :func:`complete_job`, whose answer is the stored job
the request gets back and :mod:`indico.services.events` announces; a
backtest's :func:`record_progress` between them), claimed by any process's job
runner (:func:`claim_job`), ended early by :func:`cancel_job`, read and
deleted by :mod:`indico.services.portfolio`.

Stored shape: ``_id`` (24 hex characters, a string), ``owner`` (the user's id
as a string), ``kind`` (``optimize`` or ``backtest``; absent in jobs stored
before backtests existed, which are optimizations), ``status``, ``params``
(the normalized request), ``events`` (a list of ``{"id", "event", "at"}``,
one per transition, and ``{"id", "event": "progress", "at", "done",
"total"}`` per chunk of a backtest's rebalances, read by the event pollers of
every process), ``progress`` (the last ``{"done", "total"}``), ``result``
(when done: its JSON text, see :func:`~indico.db.records.encode_result`),
``error`` (when failed; ``cancelled`` after :func:`cancel_job`),
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
nx-27017 answers queries from single-field indexes only, and scans every stored
job for ``$in``: ``status`` and ``owner`` have indexes of their own there, and
:func:`list_changed_jobs` asks per owner (see :func:`create_indexes`).

Every function hands up :class:`~indico.db.records.Job` records (string ids,
UTC datetimes), decoded here from the stored shape.
"""

import asyncio
import dataclasses
import datetime
import time
import uuid
from collections.abc import Iterable
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db.records import (
    EPOCH,
    Job,
    JobEvent,
    JobKind,
    as_datetime,
    as_epoch,
    encode_result,
)
from indico.db.util import is_embedded, journaled, now, reraise_lost_cancellation

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
#: The event of a backtest's progress; not a status.
PROGRESS = "progress"
#: The error of a job ended by :func:`cancel_job`.
CANCELLED = "cancelled"
# Tries of cancel_job's conditional write when the job moved between its read
# and its write (a progress write, a claim): each move is a write of the job's
# runner, a few per second at most.
CANCEL_ATTEMPTS = 10


def _stamp() -> float:
    """The time as stored for times that change: epoch seconds, to the millisecond.

    Rounded so that a record's datetime is the stored value exactly: nx-27017
    keeps about 16 significant digits of a double, which loses a microsecond
    of an epoch in seconds now and then (a record built from what was written
    would then differ from the same job read back).
    """
    return round(time.time(), 3)


async def create_indexes(db: AsyncDatabase) -> None:
    await db.jobs.create_index([("owner", ASCENDING), ("created", DESCENDING)],
                               name="owner_created")
    await db.jobs.create_index([("status", ASCENDING), ("lease_expires", ASCENDING)],
                               name="status_lease")
    await db.jobs.create_index([("owner", ASCENDING), ("updated", ASCENDING)],
                               name="owner_updated")
    await db.jobs.create_index([("slot", ASCENDING)], unique=True, sparse=True, name="slot")
    if await is_embedded(db):
        # nx-27017 answers a query from single-field indexes only (its query
        # plans: "SCAN jobs" with the compound ones alone). Every process's job
        # runner looks for queued and expired jobs once a second: it decoded
        # every stored job, 50 ms with 2,000 of them and ~170 ms requests after
        # 10,000 (docs/PERFORMANCE.md), about 1 ms with the status index. The
        # owner index serves the event pollers' looks (every 0.25 s while
        # somebody listens: 49 -> 4 ms with 2,000 jobs) and a first page of
        # portfolio/list. MongoDB uses the compound indexes' prefixes for all
        # of these, so there these two would only cost writes.
        await db.jobs.create_index([("status", ASCENDING)], name="status_nx27017")
        await db.jobs.create_index([("owner", ASCENDING)], name="owner_nx27017")


def new_event(event: str, moment: float | None = None, **fields: Any) -> dict[str, Any]:
    """An entry of a job's ``events`` list, as stored, stamped ``moment`` (now if None).

    Args:
        fields: more fields of the entry (``done`` and ``total`` of a progress event).
    """
    return {"id": uuid.uuid4().hex, "event": event,
            "at": _stamp() if moment is None else moment, **fields}


def _events(job: Job, *more: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored ``events`` list of ``job`` with ``more`` entries appended."""
    return [event.to_document() for event in job.events] + list(more)


def _decode(document: dict[str, Any] | None) -> Job | None:
    return None if document is None else Job.from_document(document)


async def create_job(db: AsyncDatabase, owner: str, params: dict[str, Any], max_active: int,
                     worker: str | None = None, lease: float = 0.0,
                     kind: JobKind = JobKind.OPTIMIZE) -> Job | None:
    """Insert a job, queued; or already running under ``worker`` when it is given.

    Args:
        owner: the user's id.
        params: the normalized request.
        max_active: how many queued or running jobs ``owner`` may have (of any kind).
        worker: the worker that runs it at once, or None (queued).
        lease: seconds of that worker's first lease.
        kind: what the job computes.

    Returns:
        the stored job, or None when all of ``owner``'s slots are taken.
    """
    moment = _stamp()
    events = [new_event(QUEUED, moment)]
    document = {
        "_id": str(ObjectId()), "owner": owner, "kind": str(kind), "params": params,
        "status": QUEUED,
        "created": now(), "updated": moment, "attempts": 0, "lease_owner": None,
        "lease_expires": 0.0,
    }
    if worker is not None:
        events.append(new_event(RUNNING, moment))
        document.update(status=RUNNING, lease_owner=worker, lease_expires=moment + lease,
                        attempts=1)
    document["events"] = events
    collection = journaled(db, "jobs")
    for slot in range(max_active):
        document["slot"] = f"{owner}:{slot}"
        try:
            await collection.insert_one(document)
            return Job.from_document(document)
        except DuplicateKeyError:
            continue  # that slot belongs to another active job
    return None


async def claim_job(db: AsyncDatabase, worker: str, lease: float) -> Job | None:
    """Atomically take the oldest queued job, or a running one whose lease expired.

    Args:
        worker: the worker that takes it.
        lease: seconds of its lease.

    Returns:
        the claimed job (status running, ``lease_owner`` = ``worker``), or None.
    """
    moment = _stamp()
    collection = journaled(db, "jobs")
    for query in ({"status": QUEUED},
                  {"status": RUNNING, "lease_expires": {"$lt": moment}}):
        candidate = await db.jobs.find_one(query, sort=[("created", ASCENDING)])
        reraise_lost_cancellation()  # the job runner stops by cancellation
        if candidate is None:
            continue
        events = _events(Job.from_document(candidate), new_event(RUNNING))
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
            return Job.from_document(claimed)
        reraise_lost_cancellation()
    return None


async def renew_lease(db: AsyncDatabase, job_id: str, worker: str, lease: float) -> bool:
    """Extend ``worker``'s lease on a running job; False if the job is no longer its own."""
    result = await db.jobs.update_one(
        {"_id": job_id, "status": RUNNING, "lease_owner": worker},
        {"$set": {"lease_expires": time.time() + lease}})
    return bool(result.matched_count)


async def complete_job(db: AsyncDatabase, job: Job, worker: str, status: str, *,
                       result: dict[str, Any] | None = None,
                       error: str | None = None) -> Job | None:
    """Mark ``job`` done (with ``result``) or failed (with ``error``), if still ``worker``'s.

    The write appends the ``status`` event to the job's events. The result is
    stored as its JSON text (see the module docstring).

    Returns:
        the job as this write stored it, or None when another worker took the
        job over (or it was deleted) meanwhile.
    """
    moment = _stamp()
    events = _events(job, new_event(status, moment))
    fields: dict[str, Any] = {"status": status, "updated": moment, "events": events,
                              "lease_owner": None, "lease_expires": 0.0}
    if result is not None:
        fields["result"] = encode_result(result)
    if error is not None:
        fields["error"] = error
    # update_one, not find_one_and_update: the filter proves that the job is
    # still as ``job`` says but for its lease's end, which this write resets,
    # so the stored job is known without asking for it back (a round trip
    # and, on nx-27017, about 1.5 ms per job).
    written = await journaled(db, "jobs").update_one(
        {"_id": job.id, "status": RUNNING, "lease_owner": worker},
        {"$set": fields, "$unset": {"slot": ""}},
    )
    if not written.matched_count:
        return None
    return dataclasses.replace(
        job, status=status, updated=as_datetime(moment),
        events=tuple(JobEvent.from_document(entry) for entry in events),
        result=job.result if result is None else result,
        error=job.error if error is None else error,
        lease_owner=None, lease_expires=EPOCH, slot=None)


async def record_progress(db: AsyncDatabase, job: Job, worker: str, done: int,
                          total: int) -> Job | None:
    """Store that ``done`` of ``total`` rebalances of the running ``job`` are computed.

    The write appends a ``progress`` event to the job's events (the event
    pollers of every process send it) and sets ``progress``, if the job is
    still running under ``worker``.

    Returns:
        the job as this write stored it; None when it is no longer ``worker``'s
        (cancelled, taken over or deleted): its runner stops.
    """
    moment = _stamp()
    events = _events(job, new_event(PROGRESS, moment, done=done, total=total))
    progress = {"done": done, "total": total}
    written = await db.jobs.update_one(
        {"_id": job.id, "status": RUNNING, "lease_owner": worker},
        {"$set": {"progress": progress, "updated": moment, "events": events}})
    if not written.matched_count:
        return None
    return dataclasses.replace(
        job, updated=as_datetime(moment), progress=progress,
        events=tuple(JobEvent.from_document(entry) for entry in events))


async def cancel_job(db: AsyncDatabase, owner: str, job_id: str) -> tuple[Job | None, bool]:
    """End ``owner``'s queued or running job ``job_id`` ``failed`` with :data:`CANCELLED`.

    One conditional write on the job as just read (its status and ``updated``):
    a job that moved meanwhile (a progress write, a claim) is read again and
    the write tried again; one that ended meanwhile is left as it ended. The
    write appends the ``failed`` event, gives the quota slot back and drops the
    lease: the job's runner sees at its next write (progress, completion,
    lease renewal) that the job is no longer its own, and a queued one is
    never claimed.

    Returns:
        ``(job, cancelled)``: ``(None, False)`` when ``owner`` has no such job;
        the job as stored and False when it had ended already; the job as
        this write stored it and True when it was cancelled.

    Raises:
        ServiceUnavailable: the job moved between every read and write.
    """
    collection = journaled(db, "jobs")
    for _ in range(CANCEL_ATTEMPTS):
        document = await db.jobs.find_one({"_id": job_id, "owner": owner})
        if document is None:
            return None, False
        job = Job.from_document(document)
        if job.status not in (QUEUED, RUNNING):
            return job, False
        moment = _stamp()
        events = _events(job, new_event(FAILED, moment))
        written = await collection.update_one(
            {"_id": job_id, "owner": owner, "status": document["status"],
             "updated": document["updated"]},
            {"$set": {"status": FAILED, "error": CANCELLED, "updated": moment,
                      "events": events, "lease_owner": None, "lease_expires": 0.0},
             "$unset": {"slot": ""}})
        if written.matched_count:
            return dataclasses.replace(
                job, status=FAILED, error=CANCELLED, updated=as_datetime(moment),
                events=tuple(JobEvent.from_document(entry) for entry in events),
                lease_owner=None, lease_expires=EPOCH, slot=None), True
    raise error.ServiceUnavailable("the job kept changing while it was being cancelled; try "
                                   "again", retry_after=1)


async def get_job(db: AsyncDatabase, owner: str, job_id: str) -> Job | None:
    """Return ``owner``'s job ``job_id``, or None (also for someone else's job)."""
    return _decode(await db.jobs.find_one({"_id": job_id, "owner": owner}))


async def list_jobs(db: AsyncDatabase, owner: str, limit: int,
                    after: tuple[datetime.datetime, str] | None = None) -> list[Job]:
    """Return up to ``limit`` of ``owner``'s jobs, newest first, without their events.

    Args:
        after: ``(created, id)`` of the last job of the previous page, or None.
    """
    query: dict[str, Any] = {"owner": owner}
    if after is not None:
        created, job_id = after
        query = {"$and": [query, {"$or": [
            {"created": {"$lt": created}},
            {"created": created, "_id": {"$lt": job_id}},
        ]}]}
    cursor = db.jobs.find(query, {"events": 0}).sort([("created", DESCENDING), ("_id", DESCENDING)])
    return [Job.from_document(document) for document in await cursor.limit(limit).to_list()]


async def list_changed_jobs(db: AsyncDatabase, owners: Iterable[str],
                            since: datetime.datetime) -> list[Job]:
    """Jobs of ``owners`` updated at or after ``since``, with their events.

    Without the lease fields (the event pollers do not need them; the records
    have their defaults there).
    """
    owners = list(owners)
    if not owners:
        return []
    projection = {"owner": 1, "kind": 1, "events": 1, "status": 1, "result": 1, "error": 1,
                  "updated": 1, "created": 1, "params": 1, "progress": 1}
    moment = as_epoch(since)
    if len(owners) > 1 and await is_embedded(db):
        # nx-27017 answers ``owner: {$in: [...]}`` by scanning every stored job
        # (and the pollers ask every 0.25 s while somebody listens), but an
        # equality on owner from owner_updated: one query per owner, at once.
        found = await asyncio.gather(*(
            db.jobs.find({"owner": owner, "updated": {"$gte": moment}}, projection).to_list()
            for owner in owners))
        changed = [document for documents in found for document in documents]
    else:
        query = ({"owner": owners[0]} if len(owners) == 1 else {"owner": {"$in": owners}})
        changed = await db.jobs.find({**query, "updated": {"$gte": moment}},
                                     projection).to_list()
    reraise_lost_cancellation()  # the event poller stops by cancellation
    return [Job.from_document(document) for document in changed]


async def delete_job(db: AsyncDatabase, owner: str, job_id: str) -> int:
    """Delete ``owner``'s job ``job_id``; returns how many were deleted (0 or 1)."""
    result = await journaled(db, "jobs").delete_one({"_id": job_id, "owner": owner})
    return result.deleted_count


async def delete_owner_jobs(db: AsyncDatabase, owner: str) -> int:
    """Delete every job of ``owner``; returns how many."""
    result = await journaled(db, "jobs").delete_many({"owner": owner})
    return result.deleted_count
