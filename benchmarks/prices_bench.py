"""Speed of the price store: importing the sample, loading aligned frames, the cache check.

Run from the repository root with the project's environment::

    .venv/bin/python benchmarks/prices_bench.py [--runs 5] [--uri mongodb://...]

Without ``--uri`` (or ``INDICO_MONGODB_URI``) it starts the embedded database
(nx-27017) in a temporary directory, as ``make run`` does. Each run imports
into a fresh database. It prints the Markdown table of docs/PERFORMANCE.md,
every figure next to the time pandas alone needs to read the sample CSV,
measured in the same run, and the targets of the issue:

* importing the whole sample (20 symbols x 8,313 days, and the index) < 10 s;
* an aligned frame of 20 symbols x 5 years: < 50 ms cold, < 1 ms from the cache.

Figures are medians. "cold" is a new PriceCatalog (empty caches) on a warm
database; "cached" is the same request again, including the one read of the
head document that makes a cache hit safe against imports by other processes.
"""

import argparse
import asyncio
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid

import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import median_seconds

from config import Config
from indico.db import create_client, ensure_indexes, price_meta
from indico.db.embedded import EmbeddedServer
from indico.services import price_files
from indico.services.price_catalog import PriceCatalog
from indico.services.price_import import DATA_DIRECTORY, SAMPLE_FILES, PriceImporter

SAMPLE = [os.path.join(DATA_DIRECTORY, name) for name in SAMPLE_FILES]
SYMBOLS = ["AAPL", "AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO",
           "LLY", "MRK", "MSFT", "PEP", "PFE", "PG", "RRC", "UNH", "WMT", "XOM"]
START, END = datetime.date(2017, 12, 29), datetime.date(2022, 12, 28)


async def median_async(function, runs):
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def pandas_read(paths):
    for path in paths:
        pd.read_csv(path, index_col="Date", parse_dates=True)


async def measure(uri, runs):
    client = create_client(uri, timeout=10)
    config = Config.from_environ({}, mongodb_uri=uri)
    results = {}
    databases = []
    try:
        # Quick to repeat, so repeated more: these are the yardsticks.
        many = max(runs, 20)
        results["pandas_prices"] = median_seconds(lambda: pandas_read(SAMPLE[:1]), many, warmup=0)
        results["pandas_both"] = median_seconds(lambda: pandas_read(SAMPLE), many, warmup=0)
        results["parse"] = median_seconds(
            lambda: [price_files.parse_file(path) for path in SAMPLE], many, warmup=0)

        imports, reimports = [], []
        for _ in range(runs):
            databases.append(f"bench_{uuid.uuid4().hex[:12]}")
            db = client[databases[-1]]
            await ensure_indexes(db)
            service = PriceImporter(db)
            began = time.perf_counter()
            for path in SAMPLE:
                await service.import_file(path)
            imports.append(time.perf_counter() - began)
            began = time.perf_counter()
            summaries = [await service.import_file(path) for path in SAMPLE]
            reimports.append(time.perf_counter() - began)
            assert not any(summary.changed for summary in summaries)
        results["import"] = statistics.median(imports)
        results["reimport"] = statistics.median(reimports)

        databases.append(f"bench_{uuid.uuid4().hex[:12]}")
        env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
        env.update(INDICO_MONGODB_URI=uri, INDICO_DATABASE=databases[-1])
        began = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "indico.prices", "import", "--quiet", *SAMPLE, env=env, cwd=ROOT)
        if await process.wait():
            raise RuntimeError("indico-prices import failed")
        results["cli"] = time.perf_counter() - began

        db = client[databases[0]]
        colds = []
        for _ in range(max(runs, 10)):
            service = PriceCatalog(db, config)
            began = time.perf_counter()
            frame = await service.get_frame(SYMBOLS, START, END)
            colds.append(time.perf_counter() - began)
        results["shape"] = frame.shape
        results["cold"] = statistics.median(colds)
        hits = 1000
        results["cached"] = await median_async(lambda: service.get_frame(SYMBOLS, START, END),
                                               hits)
        results["head"] = await median_async(lambda: price_meta.get_head(db), hits)
        results["ping"] = await median_async(lambda: db.command("ping"), hits)
        # The same hit with the head read answered from memory: what the cache
        # itself costs.
        head = await price_meta.get_head(db)

        async def known_head(_db):
            return head
        real = price_meta.get_head
        price_meta.get_head = known_head
        try:
            results["memory"] = await median_async(
                lambda: service.get_frame(SYMBOLS, START, END), hits)
        finally:
            price_meta.get_head = real
        # Other windows in cached years: the frame is built from cached buckets.
        windows = [(START + datetime.timedelta(days=n), END) for n in range(1, 201)]
        pending = iter(windows)
        results["buckets"] = await median_async(
            lambda: service.get_frame(SYMBOLS, *next(pending)), len(windows))
    finally:
        for name in databases:
            await client.drop_database(name)
        await client.close()
    return results


def report(results, runs):
    """The Markdown table: each figure, its ratio to pandas' read_csv, the target."""
    base, both = results["pandas_prices"], results["pandas_both"]

    def row(label, key, reference=base, limit=None):
        seconds = results[key]
        shown = f"{seconds * 1000:,.2f} ms" if seconds < 1 else f"{seconds:,.2f} s"
        ratio = f"{seconds / reference:,.2f}x" + (" of both" if reference is both else "")
        target = ""
        if limit is not None:
            bound = f"{limit * 1000:g} ms" if limit < 1 else f"{limit:g} s"
            target = f"< {bound}: {'met' if seconds < limit else 'MISSED'}"
        return f"| {label} | {shown} | {ratio} | {target} |"

    rows, columns = results["shape"]
    heading = (f"Medians of {runs} runs (pandas and parsing: of 20 or more; cold frames: of 10 "
               f"or more; cache figures: of 1,000 calls). Sample: 20 symbols x 8,313 days + the "
               f"index; frame: {columns} symbols x {rows} dates ({START}..{END}).")
    return "\n".join([
        heading,
        "",
        "| measure | time | x pandas read_csv | target |",
        "|---|---:|---:|---|",
        row("pandas `read_csv` of sp500_prices.csv.gz (the yardstick)", "pandas_prices"),
        row("pandas `read_csv` of both sample files", "pandas_both"),
        row("parse + check both files (`price_files.parse_file`)", "parse", both),
        row("import the whole sample into an empty store", "import", both, 10),
        row("import it again (nothing changes, nothing written)", "reimport", both),
        row("`indico-prices import` of the sample, whole process", "cli", both),
        row("aligned frame, cold (new service, empty caches)", "cold", base, 0.05),
        row("aligned frame, another window from cached buckets", "buckets"),
        row("aligned frame, cached (with the head check)", "cached", base, 0.001),
        row("- of which the head check (one `find_one` by `_id`)", "head"),
        row("- the cache without the check", "memory"),
        row("a `ping` round trip (floor of any check)", "ping"),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--uri", default=os.environ.get("INDICO_MONGODB_URI"))
    args = parser.parse_args()
    server = None
    uri = args.uri
    if not uri:
        directory = tempfile.mkdtemp(prefix="indico-bench-")
        server = EmbeddedServer(directory)
        uri = server.start()
    try:
        results = asyncio.run(measure(uri, args.runs))
    finally:
        if server:
            server.stop()
    sys.stdout.write(report(results, args.runs) + "\n")


if __name__ == "__main__":
    main()
