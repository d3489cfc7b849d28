"""Timing spans for benchmarks/spans_server.py (benchmark-only; nothing in indico/ imports it).

A module of its own so that the optimization worker processes can unpickle
:func:`timed_call` by name (they import this module, not the server script).
"""

import time


def timed_call(function, *args):
    """Worker side: ``(function(*args), seconds it took)``."""
    began = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - began
