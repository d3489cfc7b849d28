"""The optimization worker processes: the pool that manages them, and all that runs in them.

Two sides, one module, because every function a worker runs travels to it
pickled by name (a module-level function of this module) and both sides of
its caches must agree on what a token means:

* The server's side. :class:`WorkerPool` (built by :func:`create_pool`) is a
  pebble process pool started in the forkserver context: each task has its
  own time limit, and a task over it has only its own worker killed and
  replaced; a pipe whose write end only the server holds (:func:`start_worker`)
  makes the workers exit when the server dies, however it dies.
  :class:`FrameTokens` gives each price frame sent a token, by value, so
  that :meth:`WorkerPool.run_on_frame` sends a frame to the workers once and
  its token afterwards.
* The workers' side. :func:`run_on_frame` is the entry point of every task:
  it finds the frame under its token in this process's cache (or keeps the
  one that came with the task) as a :class:`WorkerFrame`, whose moments are
  made once, and calls the work function on it. The work functions
  (:data:`Work`: ``work(frame, params) -> dict``) are :func:`run_optimization`,
  :func:`run_frontier` and a backtest's :func:`run_backtest_plan`,
  :func:`run_backtest_chunk` and :func:`run_backtest_simulate`; tests give
  others of the same shape (``tests/workloads.py``).

Nothing here knows of jobs, the database or events: that is the job
lifecycle's, in :mod:`indico.services.jobs`, whose :class:`~indico.services.jobs.JobService`
turns what the pool raises (TimeoutError, ``pebble.ProcessExpired``,
``BrokenProcessPool``, the engine's OptimizationError) into a job's end.
:func:`indico.services.open_services` builds one pool of ``INDICO_WORKERS``
processes for the server's life, hands it to the services, and shuts it down
after them.
"""

import asyncio
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

import cachetools
import numpy as np
import pandas as pd
import pebble

from indico.optimization import ENGINE_OPTIONS, configure_worker, efficient_frontier, optimize
from indico.optimization.backtest import plan_backtest, rebalance_weights, simulate
from indico.optimization.data import MarketData, prepare_prices

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class WorkerFrame:
    """A price frame in a worker process, as every work function gets it (:func:`run_on_frame`).

    Frozen, and its frame is never written: the moments that :attr:`market`
    keeps are those of these prices (``MarketData.prices`` may be a view of them).

    Attributes:
        prices: the aligned frame, dates x symbols.
        benchmark: the index levels on the same dates, or None.
    """

    prices: pd.DataFrame
    benchmark: pd.Series | None

    @functools.cached_property
    def market(self) -> MarketData:
        """The prices validated, with their sample moments; made once, by the first work asking.

        A worker keeps its frames (:func:`run_on_frame`), so every later
        optimization or frontier of the same prices skips the validation and
        the moments (``prepare_prices``: about 0.2 ms of 20 symbols x 5 years,
        on the critical path of each answer). Its arrays are read-only.

        Raises:
            OptimizationError: prices that cannot be optimized (to each work asking:
                a failure is not kept).
        """
        return prepare_prices(self.prices)


Work = Callable[[WorkerFrame, dict], dict]


def engine_options(params: dict) -> dict:
    """The keyword arguments of :func:`indico.optimization.optimize` that a job's params give.

    Everything but ``initial_investment`` and ``benchmark``: what an optimization
    and each rebalance of a backtest solve.
    """
    return {
        "objective": params["objective"], "risk_free_rate": params["risk_free_rate"],
        "weight_bounds": tuple(params["weight_bounds"]),
        "target_return": params["target_return"],
        "target_volatility": params["target_volatility"],
        # Jobs stored before these options existed have none: the engine's defaults.
        **{key: params[key] for key in ENGINE_OPTIONS if key in params},
    }


def run_optimization(frame: WorkerFrame, params: dict) -> dict:
    """Worker-process entry point: optimize and return the JSON-ready result.

    Args:
        frame: the aligned prices (their moments made once a frame) and the
            index levels on the same dates, or None.
        params: the job's stored parameters, and ``time_limit`` (seconds, or absent
            for none), which a ``max_assets`` search stays within.

    Returns:
        ``OptimizationResult.to_dict()``.

    Raises:
        OptimizationError: the problem has no solution as posed.
    """
    return optimize(frame.market, initial_investment=params["initial_investment"],
                    benchmark=frame.benchmark, time_limit=params.get("time_limit"),
                    **engine_options(params)).to_dict()


def run_backtest_plan(frame: WorkerFrame, params: dict) -> dict:
    """Worker-process entry point: the walk-forward plan of a backtest.

    Args:
        frame: its prices, the aligned frame from the symbols' earliest stored
            date to ``end_date`` (the benchmark is unused).
        params: the job's params, and ``first_dates`` ({symbol: its first stored
            date}, or None) to name the symbols that lack history.

    Returns:
        ``{"plan": BacktestPlan}``.

    Raises:
        OptimizationError: a symbol without ``lookback_days`` trading days before
            the first rebalance (named), or no rebalance date in the range.
    """
    return {"plan": plan_backtest(
        frame.prices, start_date=params["start_date"], end_date=params["end_date"],
        lookback_days=params["lookback_days"], rebalance=params["rebalance"],
        first_dates=params.get("first_dates"))}


def run_backtest_chunk(frame: WorkerFrame, params: dict) -> dict:
    """Worker-process entry point: the weights of some rebalances of a backtest.

    Args:
        frame: the prices the plan was made on (the benchmark is unused).
        params: the job's params, ``plan`` and ``ks`` (the rebalances' numbers).

    Returns:
        ``{"weights": [array of shape (n,) per k], "seconds": the engine's time}``.

    Raises:
        OptimizationError: a rebalance's window has no solution as posed.
    """
    started = time.perf_counter()
    weights = rebalance_weights(frame.prices, params["plan"], params["ks"], engine_options(params))
    return {"weights": weights, "seconds": time.perf_counter() - started}


def run_backtest_simulate(frame: WorkerFrame, params: dict) -> dict:
    """Worker-process entry point: a backtest's result from the weights of every rebalance.

    Args:
        frame: the prices the plan was made on, and the index levels on the
            same dates, or None.
        params: the job's params, ``plan`` and ``weights`` (one array per rebalance).

    Returns:
        what :func:`indico.optimization.backtest.simulate` returns.
    """
    return simulate(frame.prices, frame.benchmark, params["plan"], params["weights"],
                    cost_bps=params["cost_bps"],
                    initial_investment=params["initial_investment"],
                    risk_free_rate=params["risk_free_rate"])


#: Keyword options of :func:`efficient_frontier` that ``portfolio/frontier`` passes.
FRONTIER_OPTIONS = ("points", "risk_free_rate", "returns_model", "returns_span",
                    "risk_model", "risk_span", "groups")


def run_frontier(frame: WorkerFrame, params: dict) -> dict:
    """Worker-process entry point of ``portfolio/frontier``: the efficient frontier.

    Args:
        frame: the aligned prices, their moments made once a frame (the
            benchmark is unused: the frontier has no performance series).
        params: the normalized request (see FrontierRequest.params).

    Returns:
        what :func:`indico.optimization.efficient_frontier` returns.

    Raises:
        OptimizationError: the problem has no solution as posed.
    """
    return efficient_frontier(frame.market, weight_bounds=tuple(params["weight_bounds"]),
                              **{key: params[key] for key in FRONTIER_OPTIONS})


#: Price cells (dates x symbols) each worker process keeps in its frame cache,
#: 8 bytes each (16 MB), and about as much again for the daily returns of the
#: frames an optimization asked the moments of (WorkerFrame.market); the server
#: keeps as many for the frames it has sent.
WORKER_FRAME_CELLS = 2_000_000


class FrameMissing(Exception):
    """Raised in a worker asked to use a frame it does not hold: send it the frame."""


def _frame_cells(entry: tuple) -> int:
    return max(entry[0].size, 1)


def _worker_frame_cells(frame: WorkerFrame) -> int:
    return max(frame.prices.size, 1)


# This process's frames when it is a worker, by the token the server gave each.
_worker_frames: cachetools.LRUCache = cachetools.LRUCache(WORKER_FRAME_CELLS,
                                                          getsizeof=_worker_frame_cells)


def run_on_frame(work: Work, token: int, params: dict, prices: pd.DataFrame | None = None,
                 benchmark: pd.Series | None = None) -> dict:
    """Worker-process entry point: ``work`` on the frame known by ``token``.

    With ``prices``, the frame (and ``benchmark``) travelled with the task and
    is kept under ``token`` for the next tasks, with the moments the first
    optimization on it makes (:class:`WorkerFrame`); without, it must be here
    already.

    Raises:
        FrameMissing: no frame under ``token`` in this worker (it started after
            the frame was sent to another, or forgot it).
        whatever ``work`` raises.
    """
    if prices is None:
        try:
            frame = _worker_frames[token]
        except KeyError:
            raise FrameMissing(token) from None
    else:
        frame = WorkerFrame(prices, benchmark)
        try:
            _worker_frames[token] = frame
        except ValueError:
            pass  # larger than the whole cache: used once, not kept
    return work(frame, params)


def _same_buffer(one: np.ndarray, other: np.ndarray) -> bool:
    """True when both are read-only views of the same memory, laid out alike.

    The catalog's cached frames and series are handed out as shallow copies,
    whose values are such views; under pandas' copy-on-write (always on since
    pandas 3) no pandas operation writes a buffer that two objects share, so
    views of one buffer hold the same prices without a look at each.
    """
    return (not one.flags.writeable and not other.flags.writeable
            and one.shape == other.shape and one.dtype == other.dtype
            and one.strides == other.strides
            and one.__array_interface__["data"][0] == other.__array_interface__["data"][0])


def _same_frame(one: pd.Series | pd.DataFrame | None, other: pd.Series | pd.DataFrame | None,
                compare: Callable[[np.ndarray, np.ndarray], bool] | None = None) -> bool:
    """True when both hold the same dates, columns and prices (NaN equal to NaN).

    Prices in one read-only buffer are equal (:func:`_same_buffer`); others
    are left to ``compare``, or taken as different without it.
    """
    if one is None or other is None:
        return one is other
    if isinstance(one, pd.DataFrame) != isinstance(other, pd.DataFrame):
        return False
    if isinstance(one, pd.DataFrame) and not one.columns.equals(cast(pd.DataFrame, other).columns):
        return False
    if one.shape != other.shape or not one.index.equals(other.index):
        return False
    values, others = one.to_numpy(), other.to_numpy()
    return _same_buffer(values, others) or (compare is not None and compare(values, others))


class FrameTokens:
    """The server's side of the workers' frame caches: a token for each frame sent.

    A frame is recognised by value (dates, symbols and every price, and the
    benchmark), never by the object or by the request that asked for it, so a
    price import that changes a frame gives it a new token, and a stale frame
    can never be served. Comparing every price is about 160 µs for 20 symbols
    x 5 years; the frames the price catalog serves from its cache share one
    read-only buffer, which proves them equal in a few microseconds
    (:func:`_same_buffer`).
    """

    def __init__(self, cells: int = WORKER_FRAME_CELLS) -> None:
        self._counter = itertools.count(1)
        self._tokens: cachetools.LRUCache = cachetools.LRUCache(cells, getsizeof=_frame_cells)

    @staticmethod
    def _fingerprint(frame: pd.DataFrame) -> tuple:
        dates = frame.index.to_numpy()
        ends = (dates[0], dates[-1]) if len(dates) else (None, None)
        return (tuple(frame.columns), len(dates), *ends)

    @staticmethod
    def _compare_prices(one: np.ndarray, other: np.ndarray) -> bool:
        """Compare two price arrays price by price (the slow way, ~160 µs for 20 x 5 years)."""
        return np.array_equal(one, other, equal_nan=True)

    def token(self, frame: pd.DataFrame, benchmark: pd.Series | None) -> tuple[int, bool]:
        """``(token, known)``: the frame's token; ``known`` when it was sent before.

        A frame equal to the one kept, in other memory (two requests built the
        catalog's frame at once, and the catalog kept the other), takes its
        place under the same token: the next copies of it match by their buffer.
        """
        fingerprint = self._fingerprint(frame)
        entry = self._tokens.get(fingerprint)
        if entry is not None:
            kept_frame, kept_benchmark, token = entry
            if _same_frame(kept_frame, frame) and _same_frame(kept_benchmark, benchmark):
                return token, True
            compare = self._compare_prices
            if _same_frame(kept_frame, frame, compare) and _same_frame(kept_benchmark, benchmark,
                                                                       compare):
                self._keep(fingerprint, frame, benchmark, token)
                return token, True
        token = next(self._counter)
        self._keep(fingerprint, frame, benchmark, token)
        return token, False

    def _keep(self, fingerprint: tuple, frame: pd.DataFrame, benchmark: pd.Series | None,
              token: int) -> None:
        # Shallow copies: under copy-on-write, a change the caller makes to its
        # frame afterwards is written to a buffer of its own, never to the one kept.
        try:
            self._tokens[fingerprint] = (frame.copy(deep=False), None if benchmark is None
                                         else benchmark.copy(deep=False), token)
        except ValueError:
            pass  # larger than the whole cache: it travels with every task


def _exit_with_the_server(lifeline: Connection) -> None:
    """Worker thread: end this worker process as soon as the server is gone.

    A pool worker blocks reading its task channel, whose write end it holds
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


def start_worker(lifeline: Connection) -> None:
    """Pool initializer: watch ``lifeline`` in a daemon thread, then configure the worker.

    Args:
        lifeline: the read end of a pipe whose only writer is the server.
    """
    threading.Thread(target=_exit_with_the_server, args=(lifeline,), daemon=True,
                     name="indico-lifeline").start()
    configure_worker()


class WorkerPool:
    """The optimization worker processes: per-task time limits, and no orphans.

    A ``pebble.ProcessPool`` runs each task with its own timeout: a task over
    it has its worker killed and replaced, and its caller gets TimeoutError;
    the tasks of the other workers go on. Its workers start in the
    forkserver context, not by fork: the server has threads (the driver's,
    the hashing pool's, pebble's own), and forking a threaded process can
    deadlock the child.

    The server keeps the write end of a pipe (never written to) for as long as
    this object lives; each worker watches the read end (see
    :func:`start_worker`). A SIGKILL of the server closes the write end, so the
    workers exit, then the forkserver (at EOF of its alive pipe) and the
    resource tracker (at EOF of its pipe): nothing is left behind.

    Args:
        workers: how many worker processes.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.context = multiprocessing.get_context("forkserver")
        # The write end stays in this process only: pipe fds are not inherited,
        # and multiprocessing passes a child only the fds it pickles (the read end).
        self.lifeline, self._lifeline_writer = self.context.Pipe(duplex=False)
        self.closed = False
        self.frames = FrameTokens()
        self.pool = self._new_pool()

    def _new_pool(self) -> pebble.ProcessPool:
        return pebble.ProcessPool(max_workers=self.workers, initializer=start_worker,
                                  initargs=(self.lifeline,), context=self.context)

    def start(self) -> None:
        """Start the workers now rather than with the first task.

        pebble starts every worker when the first task is scheduled, and a
        worker takes seconds to import the engine; a trivial task starts them.
        """
        self.pool.schedule(os.getpid)

    async def run(self, function: Callable[..., Any], *args: Any,
                  timeout: float | None = None) -> Any:
        """Run ``function(*args)`` in a worker process and return its result.

        Args:
            function: a module-level function (it is pickled by name).
            timeout: seconds the task may run once a worker has started it.

        Returns:
            what ``function`` returned.

        Raises:
            TimeoutError: the task ran longer than ``timeout``; its worker was
                killed and is replaced.
            pebble.ProcessExpired: the worker died while running the task.
            RuntimeError: the pool was shut down.
            the exception ``function`` raised, if any.
        """
        if self.closed:
            raise RuntimeError("the worker pool is shut down")
        if not self.pool.active:
            # pebble gives up on a pool whose worker died while nothing ran
            # (it raises BrokenProcessPool in its manager thread): start anew.
            log.warning("the worker pool broke; starting a new one")
            self._retire(self.pool)
            self.pool = self._new_pool()
        future = self.pool.schedule(function, args=args, timeout=timeout)
        # Cancelling the awaiting task cancels the future, and pebble then
        # stops the worker that runs it.
        return await asyncio.wrap_future(future)

    async def run_on_frame(self, work: Work, prices: pd.DataFrame, benchmark: pd.Series | None,
                           params: dict, timeout: float | None = None) -> dict:
        """``work(frame, params)`` in a worker, sending the frame only if needed.

        A frame sent before travels as its token only (each worker keeps the
        frames it got, :func:`run_on_frame`); a worker that does not hold it
        answers :class:`FrameMissing` at once, and the task is sent again with
        the frame. Pickling a 20 x 1,259 frame and piping it to a worker cost
        the server about as much CPU as the engine's own work (docs/PERFORMANCE.md).

        Raises:
            what :meth:`run` raises.
        """
        token, known = self.frames.token(prices, benchmark)
        if known:
            try:
                return await self.run(run_on_frame, work, token, params, timeout=timeout)
            except FrameMissing:
                pass
        return await self.run(run_on_frame, work, token, params, prices, benchmark,
                              timeout=timeout)

    @staticmethod
    def _retire(pool: pebble.ProcessPool) -> None:
        """Stop ``pool`` and reap its workers in a thread (``join`` blocks)."""
        pool.stop()
        threading.Thread(target=pool.join, daemon=True, name="indico-pool-join").start()

    def shutdown(self, wait: bool = True, cancel_futures: bool = True) -> None:
        """Stop the workers, abandoning queued and running tasks.

        Args:
            wait: block until the workers have exited; otherwise a thread reaps them.
            cancel_futures: accepted for ``concurrent.futures.Executor``
                compatibility; pending tasks are always abandoned.
        """
        self.closed = True
        if wait:
            self.pool.stop()
            self.pool.join()
        else:
            self._retire(self.pool)


def create_pool(workers: int) -> WorkerPool:
    """The process pool of the optimization workers (a :class:`WorkerPool`)."""
    return WorkerPool(workers)
