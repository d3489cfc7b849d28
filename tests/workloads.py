"""Functions the tests run in the optimization workers (pickled by name, so module-level)."""

import os
import signal
import time

from indico.services.pool import run_backtest_chunk, run_frontier, run_optimization


def stall_on_min_volatility(frame, params):
    """The real optimization, except that ``min_volatility`` never finishes
    and ``equal_weight`` kills its worker."""
    if params["objective"] == "min_volatility":
        time.sleep(3600)
    if params["objective"] == "equal_weight":
        os.kill(os.getpid(), signal.SIGKILL)
    return run_optimization(frame, params)


def optimization_telling_its_time_limit(frame, params):
    """The real optimization, its result with ``time_limit_seen``: the params' time limit."""
    return {**run_optimization(frame, params),
            "time_limit_seen": params.get("time_limit")}


def stall_on_three_points(frame, params):
    """The real frontier, except that 3 points never finish and 4 kill the worker."""
    if params["points"] == 3:
        time.sleep(3600)
    if params["points"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_frontier(frame, params)


def hold_until(started, release):
    """Write this worker's pid to ``started``, wait until ``release`` exists, return the pid."""
    with open(started + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(started + ".tmp", started)
    while not os.path.exists(release):
        time.sleep(0.01)
    return os.getpid()


def chunk_held_by_files(frame, params):
    """A backtest's real chunk, once ``params["hold"]/release`` exists.

    Each call first appends a line to ``hold/chunks`` (how many chunks started)
    and creates ``hold/started``.
    """
    hold = params["hold"]
    with open(os.path.join(hold, "chunks"), "a") as handle:
        handle.write(f"{params['ks']}\n")
    open(os.path.join(hold, "started"), "a").close()
    while not os.path.exists(os.path.join(hold, "release")):
        time.sleep(0.01)
    return run_backtest_chunk(frame, params)


def chunk_stalled_after_the_first(frame, params):
    """A backtest's real chunk for rebalance 0 on; every later chunk never finishes."""
    if params["ks"][0] > 0:
        time.sleep(3600)
    return run_backtest_chunk(frame, params)
