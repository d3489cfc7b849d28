"""Portfolio jobs: one path from an optimization or a backtest request to its stored result.

``portfolio/optimize``, in order (start at :mod:`indico.routes.portfolio`,
which validated the request with its rules and limits):

1. :meth:`JobService.optimize` loads the aligned prices
   (:mod:`indico.services.price_catalog`): unknown symbols are refused before any job
   exists.
2. It writes the job, owned by the caller, under this process's lease
   (:func:`indico.db.jobs.create_job`: events ``queued`` and ``running``; the
   quota of active jobs is a 429) and publishes its events
   (:mod:`indico.services.events`).
3. It runs the job in the background (:meth:`JobService.run`): a worker
   process of the :class:`~indico.services.pool.WorkerPool` (pebble) runs
   :func:`~indico.services.pool.run_optimization` (:mod:`indico.optimization`)
   under the per-task time limit ``INDICO_JOB_TIME_LIMIT``, while the lease is
   renewed. The task is sent to the pool as step 2 begins, so the computation
   and the insert overlap; a job that step 2 refuses leaves its computation
   unused (an owner has at most ``INDICO_MAX_ACTIVE_JOBS`` such early
   computations in a process; past that, the task waits for the insert). The
   price frame travels to each worker once; later jobs on the same prices send
   only its token, and reuse the moments the worker made of it (the frame
   caches of :mod:`indico.services.pool`).
4. It records how the job ended (:func:`indico.db.jobs.complete_job`, which
   returns the stored job) and publishes the ``done`` or ``failed`` event.
5. The request waits for steps 3–4 up to ``INDICO_JOB_WAIT`` seconds (none
   with ``wait: false``): the finished job goes back to the route (200, or a
   422 for a job that failed), or the job as written in step 2 (202).

``portfolio/backtest`` (:meth:`JobService.backtest`) is the same path with
two differences. In step 1 the frame reaches back to the symbols' earliest
stored date (a rebalance's window may start before ``startDate``), and the
walk-forward plan (:func:`indico.optimization.backtest.plan_backtest`) is made
in the pool, so that a symbol without enough history is a 422 before any job
exists. In step 3 the rebalances are computed in chunks, each a pool task
(:func:`~indico.services.pool.run_backtest_chunk`, on the workers' frame
cache) of a size that takes about :data:`CHUNK_SECONDS`, as many at once as
the pool has workers; after each, :func:`indico.db.jobs.record_progress`
stores a ``progress`` event that is published like the others (every
process's event poller finds it in the stored job), and a job that is no
longer this process's (cancelled, taken over, deleted) stops there. Then
:func:`~indico.services.pool.run_backtest_simulate` turns the weights into
the result, and step 4 follows. The request never waits: 202.

``portfolio/cancel`` (:meth:`JobService.cancel`) ends a queued or running
job of the caller's ``failed`` with ``cancelled`` in one conditional write
(:func:`indico.db.jobs.cancel_job`) and publishes the ``failed`` event; the
process running the job sees at its next write that the job is no longer its
own and stops (a backtest between two chunks, an optimization when its one
task ends).

An impossible problem (the engine's :class:`~indico.error.OptimizationError`)
leaves no job behind only while the request that created the job still waits
for it: the job is deleted and the request answers 422. Once the request has
answered 202, the job ends ``failed`` with the message, like any other
failure, and its ``failed`` event is sent.

A process that dies leaves its running jobs under their lease; the
:class:`JobRunner` of any process sharing the database claims them (and jobs
left queued) once the lease has expired, and runs them from step 3, so an
accepted job always ends done or failed. A backtest taken over starts again
from its first rebalance (its progress events count from 0 again): chunks
already computed are not stored. The saved results are read, listed and
deleted by :mod:`indico.services.portfolio`.

This module owns the lifecycle only: the job's writes, its lease, its events
and how each way of ending becomes its status. What runs in the worker
processes, and the pool that manages them, is :mod:`indico.services.pool`'s:
:class:`JobService` hands it a work function, a frame and params, and gets a
result or an exception back.
"""

import asyncio
import collections
import functools
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar, cast

import pandas as pd
import pebble
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from config import Config
from indico import error
from indico.db import jobs
from indico.db.records import Job, JobKind
from indico.db.util import Sleep
from indico.optimization.backtest import BacktestPlan
from indico.services.events import JobEvents, stop_task
from indico.services.pool import (
    Work,
    WorkerPool,
    run_backtest_chunk,
    run_backtest_plan,
    run_backtest_simulate,
    run_frontier,
    run_optimization,
)
from indico.services.price_catalog import PriceCatalog
from indico.utils.logs import describe_database_error

log = logging.getLogger(__name__)

# Seconds between tries after a failed lease renewal, at most (the lease may
# have little time left).
RENEW_RETRY = 1.0
# Seconds JobService.stop lets background jobs finish before it cancels them.
STOP_GRACE = 2.0
# How a pebble-scheduled function that ended badly becomes a job's message.
WORKER_DIED = "the worker process died; try again"
INTERNAL_ERROR = "internal error while optimizing"
# Seconds of engine work a backtest's chunk of rebalances aims at: a cancelled
# backtest stops within about one chunk, and each chunk costs one pool round
# trip and one progress write (a few milliseconds).
CHUNK_SECONDS = 0.1
# Rebalances of a backtest's first chunks, before their speed is known; and at most.
FIRST_CHUNK = 2
MAX_CHUNK = 256

Returned = TypeVar("Returned")


class Waiter:
    """The request that created a job, while it waits for the job to end.

    Attributes:
        waiting: the request still waits; once False, nobody does.
        answering: the job's task decided that the request answers for the
            job (it is deleting an impossible job): the request waits on.
    """

    def __init__(self) -> None:
        self.waiting = True
        self.answering = False

    async def wait(self, task: "asyncio.Task[Job | None]", seconds: float) -> Job | None:
        """Wait up to ``seconds`` for ``task``.

        Returns:
            what the task returned (the finished job, or None if it was
            deleted meanwhile); None also when the time ran out first.

        Raises:
            whatever the task raised (an OptimizationError when the job was
            discarded for this request).
        """
        try:
            await asyncio.wait({task}, timeout=seconds)
            if not task.done() and not self.answering:
                return None
            await asyncio.wait({task})  # the task is deleting the job: one write
            return task.result()
        finally:
            self.waiting = False


class JobLost(Exception):
    """Raised in a job's run when the job is no longer this process's: stop there.

    It was cancelled (``portfolio/cancel``), taken over by another process
    after this one's lease ran out, or deleted.
    """


class JobService:
    """Creates, runs, finishes, cancels and announces jobs (steps 1–5 above).

    Args:
        db: the database handle.
        config: the Config (quota, waits, leases, time limit).
        prices: the PriceCatalog that loads aligned price frames.
        events: the JobEvents hub that tells WebSocket clients.
        pool: the :class:`~indico.services.pool.WorkerPool` the work runs in
            (:func:`indico.services.open_services` builds it; :meth:`stop` shuts
            it down unless told not to).
        work: the function the workers run for an optimization,
            :func:`~indico.services.pool.run_optimization` unless a test gives
            another module-level function.
        chunk_work: the function the workers run for a chunk of a backtest's
            rebalances, :func:`~indico.services.pool.run_backtest_chunk` unless a
            test gives another.
        frontier_work: the function the workers run for ``portfolio/frontier``,
            :func:`~indico.services.pool.run_frontier` unless a test gives another.
        sleep: ``await sleep(seconds)`` between lease renewals (injectable).
    """

    def __init__(self, db: AsyncDatabase, config: Config, prices: PriceCatalog,
                 events: JobEvents, pool: WorkerPool,
                 work: Work = run_optimization, sleep: Sleep = asyncio.sleep,
                 chunk_work: Work = run_backtest_chunk,
                 frontier_work: Work = run_frontier) -> None:
        self.db = db
        self.config = config
        self.prices = prices
        self.events = events
        self.pool = pool
        self.work = work
        self.chunk_work = chunk_work
        self.frontier_work = frontier_work
        self.sleep = sleep
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.background: set[asyncio.Task] = set()
        # Computations started with their job's insert, by owner, until they end.
        self.early: collections.Counter[str] = collections.Counter()

    async def load_inputs(self, params: dict[str, Any], kind: JobKind = JobKind.OPTIMIZE
                          ) -> tuple[pd.DataFrame, pd.Series | None]:
        """The aligned price frame and the benchmark series for a job's ``params``.

        Args:
            kind: a backtest's frame starts at the symbols' earliest stored
                date (its windows reach before ``start_date``).

        Raises:
            UnknownSymbols: symbols without prices; the message says how to add them.
            Unprocessable: too few common dates.
        """
        start = params["start_date"]
        if kind == JobKind.BACKTEST:
            start = min([entry.first for entry in await self.prices.list_symbols()
                         if entry.symbol in params["symbols"]], default=start)
        frame = await self.prices.get_frame(params["symbols"], start, params["end_date"])
        benchmark = await self.prices.get_benchmark(start, params["end_date"], frame.index)
        return frame, benchmark

    async def _run_now(self, work: Work, frame: pd.DataFrame, benchmark: pd.Series | None,
                       params: dict[str, Any], what: str, advice: str) -> dict[str, Any]:
        """``work`` in the pool for a request that waits for it, as a 422 when it fails.

        Args:
            what, advice: the task and what helps, in the message of the time
                limit ("the frontier", "try fewer symbols").

        Raises:
            OptimizationError: the problem has no solution as posed.
            Unprocessable: over ``INDICO_JOB_TIME_LIMIT``, or the worker died.
        """
        limit = self.config.job_time_limit
        try:
            return await self.pool.run_on_frame(work, frame, benchmark, params, timeout=limit)
        except TimeoutError:
            raise error.Unprocessable(
                f"{what} took longer than the limit of {limit:g} s; {advice}") from None
        except (pebble.ProcessExpired, BrokenProcessPool):
            raise error.Unprocessable(WORKER_DIED) from None

    async def frontier(self, params: dict[str, Any]) -> dict[str, Any]:
        """Compute the efficient frontier in the worker pool; nothing is stored.

        Args:
            params: the normalized, validated request (see FrontierRequest.params).

        Returns:
            what :func:`~indico.services.pool.run_frontier` returns.

        Raises:
            UnknownSymbols, Unprocessable: the prices do not allow it.
            OptimizationError: the problem has no solution as posed.
            Unprocessable: over ``INDICO_JOB_TIME_LIMIT``, or the worker died.
        """
        frame, benchmark = await self.load_inputs(params)
        return await self._run_now(self.frontier_work, frame, benchmark, params, "the frontier",
                                   "try fewer symbols, points or a shorter range")

    async def _create(self, owner: str, params: dict[str, Any], kind: JobKind) -> Job:
        """Step 2: write the job, running under this process's lease, and publish it.

        Raises:
            TooManyRequests: the owner's quota of active jobs is full.
        """
        limit = self.config.max_active_jobs
        job = await jobs.create_job(self.db, owner, params, limit, worker=self.worker,
                                    lease=self.config.job_lease, kind=kind)
        if job is None:
            raise error.TooManyRequests(
                f"you have {limit} jobs queued or running; the limit is {limit}: "
                "wait for one to finish", retry_after=5)
        self.events.publish(job)
        return job

    async def optimize(self, owner: str, params: dict[str, Any], wait: bool = True) -> Job:
        """Create, run and wait for one optimization job.

        Args:
            owner: the caller's user id.
            params: the normalized, validated request (see OptimizeRequest.params).
            wait: wait up to ``INDICO_JOB_WAIT`` seconds for the job; False: none.

        Returns:
            the job: finished (status ``done``), or as written while it still
            runs (status ``running``).

        Raises:
            UnknownSymbols, Unprocessable: before a job exists.
            TooManyRequests: the owner's quota of active jobs is full.
            OptimizationError: the problem has no solution; the job was deleted.
            Unprocessable: the job failed otherwise (time limit, worker died,
                cancelled); ``id`` names the failed job, which is kept.
            NotFound: the job was deleted while the request waited.
        """
        frame, benchmark = await self.load_inputs(params)
        # The engine starts with the job's insert, not after it: the pool's
        # round trip and the insert overlap (about 1.4 ms of nx-27017 off each
        # answer). A job refused by the quota, or whose insert failed, leaves
        # its computation to finish unused: stopping a pebble task that runs
        # kills its worker, which costs more than the computation. So that
        # refused requests cannot fill the pool, an owner has at most the
        # quota's number of these in this process; past it, the computation
        # starts after the insert, which the quota guards.
        computing = None
        if self.early[owner] < self.config.max_active_jobs:
            self.early[owner] += 1
            computing = asyncio.ensure_future(self._optimization(frame, benchmark, params))
            self.background.add(computing)
            computing.add_done_callback(functools.partial(self._settle, owner))
        job = await self._create(owner, params, JobKind.OPTIMIZE)
        seconds = self.config.job_wait if wait else 0.0
        if seconds <= 0:
            # Nobody waits, even for a computation that has ended already.
            self.spawn(self.run(job, frame, benchmark, computing=computing))
            return job
        waiter = Waiter()
        task = self.spawn(self.run(job, frame, benchmark, waiter, computing=computing), waiter)
        finished = await waiter.wait(task, seconds)
        if not task.done():
            return job
        if finished is None:
            raise error.NotFound("no such result")
        if finished.status == jobs.FAILED:
            raise error.Unprocessable(finished.error, id=finished.id)
        return finished

    async def backtest(self, owner: str, params: dict[str, Any]) -> Job:
        """Plan a walk-forward backtest, then create it and run it in the background.

        Args:
            owner: the caller's user id.
            params: the normalized, validated request (see BacktestRequest.params).

        Returns:
            the job as written (status ``running``); it ends done or failed later.

        Raises:
            UnknownSymbols, Unprocessable: the prices do not allow it (no job exists).
            OptimizationError: a symbol without enough history before the first
                rebalance, or no rebalance date in the range (no job exists).
            TooManyRequests: the owner's quota of active jobs is full.
        """
        frame, benchmark = await self.load_inputs(params, JobKind.BACKTEST)
        first_dates = {entry.symbol: pd.Timestamp(entry.first)
                       for entry in await self.prices.list_symbols()
                       if entry.symbol in params["symbols"]}
        planned = await self._run_now(run_backtest_plan, frame, benchmark,
                                      {**params, "first_dates": first_dates},
                                      "the backtest's plan", "try a shorter range")
        job = await self._create(owner, params, JobKind.BACKTEST)
        self.spawn(self.run(job, frame, benchmark, plan=planned["plan"]))
        return job

    async def cancel(self, owner: str, job_id: str) -> Job:
        """End ``owner``'s queued or running job ``failed`` with ``cancelled``; publish it.

        Returns:
            the job as cancelled.

        Raises:
            NotFound: no such job of ``owner``'s.
            Conflict: the job has ended already; ``status`` says how.
            ServiceUnavailable: the job kept changing (try again).
        """
        job, cancelled = await jobs.cancel_job(self.db, owner, job_id)
        if job is None:
            raise error.NotFound("no such result")
        if not cancelled:
            raise error.Conflict(
                f"the job has ended ({job.status}); only a queued or running job can be "
                "cancelled", id=job.id, status=job.status)
        self.events.publish(job)
        return job

    def spawn(self, coroutine: Coroutine[Any, Any, Returned],
              waiter: Waiter | None = None) -> "asyncio.Task[Returned]":
        """Run ``coroutine`` in the background, keeping a reference until it ends.

        An exception nobody waits for (``waiter`` gone or None) is logged here.
        """
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(lambda done: self._forget(done, waiter))
        return task

    def _settle(self, owner: str, task: "asyncio.Task[Any]") -> None:
        """Forget an optimization's computation started early; its job's run reads its outcome.

        The exception is retrieved here too, for a computation whose job was
        never written (quota, database down), which nobody reads.
        """
        self.background.discard(task)
        self.early[owner] -= 1
        if self.early[owner] <= 0:
            del self.early[owner]
        if not task.cancelled():
            task.exception()

    def _forget(self, task: "asyncio.Task[Any]", waiter: Waiter | None) -> None:
        self.background.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, whoever else reads it
        if exc is None or (waiter is not None and waiter.waiting):
            return
        if isinstance(exc, PyMongoError):
            log.warning("job task: the database failed (%s); the job is run again once "
                        "its lease expires", describe_database_error(exc))
        else:
            log.error("job task failed", exc_info=exc)

    async def keep_lease(self, job_id: str, ended: asyncio.Event) -> None:
        """Renew this process's lease on ``job_id`` until ``ended`` is set or it is not ours.

        Every third of ``INDICO_JOB_LEASE``; after a failed renewal (the
        database is down or slow), one warning line and another try within
        :data:`RENEW_RETRY` seconds, for as long as the job runs: a lease that
        ran out would let another process take over a job that is still running.

        Args:
            job_id: the job this process runs.
            ended: set when the job has ended (checked after every wait, so
                that a cancellation swallowed by the driver cannot keep this going).
        """
        period = self.config.job_lease / 3
        delay = period
        while not ended.is_set():
            await self.sleep(delay)
            if ended.is_set():
                return
            try:
                if not await jobs.renew_lease(self.db, job_id, self.worker,
                                              self.config.job_lease):
                    return  # taken over, finished, cancelled or deleted meanwhile
                delay = period
            except PyMongoError as exc:
                delay = min(period, RENEW_RETRY)
                log.warning("job %s: lease renewal failed (%s); next try in %g s", job_id,
                            describe_database_error(exc), delay)
            except Exception:  # a bug: keep its traceback, and keep renewing
                delay = min(period, RENEW_RETRY)
                log.exception("job %s: lease renewal failed", job_id)

    async def _optimization(self, frame: pd.DataFrame, benchmark: pd.Series | None,
                            params: dict[str, Any]) -> dict[str, Any]:
        """An optimization's result from the pool, under ``INDICO_JOB_TIME_LIMIT``.

        The time limit goes with the params too, so that a maxAssets search
        stops in time with its best portfolio and the gap rather than being killed.
        """
        limit = self.config.job_time_limit
        return await self.pool.run_on_frame(self.work, frame, benchmark,
                                            {**params, "time_limit": limit}, timeout=limit)

    async def _compute(self, job: Job, frame: pd.DataFrame, benchmark: pd.Series | None,
                       plan: BacktestPlan | None, computing: "asyncio.Future[dict[str, Any]] | None"
                       = None) -> tuple[Job, str, dict[str, Any]]:
        """Run ``job`` in the pool: ``(job as last written, status, fields)`` to record.

        Args:
            computing: an optimization's computation, started already (by the
                request, while it wrote the job); None: start it here.

        Raises:
            OptimizationError: the problem has no solution as posed.
            JobLost: the job is no longer this process's.
        """
        limit = self.config.job_time_limit
        try:
            if job.kind == JobKind.BACKTEST:
                job, result = await self._backtest(job, frame, benchmark, plan)
            else:
                result = await (computing or self._optimization(frame, benchmark, job.params))
            return job, jobs.DONE, {"result": result}
        except (error.OptimizationError, JobLost):
            raise
        except TimeoutError:
            what = ("a chunk of the backtest" if job.kind == JobKind.BACKTEST
                    else "the optimization")
            return job, jobs.FAILED, {"error": (
                f"{what} took longer than the limit of {limit:g} s;"
                " try fewer symbols, a shorter range or a simpler objective")}
        except (pebble.ProcessExpired, BrokenProcessPool):
            return job, jobs.FAILED, {"error": WORKER_DIED}
        except Exception:  # the job must end failed, whatever went wrong
            log.exception("job %s failed unexpectedly", job.id)
            return job, jobs.FAILED, {"error": INTERNAL_ERROR}

    async def _backtest(self, job: Job, frame: pd.DataFrame, benchmark: pd.Series | None,
                        plan: BacktestPlan | None) -> tuple[Job, dict[str, Any]]:
        """Step 3 of a backtest: plan, the rebalances in chunks with progress, the simulation.

        Returns:
            ``(job as last written, result)``.

        Raises:
            OptimizationError: a rebalance has no solution as posed.
            JobLost: the job is no longer this process's (checked after each chunk).
            TimeoutError, pebble.ProcessExpired: a task over the time limit, a dead worker.
        """
        limit = self.config.job_time_limit
        if plan is None:  # a job claimed after a crash, or left queued
            plan = (await self.pool.run_on_frame(run_backtest_plan, frame, benchmark,
                                                 job.params, timeout=limit))["plan"]
        weights: list[Any] = [None] * plan.total
        size, start, done = FIRST_CHUNK, 0, 0
        running: set[asyncio.Future] = set()
        first_rebalance: dict[asyncio.Future, int] = {}
        try:
            while done < plan.total:
                while start < plan.total and len(running) < self.pool.workers:
                    ks = list(range(start, min(start + size, plan.total)))
                    start += len(ks)
                    task = asyncio.ensure_future(self._chunk(frame, benchmark, job, plan, ks))
                    first_rebalance[task] = ks[0]
                    running.add(task)
                finished, running = await asyncio.wait(running,
                                                       return_when=asyncio.FIRST_COMPLETED)
                if any(task.exception() for task in finished):
                    # Chunks run side by side: the job's failure is the earliest
                    # rebalance's, whichever chunk ended first.
                    if running:
                        more, running = await asyncio.wait(running)
                        finished |= more
                    earliest = min((task for task in finished if task.exception()),
                                   key=first_rebalance.__getitem__)
                    raise cast(BaseException, earliest.exception())
                for ks, chunk, seconds in [task.result() for task in finished]:
                    for k, chosen in zip(ks, chunk, strict=True):
                        weights[k] = chosen
                    done += len(ks)
                    # Sized so that the next chunk takes about CHUNK_SECONDS.
                    rate = len(ks) / max(seconds, 1e-6)
                    size = max(1, min(MAX_CHUNK, int(CHUNK_SECONDS * rate)))
                written = await jobs.record_progress(self.db, job, self.worker, done,
                                                     plan.total)
                if written is None:
                    raise JobLost(job.id)
                job = written
                self.events.publish(job)
        finally:
            # Tasks in flight end within a chunk's time; cancelling them would
            # kill their workers (pebble), which take seconds to start again.
            if running:
                await asyncio.wait(running)
                for pending in running:
                    pending.exception()  # retrieved: the first failure is the job's
        result = await self.pool.run_on_frame(
            run_backtest_simulate, frame, benchmark,
            {**job.params, "plan": plan, "weights": weights}, timeout=limit)
        return job, result

    async def _chunk(self, frame: pd.DataFrame, benchmark: pd.Series | None, job: Job,
                     plan: BacktestPlan, ks: list[int]) -> tuple[list[int], list, float]:
        """One pool task: ``(ks, their weights, the engine's seconds)``."""
        answer = await self.pool.run_on_frame(self.chunk_work, frame, benchmark,
                                              {**job.params, "plan": plan, "ks": ks},
                                              timeout=self.config.job_time_limit)
        return ks, answer["weights"], answer["seconds"]

    async def run(self, job: Job, frame: pd.DataFrame, benchmark: pd.Series | None,
                  waiter: Waiter | None = None, plan: BacktestPlan | None = None,
                  computing: "asyncio.Future[dict[str, Any]] | None" = None) -> Job | None:
        """Run a job this process holds the lease of, record how it ended, announce it.

        Args:
            job: the stored job, running under this process's lease.
            waiter: the request that created the job, if it may still wait.
            plan: a backtest's plan, when the request made it already.
            computing: an optimization's computation, when the request started it.

        Returns:
            the stored job once finished (or as another process or a
            cancellation left it); None if the job was deleted meanwhile.

        Raises:
            OptimizationError: only while ``waiter`` waits: the job was deleted.
        """
        ended = asyncio.Event()
        renewer = asyncio.ensure_future(self.keep_lease(job.id, ended))
        try:
            job, status, fields = await self._compute(job, frame, benchmark, plan, computing)
        except error.OptimizationError as exc:
            if waiter is not None and waiter.waiting:
                waiter.answering = True
                await jobs.delete_job(self.db, job.owner, job.id)
                raise
            status, fields = jobs.FAILED, {"error": exc.message}
        except JobLost:
            return await self._as_stored(job)
        finally:
            ended.set()
            renewer.cancel()
        return await self.finish(job, status, fields)

    async def finish(self, job: Job, status: str, fields: dict[str, Any]) -> Job | None:
        """Record that ``job`` ended ``status`` with ``fields`` and publish the event.

        Returns:
            the stored job; None if it was deleted meanwhile.
        """
        finished = await jobs.complete_job(self.db, job, self.worker, status, **fields)
        if finished is None:
            return await self._as_stored(job)
        self.events.publish(finished)
        return finished

    async def _as_stored(self, job: Job) -> Job | None:
        """The job that is no longer this process's, as stored (published); None if deleted."""
        stored = await jobs.get_job(self.db, job.owner, job.id)
        if stored is None:
            return None
        if stored.error != jobs.CANCELLED:
            log.warning("job %s was taken over or deleted while it ran", job.id)
        self.events.publish(stored)
        return stored

    async def claim_and_run(self) -> bool:
        """Claim one queued job, or one whose lease expired, and run it; False if none."""
        job = await jobs.claim_job(self.db, self.worker, self.config.job_lease)
        if job is None:
            return False
        self.events.publish(job)
        try:
            frame, benchmark = await self.load_inputs(job.params, job.kind)
        except error.IndicoError as exc:  # its prices are gone, for example
            await self.finish(job, jobs.FAILED, {"error": exc.message})
            return True
        await self.run(job, frame, benchmark)
        return True

    async def stop(self) -> None:
        """Let background jobs finish for a moment, then cancel the rest.

        A job cut short here keeps its lease, and another process claims it
        once the lease expires. The pool is its owner's to shut down
        (:func:`indico.services.open_services`).
        """
        if self.background:
            await asyncio.wait(set(self.background), timeout=STOP_GRACE)
        for task in list(self.background):
            await stop_task(task)


class JobRunner:
    """The loop that claims queued jobs and jobs with expired leases, in every process.

    Args:
        service: the JobService that runs them.
        interval: seconds between looks when there is nothing to do.
        max_backoff: longest wait after database failures (the wait doubles
            from ``interval`` with each failed round).
        sleep: ``await sleep(seconds)``, injectable for tests.
    """

    def __init__(self, service: JobService, interval: float = 1.0, max_backoff: float = 30.0,
                 sleep: Sleep = asyncio.sleep):
        self.service = service
        self.interval = interval
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.task: asyncio.Task | None = None
        self.stopping = asyncio.Event()

    def start(self) -> None:
        """Start the loop in a task of the running event loop."""
        self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        """Claim and run jobs until :meth:`stop`; back off while the database fails."""
        delay = self.interval
        while not self.stopping.is_set():
            try:
                while not self.stopping.is_set() and await self.service.claim_and_run():
                    pass
                delay = self.interval
            except PyMongoError as exc:  # the database is down or slow: one line, then back off
                delay = min(delay * 2, self.max_backoff)
                log.warning("job runner: claim failed (%s); next try in %g s",
                            describe_database_error(exc), delay)
            except Exception:  # a bug: keep its traceback, and keep claiming
                log.exception("job runner: claim failed")
            if not self.stopping.is_set():
                await self.sleep(delay)

    async def stop(self) -> None:
        """Stop the loop; returns once it has ended, even if it swallowed a cancellation.

        A job it was running keeps its lease, and another process claims it
        once the lease expires.
        """
        self.stopping.set()
        await stop_task(self.task)
