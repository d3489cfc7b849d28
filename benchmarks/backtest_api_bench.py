"""Walk-forward backtests through the API (issue 14): request to ``done``, loopback only.

Run from the repository root with the project's environment::

    .venv/bin/python benchmarks/backtest_api_bench.py [--repeat 5]

It starts one indico server as ``make run`` does (``python -m indico.server``,
the embedded nx-27017 database, the sample prices loaded, ``INDICO_WORKERS``
and every other setting at its default, the access log at INFO) in a temporary
INDICO_DATA_DIR, signs up, listens on ``/ws/jobs``, and times each
``portfolio/backtest`` from the moment its request is sent to the moment its
``done`` event arrives on the WebSocket (202, plan, chunks of rebalances in the
worker pool with a progress write and event after each, simulation,
completion write, event), median of ``--repeat`` runs after one warm-up run
(which sends the price frame to the workers):

* 20 symbols (every sample symbol) x 20 years (2003-01-02 to 2022-12-28),
  monthly, ``max_sharpe``, ``lookbackDays`` 252, 10 bps: 240 rebalances;
  target <= 1 s;
* linear growth, on the days benchmarks/backtest_bench.py measures the engine
  alone: 60, 120, 240 and 480 rebalances over the same 7,680 trading days (from
  the sample's 253rd, every 128, 64, 32 and 16 trading days); the least-squares
  line ``fixed + per rebalance x n`` through the four medians, and the largest
  distance of a median from it (the growth is linear when that is small).

The engine's own time, its growth without the API, skfolio's ``WalkForward``
and the agreement with PyPortfolioOpt and pandas are benchmarks/backtest_bench.py's.
"""

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api_bench import call, free_port, print_results, wait_for  # noqa: E402
from tornado.httpclient import AsyncHTTPClient, HTTPRequest  # noqa: E402
from tornado.websocket import websocket_connect  # noqa: E402

SYMBOLS = ["AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO", "LLY", "MRK",
           "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM"]
BODY = {"symbols": SYMBOLS, "startDate": "2003-01-02", "endDate": "2022-12-28",
        "initialInvestment": 10000, "objective": "max_sharpe", "lookbackDays": 252,
        "rebalance": "monthly", "costBps": 10}
# The growth table: every so many trading days over LINEAR_DAYS (backtest_bench.py's).
LINEAR_DAYS, LINEAR_COUNTS, LINEAR_FIRST_ROW = 7680, (60, 120, 240, 480), 252
TARGET = 1.0
# Largest distance of a growth median from the fitted line, as a fraction of it.
LINEAR_TOLERANCE = 0.25


def growth_dates():
    """The first and last of the LINEAR_DAYS trading days of the growth table."""
    import pandas
    dates = pandas.read_csv(ROOT / "indico" / "data" / "sp500_prices.csv.gz",
                            usecols=["Date"])["Date"]
    return dates[LINEAR_FIRST_ROW], dates[LINEAR_FIRST_ROW + LINEAR_DAYS - 1]


async def timed_backtest(port, token, connection, body):
    """``(seconds from request to done, seconds to the 202, progress events, rebalances)``."""
    client = AsyncHTTPClient()
    started = time.perf_counter()
    answer = await client.fetch(HTTPRequest(
        f"http://127.0.0.1:{port}/portfolio/backtest", method="POST", body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"}))
    accepted = time.perf_counter() - started
    job_id = json.loads(answer.body)["data"]["id"]
    progress = 0
    while True:
        message = json.loads(await connection.read_message())
        if message["id"] != job_id:
            continue
        if message["event"] == "progress":
            progress += 1
            total = message["total"]
        elif message["event"] in ("done", "failed"):
            elapsed = time.perf_counter() - started
            if message["event"] == "failed":
                raise RuntimeError(f"the backtest failed: {message['error']}")
            return elapsed, accepted, progress, total


async def measure(port, token, repeat):
    connection = await websocket_connect(HTTPRequest(
        f"ws://127.0.0.1:{port}/ws/jobs", headers={"Authorization": f"Bearer {token}"}))
    assert json.loads(await connection.read_message())["event"] == "subscribed"
    start, end = growth_dates()
    cases = [("20 symbols x 20 years, monthly, max_sharpe", BODY)] + [
        (f"every {LINEAR_DAYS // count} trading days, {start} to {end}",
         {**BODY, "startDate": start, "endDate": end, "rebalance": LINEAR_DAYS // count})
        for count in LINEAR_COUNTS]
    figures = []
    for name, body in cases:
        await timed_backtest(port, token, connection, body)  # warm-up
        runs = [await timed_backtest(port, token, connection, body) for _ in range(repeat)]
        seconds = statistics.median(run[0] for run in runs)
        figures.append((name, seconds, statistics.median(run[1] for run in runs),
                        runs[0][2], runs[0][3], [run[0] for run in runs]))
        print(f"{name}: {runs[0][3]} rebalances, median {seconds * 1000:.0f} ms "
              f"(runs: {', '.join(f'{run[0] * 1000:.0f}' for run in runs)} ms; "
              f"{runs[0][2]} progress events)", flush=True)
    connection.close()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="indico-backtest-bench-")
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update({"INDICO_DATA_DIR": workdir, "INDICO_LOAD_SAMPLE_PRICES": "true"})
    port = free_port()
    log = open(os.path.join(workdir, "indico.log"), "w")
    server = subprocess.Popen([sys.executable, "-m", "indico.server", f"--port={port}"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(port, "/healthCheck", time.monotonic() + 120)
        status, answer = call(port, "/auth/signup", {"email": "bench@example.com",
                                                     "password": "correct horse battery"})
        assert status == 201, (status, answer)
        figures = asyncio.run(measure(port, answer["data"]["token"], args.repeat))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        log.close()
        if code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"the server exited {code}; kept {workdir} (log)")

    name, seconds, accepted, progress, total, _ = figures[0]
    rows = [(f"{name} ({total} rebalances): request to done, median of {args.repeat}",
             f"{seconds * 1000:.0f} ms (202 after {accepted * 1000:.0f} ms; {progress} "
             "progress events)", f"<= {TARGET * 1000:.0f} ms",
             "met" if seconds <= TARGET else "missed")]
    counts = [figure[4] for figure in figures[1:]]
    medians = [figure[1] for figure in figures[1:]]
    slope, fixed = numpy.polyfit(counts, medians, 1)
    for (name, seconds, _, _, total, _), line in zip(figures[1:], numpy.polyval(
            [slope, fixed], counts), strict=True):
        rows.append((f"{total} rebalances ({name})",
                     f"{seconds * 1000:.0f} ms (line: {line * 1000:.0f} ms)", "linear", ""))
    worst = max(abs(seconds - line) / line for seconds, line in
                zip(medians, numpy.polyval([slope, fixed], counts), strict=True))
    rows.append(("growth: fixed + per rebalance x n (least squares)",
                 f"{fixed * 1000:.0f} ms + {slope * 1000:.2f} ms x n; farthest median "
                 f"{worst:.0%} off the line", f"linear (within {LINEAR_TOLERANCE:.0%})",
                 "met" if worst <= LINEAR_TOLERANCE else "missed"))
    print_results(rows, "server as make run starts it (INDICO_WORKERS default), client on "
                        "the same machine")


if __name__ == "__main__":
    main()
