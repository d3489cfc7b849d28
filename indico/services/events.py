"""The job-event hub: tells WebSocket subscribers about their jobs' transitions and progress.

Step 4 of ``portfolio/optimize`` (after :mod:`indico.services.jobs` wrote a
transition, or a backtest's progress, to the ``jobs`` collection,
:mod:`indico.db.jobs`): every write of a job returns the stored document, and
:meth:`JobEvents.publish` sends the events in it that were not sent yet to the
owner's subscribers
(``/ws/jobs``, :mod:`indico.routes.ws`). Events of jobs written by other
processes are found by polling the jobs changed since the last look, only
while somebody listens. Each event has an id, so none is sent twice: the ids
sent are remembered for :data:`SENT_MEMORY` seconds, in a bounded cache.
"""

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import cachetools
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from indico.db import jobs
from indico.db.records import Job, JobEvent, JobKind
from indico.db.util import Sleep
from indico.utils.logs import describe_database_error

log = logging.getLogger(__name__)

# How far behind this machine's clock another machine's may be without its job
# events being missed: ``updated`` and an event's ``at`` are stamped with the
# writer's clock, and each poll looks this much further back than the last one
# (events have ids, so none is sent twice). Kept below SENT_MEMORY less the
# poll interval, or an event could be sent again.
EVENT_CLOCK_SKEW = 10.0
# Seconds an event id is remembered once sent. An event older than this is
# never sent: it was sent then, or it happened before anyone listened.
SENT_MEMORY = 60.0
# Most event ids remembered (about 200 bytes each, 13 MB in all): enough for
# 1,000 events a second over SENT_MEMORY. Past it the oldest are forgotten
# first, so memory stays bounded whatever the rate and whoever listens.
SENT_LIMIT = 65536
# After failed polls, the wait doubles, up to this many intervals.
POLL_BACKOFF_LIMIT = 5

Message = dict[str, Any]
Callback = Callable[[Message], None]


def job_summary(job: Job) -> dict[str, Any]:
    """What the ``done`` event says of a finished job: objective, allocations, stats.

    A backtest's allocations are the weights of its last rebalance, and its
    stats those of the strategy and of equal weight.
    """
    result = job.result or {}
    if job.kind == JobKind.BACKTEST:
        rebalances = result.get("rebalances") or [{}]
        return {"objective": job.params.get("objective"),
                "allocations": rebalances[-1].get("weights"), "stats": result.get("stats")}
    return {"objective": result.get("objective"), "allocations": result.get("allocations"),
            "stats": result.get("stats")}


def event_message(job: Job, event: JobEvent) -> Message:
    """The WebSocket message of ``event`` of the stored ``job``.

    Returns:
        ``{"event", "id", "kind", "at"}`` (``at`` in epoch seconds), with
        ``summary`` for done, ``error`` for failed and ``done`` and ``total``
        (rebalances) for progress.
    """
    message: Message = {"event": event.event, "id": job.id, "kind": str(job.kind),
                        "at": event.at.timestamp()}
    if event.event == jobs.DONE:
        message["summary"] = job_summary(job)
    elif event.event == jobs.FAILED:
        message["error"] = job.error
    elif event.event == jobs.PROGRESS:
        message.update(done=event.done, total=event.total)
    return message


class JobEvents:
    """Sends the events of stored jobs to their owners' subscribers, each event once.

    Args:
        db: the database handle.
        interval: seconds between polls while there are subscribers.
        clock: ``clock()`` gives the time in epoch seconds, the clock events
            are stamped with (injectable for tests); the poller reads the
            time only through it.
        sleep: ``await sleep(seconds)`` waits between polls (injectable for
            tests, which advance ``clock`` there instead of waiting).
    """

    def __init__(self, db: AsyncDatabase, interval: float = 0.25,
                 clock: Callable[[], float] = time.time, sleep: Sleep = asyncio.sleep) -> None:
        self.db = db
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.subscribers: dict[str, set[Callback]] = {}
        self.sent: cachetools.TTLCache = cachetools.TTLCache(SENT_LIMIT, SENT_MEMORY,
                                                             timer=clock)
        self.task: asyncio.Task | None = None
        self.stopping = asyncio.Event()

    def subscribe(self, owner: str, callback: Callback) -> None:
        """Call ``callback(message)`` for each event of ``owner``'s jobs until unsubscribed."""
        self.subscribers.setdefault(owner, set()).add(callback)
        if not self.stopping.is_set() and (self.task is None or self.task.done()):
            self.task = asyncio.ensure_future(self._poll(self.clock()))

    def unsubscribe(self, owner: str, callback: Callback) -> None:
        """Stop calling ``callback`` for ``owner``'s events."""
        callbacks = self.subscribers.get(owner, set())
        callbacks.discard(callback)
        if not callbacks:
            self.subscribers.pop(owner, None)

    def publish(self, job: Job, since: float | None = None) -> None:
        """Send the events of the stored ``job`` not sent yet to its owner's subscribers.

        Args:
            job: a job as stored (as the write returned it, or as read).
            since: send only events stamped at or after this (epoch seconds);
                never older than :data:`SENT_MEMORY` seconds in any case.
        """
        horizon = self.clock() - SENT_MEMORY
        if since is not None:
            horizon = max(horizon, since)
        callbacks = self.subscribers.get(job.owner, set())
        for event in job.events:
            if event.at.timestamp() < horizon or event.id in self.sent:
                continue
            self.sent[event.id] = True
            message = event_message(job, event)
            for callback in list(callbacks):
                callback(message)

    async def _poll(self, since: float) -> None:
        failures = 0
        while self.subscribers and not self.stopping.is_set():
            await self.sleep(self.interval * 2 ** min(failures, POLL_BACKOFF_LIMIT))
            moment = self.clock()
            window = since - EVENT_CLOCK_SKEW
            try:
                changed = await self.changed_jobs(window)
            except PyMongoError as exc:  # the database is down or slow: one line, no traceback
                failures += 1
                log.warning("job events: poll failed (%s); next try in %g s",
                            describe_database_error(exc),
                            self.interval * 2 ** min(failures, POLL_BACKOFF_LIMIT))
                continue
            except Exception:  # a bug: keep its traceback; the next poll tries again
                log.exception("job events: poll failed")
                continue
            failures = 0
            self._publish_all(changed, window)
            since = moment

    async def changed_jobs(self, since: float) -> list[Job]:
        """The subscribers' jobs updated at or after ``since`` (epoch seconds)."""
        return await jobs.list_changed_jobs(
            self.db, self.subscribers, datetime.datetime.fromtimestamp(since, datetime.UTC))

    def _publish_all(self, changed: Iterable[Job], window: float) -> None:
        # Events before the window were sent before, or happened before anyone listened.
        for job in sorted(changed, key=lambda item: item.updated):
            self.publish(job, since=window)

    async def stop(self) -> None:
        """Stop polling and forget the subscribers; returns once the poller has ended.

        The poller checks :attr:`stopping` before each round, and the task is
        cancelled until it is done: Python 3.11's ``asyncio.wait_for`` (inside
        the driver) may swallow one cancellation (see
        :func:`indico.db.util.reraise_lost_cancellation`).
        """
        self.stopping.set()
        self.subscribers.clear()
        await stop_task(self.task)


async def stop_task(task: "asyncio.Future[Any] | None", retry: float = 0.1) -> None:
    """Cancel ``task`` until it is done, however many cancellations it swallows.

    Args:
        task: the task of a loop that also checks a stop event, or None.
        retry: seconds between cancellations.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry)
