"""Saved results: read, list (newest first, by cursor) and delete a caller's jobs.

A result is the job document that :mod:`indico.services.jobs` wrote and
finished; this module only reads and deletes them, always scoped to their
owner (someone else's job is the same 404 as a missing one).
"""

import base64
import datetime
import json

from pymongo.asynchronous.database import AsyncDatabase

from config import Config
from indico import error
from indico.db import jobs
from indico.db.records import Job


def encode_cursor(job: Job) -> str:
    """An opaque cursor pointing after ``job`` in the newest-first order."""
    raw = json.dumps([job.created.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: The position after a job in the newest-first order: its ``(created, id)``.
Position = tuple[datetime.datetime, str]


def decode_cursor(cursor: str) -> Position:
    """Return the position in a cursor made by :func:`encode_cursor`.

    Raises:
        ValueError: not such a cursor (the request model turns it into a 400).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        moment = datetime.datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("no UTC offset")  # encode_cursor always writes one
        # In UTC, as stored: an offset that moves the moment past year 1 or 9999
        # raises OverflowError here, and not in the driver's encoder later.
        return moment.astimezone(datetime.UTC), str(job_id)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError("not a cursor from portfolio/list") from exc


class PortfolioService:
    """A user's saved results.

    Args:
        db: the database handle.
        config: the Config (largest page).
    """

    def __init__(self, db: AsyncDatabase, config: Config) -> None:
        self.db = db
        self.config = config

    async def get_result(self, owner: str, job_id: str) -> Job:
        """Return ``owner``'s job ``job_id``, finished or not.

        Raises:
            NotFound: no such job of ``owner``'s.
        """
        job = await jobs.get_job(self.db, owner, job_id)
        if job is None:
            raise error.NotFound("no such result")
        return job

    async def list_results(self, owner: str, limit: int,
                           after: Position | None = None) -> tuple[list[Job], str | None]:
        """A page of ``owner``'s jobs, newest first, and the cursor of the next page.

        Args:
            limit: the page size, capped at ``INDICO_LIST_LIMIT_MAX``.
            after: the position of the previous page's cursor (:func:`decode_cursor`),
                or None for the first page.

        Returns:
            ``(jobs, next_cursor)``; ``next_cursor`` is None on the last page.
        """
        limit = min(limit, self.config.list_limit_max)
        page = await jobs.list_jobs(self.db, owner, limit + 1, after)
        next_cursor = encode_cursor(page[limit - 1]) if len(page) > limit else None
        return page[:limit], next_cursor

    async def delete_result(self, owner: str, job_id: str) -> None:
        """Delete ``owner``'s job ``job_id``.

        Raises:
            NotFound: no such job of ``owner``'s.
        """
        if not await jobs.delete_job(self.db, owner, job_id):
            raise error.NotFound("no such result")
