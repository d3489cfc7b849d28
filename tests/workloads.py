"""Functions the tests run in the optimization workers (pickled by name, so module-level)."""

import os
import signal
import time

from indico.services.jobs import run_optimization


def stall_on_min_volatility(prices, benchmark, params):
    """The real optimization, except that ``min_volatility`` never finishes
    and ``equal_weight`` kills its worker."""
    if params["objective"] == "min_volatility":
        time.sleep(3600)
    if params["objective"] == "equal_weight":
        os.kill(os.getpid(), signal.SIGKILL)
    return run_optimization(prices, benchmark, params)


def hold_until(started, release):
    """Write this worker's pid to ``started``, wait until ``release`` exists, return the pid."""
    with open(started + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(started + ".tmp", started)
    while not os.path.exists(release):
        time.sleep(0.01)
    return os.getpid()
