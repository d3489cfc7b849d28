"""Portfolio jobs: validate, record, run in a process pool, keep the results.

Every optimization is a job document written before any work starts. The
process that accepts a synchronous request writes it already running under its
own lease and runs it at once; a job it cannot finish (the process died, or
the request asked not to wait and nobody took it yet) is claimed by the
:class:`JobRunner` of any process sharing the database once its lease expires,
so an accepted job always ends done or failed.

The optimization itself runs in a ``ProcessPoolExecutor`` (never on the
IOLoop); this module only moves data to it and records what comes back.
"""

import asyncio
import base64
import concurrent.futures
import datetime
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid

from pymongo.errors import PyMongoError

from indico import error
from indico.db import jobs
from indico.optimization import Objective, configure_worker, optimize
from indico.utils.logs import describe_database_error

log = logging.getLogger(__name__)


def run_optimization(prices, benchmark, params):
    """Process-pool entry point: optimize and return the JSON-ready result."""
    return optimize(
        prices, params["objective"], risk_free_rate=params["risk_free_rate"],
        weight_bounds=tuple(params["weight_bounds"]), target_return=params["target_return"],
        target_volatility=params["target_volatility"],
        initial_investment=params["initial_investment"], benchmark=benchmark,
    ).to_dict()


def _exit_with_the_server(lifeline) -> None:
    """Worker thread: end this worker process as soon as the server is gone.

    A pool worker blocks reading its call queue, whose write end it holds
    itself, so it never sees the server die; and it holds the forkserver's
    alive pipe and the resource tracker's pipe, which keeps those two running
    too (CPython 3.11 ``multiprocessing/forkserver.py``, ``resource_tracker.py``).
    Only the server holds the write end of ``lifeline``: when the server exits,
    however it exits, the read here ends with EOF.
    """
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(0)  # pragma: no cover - the process ends here, before coverage can save


def start_worker(lifeline) -> None:
    """Pool initializer: watch ``lifeline`` in a daemon thread, then configure the worker.

    Args:
        lifeline: the read end of a pipe whose only writer is the server.
    """
    threading.Thread(target=_exit_with_the_server, args=(lifeline,), daemon=True,
                     name="indico-lifeline").start()
    configure_worker()


class WorkerPool(concurrent.futures.ProcessPoolExecutor):
    """A process pool whose workers exit when the server process is gone.

    The server keeps the write end of a pipe (never written to) for as long as
    this object lives; each worker watches the read end (see
    :func:`start_worker`). A SIGKILL of the server closes the write end, so the
    workers exit, then the forkserver (at EOF of its alive pipe) and the resource
    tracker (at EOF of its pipe): nothing is left behind.
    """

    def __init__(self, workers: int):
        context = multiprocessing.get_context("forkserver")
        # The write end stays in this process only: pipe fds are not inherited,
        # and multiprocessing passes a child only the fds it pickles (the read end).
        self.lifeline, self._lifeline_writer = context.Pipe(duplex=False)
        super().__init__(max_workers=workers, initializer=start_worker,
                         initargs=(self.lifeline,), mp_context=context)


def create_pool(workers):
    """The process pool of the optimization workers (a :class:`WorkerPool`)."""
    # forkserver, not fork: the server has threads (the driver's, the hashing
    # pool's), and forking a threaded process can deadlock the child.
    return WorkerPool(workers)


def encode_cursor(job):
    """An opaque cursor pointing after ``job`` in the newest-first order."""
    raw = json.dumps([job["created"].isoformat(), job["_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor):
    """Return ``(created, id)`` from a cursor, or raise ValidationError."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        return datetime.datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise error.ValidationError("cursor: not a cursor from portfolio/list",
                                    field="cursor") from exc


class PortfolioService:
    """Optimization requests and saved results.

    Args:
        db: the database handle.
        config: the Config (limits, pool size, waits, leases).
        prices: the PriceService that loads aligned price frames.
        events: the JobEvents hub that tells WebSocket clients.
        pool: the process pool; one of ``config.workers`` processes if None.
    """

    def __init__(self, db, config, prices, events, pool=None):
        self.db = db
        self.config = config
        self.prices = prices
        self.events = events
        self.pool = pool or create_pool(config.workers)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.background = set()

    # -- requests ---------------------------------------------------------

    def check_params(self, params):
        """Refuse what can be refused without prices (400/422), before any job exists."""
        symbols = params["symbols"]
        if len(symbols) > self.config.max_symbols:
            raise error.ValidationError(
                f"symbols: at most {self.config.max_symbols} symbols per request "
                f"(got {len(symbols)})", field="symbols")
        duplicates = sorted({s for s in symbols if symbols.count(s) > 1})
        if duplicates:
            raise error.ValidationError(f"symbols: listed more than once: {', '.join(duplicates)}",
                                        field="symbols")
        start, end = params["start_date"], params["end_date"]
        if start >= end:
            raise error.ValidationError(f"startDate ({start}) must be before endDate ({end})",
                                        field="startDate")
        span = (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days
        if span > 366 * self.config.max_range_years:
            raise error.ValidationError(
                f"endDate: the range may span at most {self.config.max_range_years} years",
                field="endDate")
        objective = params["objective"]
        for needed, field in ((Objective.EFFICIENT_RETURN.value, "target_return"),
                              (Objective.EFFICIENT_RISK.value, "target_volatility")):
            if objective == needed and params[field] is None:
                camel = "targetReturn" if field == "target_return" else "targetVolatility"
                raise error.ValidationError(f"{camel}: required by objective {objective}",
                                            field=camel)

    async def load_inputs(self, params):
        """The aligned price frame and the benchmark series for ``params``."""
        frame = await self.prices.get_frame(params["symbols"], params["start_date"],
                                            params["end_date"])
        benchmark = await self.prices.get_benchmark(params["start_date"], params["end_date"],
                                                    frame.index)
        return frame, benchmark

    async def optimize(self, owner, params, wait=True):
        """Validate, record and run one optimization.

        Returns:
            ``(status_code, job)``: 200 and the finished job, or 202 and the job
            still queued or running.

        Raises:
            ValidationError, UnknownSymbols, OptimizationError, TooManyRequests:
                nothing is stored then.
        """
        self.check_params(params)
        frame, benchmark = await self.load_inputs(params)
        limit = self.config.max_active_jobs
        if not wait:
            job = await jobs.create_job(self.db, owner, params, limit)
        else:
            job = await jobs.create_job(self.db, owner, params, limit, worker=self.worker,
                                        lease=self.config.job_lease)
        if job is None:
            raise error.TooManyRequests(
                f"you have {limit} jobs queued or running; the limit is {limit}: "
                "wait for one to finish", retry_after=5)
        if not wait:
            self.events.publish(job, job["events"][-1])
            self.spawn(self.claim_and_run())
            return 202, job
        self.events.publish(job, job["events"][0])
        self.events.publish(job, job["events"][1])
        task = asyncio.ensure_future(self.execute(job, frame, benchmark, discard_invalid=True))
        done, _ = await asyncio.wait({task}, timeout=self.config.job_wait)
        if not done:
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            return 202, job
        finished = task.result()
        if finished["status"] == jobs.FAILED:
            raise error.Unprocessable(finished["error"], id=finished["_id"])
        return 200, finished

    async def get_result(self, owner, job_id):
        job = await jobs.get_job(self.db, owner, job_id)
        if job is None:
            raise error.NotFound("no such result")
        return job

    async def list_results(self, owner, limit, cursor=None):
        """A page of ``owner``'s jobs, newest first, and the cursor of the next page."""
        limit = min(limit, self.config.list_limit_max)
        after = decode_cursor(cursor) if cursor else None
        page = await jobs.list_jobs(self.db, owner, limit + 1, after)
        next_cursor = encode_cursor(page[limit - 1]) if len(page) > limit else None
        return page[:limit], next_cursor

    async def delete_result(self, owner, job_id):
        if not await jobs.delete_job(self.db, owner, job_id):
            raise error.NotFound("no such result")

    async def stop(self, shutdown_pool=True):
        """Wait briefly for background jobs, then let go of the pool.

        A job cut short here keeps its lease, and another process claims it
        once the lease expires.
        """
        if self.background:
            await asyncio.wait(set(self.background), timeout=2.0)
        if shutdown_pool:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # -- running ----------------------------------------------------------

    def spawn(self, coroutine):
        """Run ``coroutine`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def _renew(self, job):
        while True:
            await asyncio.sleep(self.config.job_lease / 3)
            if not await jobs.renew_lease(self.db, job["_id"], self.worker, self.config.job_lease):
                return

    def _restart_pool(self):
        """Replace the pool, killing its processes: a timed-out task cannot be cancelled."""
        old, self.pool = self.pool, create_pool(self.config.workers)
        for process in list(getattr(old, "_processes", {}).values()):
            process.kill()
        old.shutdown(wait=False, cancel_futures=True)

    async def execute(self, job, frame, benchmark, discard_invalid=False):
        """Run ``job`` in the pool and record how it ended.

        Args:
            discard_invalid: delete the job instead of keeping it failed when
                the inputs cannot be optimized (a synchronous request answers
                422 then, and leaves no job behind).

        Returns:
            the finished job document.
        """
        renewer = asyncio.ensure_future(self._renew(job))
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self.pool, run_optimization, frame, benchmark,
                                          job["params"])
            result = await asyncio.wait_for(future, self.config.job_time_limit)
            status, fields = jobs.DONE, {"result": result}
        except error.OptimizationError as exc:
            if discard_invalid:
                await jobs.delete_job(self.db, job["owner"], job["_id"])
                raise
            status, fields = jobs.FAILED, {"error": exc.message}
        except TimeoutError:
            self._restart_pool()
            status, fields = jobs.FAILED, {"error": (
                f"the optimization took longer than the limit of {self.config.job_time_limit:g} s;"
                " try fewer symbols, a shorter range or a simpler objective")}
        except concurrent.futures.process.BrokenProcessPool:
            self._restart_pool()
            status, fields = jobs.FAILED, {"error": "the worker process died; try again"}
        except Exception:  # the job must end failed, whatever went wrong
            log.exception("job %s failed unexpectedly", job["_id"])
            status, fields = jobs.FAILED, {"error": "internal error while optimizing"}
        finally:
            renewer.cancel()
        event = jobs.new_event(status)
        finished = await jobs.complete_job(self.db, job, self.worker, status, event, **fields)
        if finished is None:
            log.warning("job %s was taken over or deleted while it ran", job["_id"])
            return {**job, "status": status, **fields}
        self.events.publish(finished, event)
        return finished

    async def claim_and_run(self):
        """Claim one waiting job (or one whose worker died) and run it; False if none."""
        job = await jobs.claim_job(self.db, self.worker, self.config.job_lease)
        if job is None:
            return False
        self.events.publish(job, job["events"][-1])
        try:
            frame, benchmark = await self.load_inputs(job["params"])
        except error.IndicoError as exc:
            event = jobs.new_event(jobs.FAILED)
            finished = await jobs.complete_job(self.db, job, self.worker, jobs.FAILED, event,
                                               error=exc.message)
            if finished:
                self.events.publish(finished, event)
            return True
        await self.execute(job, frame, benchmark)
        return True


class JobRunner:
    """The loop that claims queued jobs and jobs with expired leases, in every process.

    Args:
        service: the PortfolioService that runs them.
        interval: seconds between looks when there is nothing to do.
        max_backoff: longest wait after database failures (the wait doubles
            from ``interval`` with each failed round).
        sleep: ``await sleep(seconds)``, injectable for tests.
    """

    def __init__(self, service, interval=1.0, max_backoff=30.0, sleep=asyncio.sleep):
        self.service = service
        self.interval = interval
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.task = None

    def start(self):
        self.task = asyncio.ensure_future(self.run())

    async def run(self):
        delay = self.interval
        while True:
            try:
                while await self.service.claim_and_run():
                    pass
                delay = self.interval
            except PyMongoError as exc:  # the database is down or slow: one line, then back off
                delay = min(delay * 2, self.max_backoff)
                log.warning("job runner: claim failed (%s); next try in %g s",
                            describe_database_error(exc), delay)
            except Exception:  # a bug: keep its traceback, and keep claiming
                log.exception("job runner: claim failed")
            await self.sleep(delay)

    async def stop(self):
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def job_summary(job):
    """What an event and a list entry say of a finished job."""
    result = job.get("result") or {}
    return {"objective": result.get("objective"), "allocations": result.get("allocations"),
            "stats": result.get("stats")}


# How far behind this machine's clock another machine's may be without its job
# events being missed: ``updated`` and an event's ``at`` are stamped with the
# writer's clock, and each poll looks this much further back than the last one
# (events have ids, so none is sent twice). Kept below the 60 s memory of sent
# ids less the poll interval, or an event could be sent again.
EVENT_CLOCK_SKEW = 10.0


class JobEvents:
    """Tells subscribers (WebSocket connections) about their jobs' transitions.

    Events of jobs run in this process are pushed at once; those of jobs run
    by other processes are found by polling the jobs changed since the last
    look, only while somebody listens. Each event has an id, so none is sent
    twice.

    Args:
        db: the database handle.
        interval: seconds between polls while there are subscribers.
    """

    def __init__(self, db, interval=0.25):
        self.db = db
        self.interval = interval
        self.subscribers = {}
        self.sent = {}
        self.task = None

    def subscribe(self, owner, callback):
        """Call ``callback(message)`` for each event of ``owner``'s jobs until unsubscribed."""
        self.subscribers.setdefault(owner, set()).add(callback)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._poll(time.time()))

    def unsubscribe(self, owner, callback):
        callbacks = self.subscribers.get(owner, set())
        callbacks.discard(callback)
        if not callbacks:
            self.subscribers.pop(owner, None)

    def publish(self, job, event):
        """Send ``event`` of ``job`` to the owner's subscribers, once."""
        if event["id"] in self.sent:
            return
        self.sent[event["id"]] = event["at"]
        message = {"event": event["event"], "id": job["_id"], "at": event["at"]}
        if event["event"] == jobs.DONE:
            message["summary"] = job_summary(job)
        elif event["event"] == jobs.FAILED:
            message["error"] = job.get("error")
        for callback in list(self.subscribers.get(job["owner"], ())):
            callback(message)

    async def _poll(self, since):
        failures = 0
        while self.subscribers:
            # After failures, wait longer (doubling, at most 32 intervals) between polls.
            await asyncio.sleep(self.interval * 2 ** min(failures, 5))
            moment = time.time()
            try:
                changed = await jobs.list_changed_jobs(self.db, self.subscribers,
                                                       since - EVENT_CLOCK_SKEW)
            except PyMongoError as exc:  # the database is down or slow: one line, no traceback
                failures += 1
                log.warning("job events: poll failed (%s); next try in %g s",
                            describe_database_error(exc), self.interval * 2 ** min(failures, 5))
                continue
            except Exception:  # a bug: keep its traceback; the next poll tries again
                log.exception("job events: poll failed")
                continue
            failures = 0
            window = since - EVENT_CLOCK_SKEW
            for job in sorted(changed, key=lambda item: item["updated"]):
                for event in job.get("events", []):
                    # Older events were sent before, or happened before anyone listened.
                    if event["at"] >= window:
                        self.publish(job, event)
            since = moment
            self.sent = {key: at for key, at in self.sent.items() if at > moment - 60}

    async def stop(self):
        self.subscribers.clear()
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
