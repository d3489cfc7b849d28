"""Timing helper shared by the benchmark scripts (they run as ``python benchmarks/X.py``)."""

import statistics
import time


def median_seconds(function, repeat, warmup=2):
    """Median wall time of ``function()`` in seconds over ``repeat`` calls.

    ``warmup`` calls come first and are not timed.
    """
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
