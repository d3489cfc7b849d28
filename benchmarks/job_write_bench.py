"""What a finished job's write costs on nx-27017, by the stored shape of its result.

``.venv/bin/python benchmarks/job_write_bench.py [--writes 200]`` starts the
embedded database in a temporary directory and times, sequentially (one
request in flight, as in a 1-connection ``portfolio/optimize``), the write
that completes a job (``indico.db.jobs.complete_job``'s shape: ``$set`` of the
status and result, ``$unset`` of the slot, journaled) with the real result of
the issue-11 request (20 symbols x 5 years, 500-point series): stored as its
JSON text (``records.encode_result``) and answered by a count (``update_one``,
what indico does); the same answered by the stored document
(``find_one_and_update``, what indico did before); the result stored as a
nested document (before that); and the text of the result without its series
(what the series costs). Also the job's insert. Median milliseconds of
``--writes`` writes each, on jobs inserted beforehand; and what one look of a
job runner (``claim_job`` with nothing to claim) costs once those jobs are
stored.
"""

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def issue_result():
    import pandas as pd

    from indico.optimization import optimize
    data = ROOT / "indico" / "data"
    prices = pd.read_csv(data / "sp500_prices.csv.gz", parse_dates=["Date"], index_col="Date")
    index = pd.read_csv(data / "sp500_index.csv.gz", parse_dates=["Date"], index_col="Date")
    frame = prices.loc["2017-01-01":"2021-12-31"].dropna()
    benchmark = index["SP500"].reindex(frame.index).ffill()
    return optimize(frame, "max_sharpe", initial_investment=10000.0,
                    benchmark=benchmark).to_dict()


async def measure(uri, writes):
    from pymongo import AsyncMongoClient, ReturnDocument
    from pymongo.write_concern import WriteConcern

    from indico.db import jobs
    from indico.db.records import encode_result
    client = AsyncMongoClient(uri)
    db = client["bench"]
    await jobs.create_indexes(db)
    collection = db.get_collection("jobs", write_concern=WriteConcern(j=True))
    full = issue_result()
    bare = dict(full, performance={**full["performance"], "series": None})
    params = {"symbols": list(full["allocations"]), "objective": "max_sharpe"}
    # (name, stored result, answered by the stored document)
    cases = [("update_one, the result as its JSON text (what indico does)",
              encode_result(full), False),
             ("find_one_and_update, the result as its JSON text", encode_result(full), True),
             ("update_one, the result as a nested document", full, False),
             ("update_one, the text of the result without its series",
              encode_result(bare), False)]
    figures = {}
    inserts = []
    for number in range(len(cases) * writes):
        began = time.perf_counter()
        await jobs.create_job(db, f"owner{number}", params, 5, worker="w", lease=30)
        inserts.append(time.perf_counter() - began)
    figures["insert a job"] = inserts
    ids = [document["_id"] async for document in db.jobs.find({}, {"_id": 1})]
    for case, (name, result, answer) in enumerate(cases):
        times = []
        for job_id in ids[case * writes:(case + 1) * writes]:
            update = {"$set": {"status": "done", "updated": time.time(), "result": result,
                               "lease_owner": None}, "$unset": {"slot": ""}}
            began = time.perf_counter()
            if answer:
                await collection.find_one_and_update({"_id": job_id, "status": "running"},
                                                     update,
                                                     return_document=ReturnDocument.AFTER)
            else:
                await collection.update_one({"_id": job_id, "status": "running"}, update)
            times.append(time.perf_counter() - began)
        figures[name] = times
    claims = []
    for _ in range(20):
        began = time.perf_counter()
        assert await jobs.claim_job(db, "another", 30) is None
        claims.append(time.perf_counter() - began)
    figures[f"a job runner's look for work (claim_job, nothing to claim), {len(ids)} "
            "jobs stored"] = claims
    await client.close()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    from indico.db.embedded import EmbeddedServer
    directory = tempfile.mkdtemp(prefix="indico-writes-")
    server = EmbeddedServer(directory, 60)
    uri = server.start()
    try:
        figures = asyncio.run(measure(uri, args.writes))
    finally:
        server.stop()
    print("| write | median ms | p90 ms |\n|---|---|---|")
    for name, times in figures.items():
        times = sorted(times)
        print(f"| {name} | {1000 * statistics.median(times):.2f} | "
              f"{1000 * times[int(0.9 * len(times))]:.2f} |")


if __name__ == "__main__":
    main()
