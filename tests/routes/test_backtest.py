"""portfolio/backtest and cancel: 202 and the result, every refusal, kind, cancel, crashes.

The backtests run on the few sample symbols of tests/routes/test_portfolio.py
(2010-2017) in the run's shared worker pool; the walk-forward itself is tested
in tests/optimization/test_backtest.py. A second real server process streams
its backtest's progress to this one's /ws/jobs, and a real process running a
backtest is killed with SIGKILL mid-run and the backtest finished by a claim.
"""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy
import pandas

from indico.db import jobs
from indico.db.records import JobKind
from indico.optimization.backtest import walk_forward
from indico.services.jobs import JobService
from indico.services.pool import engine_options
from indico.services.price_import import PriceImporter
from tests.harness import REPO, shared_pool
from tests.routes.test_portfolio import PortfolioTest, sample_file
from tests.routes.test_ws import WebSocketClient
from tests.workloads import chunk_held_by_files

BODY = {"symbols": ["AAPL", "MSFT", "JPM"], "startDate": "2012-01-01",
        "endDate": "2015-12-31", "initialInvestment": 10000.0, "rebalance": "quarterly"}
# BODY as BacktestRequest.params() stores it.
PARAMS = {"symbols": ["AAPL", "MSFT", "JPM"], "start_date": "2012-01-01",
          "end_date": "2015-12-31", "initial_investment": 10000.0, "risk_free_rate": 0.0,
          "weight_bounds": [0.0, 1.0], "returns_model": "mean", "returns_span": 500,
          "risk_model": "sample", "risk_span": 180, "cvar_level": 0.95, "groups": None,
          "objective": "max_sharpe", "target_return": None, "target_volatility": None,
          "max_assets": None, "lookback_days": 252, "rebalance": "quarterly", "cost_bps": 10.0}
QUARTERS = 16  # 2012-01-03 .. 2015-10-01


class BacktestTest(PortfolioTest):

    def backtest(self, body=None, token=None):
        return self.post("/portfolio/backtest", BODY if body is None else body,
                         token=token or self.token)

    def run_background_jobs(self):
        """Run the IOLoop until this process's background jobs have ended."""
        async def settle():
            while self.services.jobs.background:
                await asyncio.wait(set(self.services.jobs.background))
        self.io_loop.run_sync(settle, timeout=120)

    def owner(self):
        return str(self.find("users")[0]["_id"])


class BacktestRequestTest(BacktestTest):

    def test_answers_202_and_the_result_has_kind_backtest(self):
        status, body = self.backtest()
        self.assertEqual(status, 202, body)
        job = body["data"]
        self.assertEqual((job["status"], job["kind"], job["objective"]),
                         ("running", "backtest", "max_sharpe"))
        self.assertEqual(job["params"], PARAMS)
        self.run_background_jobs()
        status, body = self.post("/portfolio/result", {"id": job["id"]}, token=self.token)
        self.assertEqual(status, 200, body)
        done = body["data"]
        self.assertEqual((done["status"], done["kind"], done["error"]), ("done", "backtest", None))
        self.assertEqual(done["progress"], {"done": QUARTERS, "total": QUARTERS})
        self.assertEqual(len(done["rebalances"]), QUARTERS)
        self.assertEqual([entry["date"] for entry in done["rebalances"][:3]],
                         ["2012-01-03", "2012-04-02", "2012-07-02"])
        self.assertEqual(set(done["rebalances"][0]["weights"]), {"AAPL", "MSFT", "JPM"})
        self.assertEqual(set(done["series"]), {"dates", "strategy", "equal_weight", "index"})
        self.assertEqual(done["series"]["dates"][0], "2012-01-03")
        self.assertEqual(done["series"]["dates"][-1], "2015-12-31")
        self.assertIsNotNone(done["series"]["index"])
        self.assertEqual(set(done["stats"]), {"strategy", "equal_weight"})
        self.assertIsNone(done["allocations"])
        # Stored: its kind, a progress event per chunk (counting up to the total), done.
        [stored] = self.find("jobs")
        self.assertEqual(stored["kind"], "backtest")
        names = [event["event"] for event in stored["events"]]
        self.assertEqual(names[:2], ["queued", "running"])
        self.assertEqual(names[-1], "done")
        progress = [(event["done"], event["total"]) for event in stored["events"][2:-1]]
        self.assertEqual(set(names[2:-1]), {"progress"})
        self.assertEqual(progress[-1], (QUARTERS, QUARTERS))
        self.assertEqual(sorted(progress), progress)
        self.assertNotIn("slot", stored)

    def test_the_result_is_the_walk_forward_of_the_same_prices(self):
        body = {**BODY, "rebalance": 63, "lookbackDays": 100, "costBps": 25,
                "objective": "min_volatility", "weightBounds": [0.1, 0.6]}
        job_id = self.backtest(body)[1]["data"]["id"]
        self.run_background_jobs()
        done = self.post("/portfolio/result", {"id": job_id}, token=self.token)[1]["data"]
        params = done["params"]
        self.assertEqual((params["rebalance"], params["lookback_days"], params["cost_bps"]),
                         (63, 100, 25.0))
        frame, benchmark = self.io_loop.run_sync(
            lambda: self.services.jobs.load_inputs(params, JobKind.BACKTEST))
        self.assertEqual(frame.index[0], pandas.Timestamp("2010-01-04"))  # history too
        expected = walk_forward(
            frame, benchmark, start_date=params["start_date"], end_date=params["end_date"],
            lookback_days=100, rebalance=63, cost_bps=25.0, initial_investment=10000.0,
            options=engine_options(params))
        self.assertEqual(json.loads(json.dumps(expected)),
                         {key: done[key] for key in ("rebalances", "series", "stats")})

    def test_snake_case_fields(self):
        body = {"symbols": ["aapl", "msft"], "start_date": "01-03-12", "end_date": "2013-12-31",
                "initial_investment": 500, "lookback_days": 60, "rebalance": "yearly",
                "cost_bps": 0, "risk_model": "ledoit_wolf", "objective": "min_volatility"}
        status, body = self.backtest(body)
        self.assertEqual(status, 202, body)
        params = body["data"]["params"]
        self.assertEqual((params["symbols"], params["lookback_days"], params["rebalance"],
                          params["cost_bps"], params["risk_model"]),
                         (["AAPL", "MSFT"], 60, "yearly", 0.0, "ledoit_wolf"))
        self.run_background_jobs()
        done = self.wait_done(body["data"]["id"])
        self.assertEqual(done["status"], "done", done)
        self.assertEqual(len(done["rebalances"]), 2)  # 2012-01-03, 2013-01-02

    def test_fields_out_of_range_name_the_field(self):
        rule = ("give monthly, quarterly, yearly, or a whole number of trading days from 5 "
                "to 2520")
        for field, value, message in (
                ("lookbackDays", 19, "Input should be greater than or equal to 20"),
                ("lookbackDays", 5001, "Input should be less than or equal to 5000"),
                ("lookbackDays", 252.5, "Input should be a valid integer"),
                ("rebalance", "weekly", rule), ("rebalance", 4, rule),
                ("rebalance", 2521, rule), ("rebalance", True, rule), ("rebalance", 21.0, rule),
                ("costBps", -1, "Input should be greater than or equal to 0"),
                ("costBps", 1001, "Input should be less than or equal to 1000"),
                ("costBps", "10", "Input should be a valid number"),
                ("wait", False, "unknown field; it is not accepted here")):
            with self.subTest(field=field, value=value):
                error = self.assertError(self.backtest({**BODY, field: value}), 400,
                                         "ValidationError", f"{field}: {message}")
                self.assertEqual(error["field"], field)
        self.assertEqual(self.find("jobs"), [])

    def test_every_refusal_before_a_job_exists(self):
        late = os.path.join(self.data_dir, "late.csv")
        prices = pandas.read_csv(sample_file(), index_col="Date")
        prices.loc[prices.index >= "2011-07-01", ["AAPL"]].rename(
            columns={"AAPL": "LATE"}).to_csv(late)
        self.io_loop.run_sync(lambda: PriceImporter(self.db).import_file(late))
        cases = [
            ({**BODY, "symbols": ["AAPL", "NOPE", "ZZZ"]}, "UnknownSymbols",
             "no prices for NOPE, ZZZ; prices/symbols lists the stored symbols; add prices "
             "with indico-prices import FILE", {"symbols": ["NOPE", "ZZZ"]}),
            # The frame reaches back to 2011-07-01 only: LATE, not the others, is named.
            ({**BODY, "symbols": ["AAPL", "LATE", "MSFT"]}, "OptimizationError",
             "LATE has only 127 trading days of prices (common to all symbols, from "
             "2011-07-01) before the first rebalance on 2012-01-03; lookbackDays needs 252. "
             "Choose a startDate on or after 2012-07-02, lookbackDays of at most 127, or "
             "drop LATE.", {"symbols": ["LATE"], "field": "lookbackDays"}),
            ({**BODY, "startDate": "2010-03-01"}, "OptimizationError",
             "have only 38 trading days", {"symbols": ["AAPL", "MSFT", "JPM"],
                                           "field": "lookbackDays"}),
            ({**BODY, "weightBounds": [0.4, 1.0]}, "OptimizationError",
             "weightBounds: with 3 symbols and a lower bound of 0.4 the weights total at "
             "least 1.2, more than 1", {"field": "weightBounds"}),
            ({**BODY, "startDate": "2018-01-02", "endDate": "2018-06-01"}, "OptimizationError",
             "No trading day common to all symbols between 2018-01-02 and 2018-06-01; choose "
             "other dates or other symbols.", None),
        ]
        for body, kind, message, details in cases:
            with self.subTest(message=message):
                error = self.assertError(self.backtest(body), 422, kind, message)
                for key, value in (details or {}).items():
                    self.assertEqual(error[key], value, error)
        self.assertEqual(self.find("jobs"), [])

    def test_a_backtest_whose_rebalance_has_no_solution_ends_failed(self):
        # No window's return reaches 500 % a year: the job fails, naming the date.
        status, body = self.backtest({**BODY, "objective": "efficient_return",
                                      "targetReturn": 5})
        self.assertEqual(status, 202, body)
        self.run_background_jobs()
        failed = self.wait_done(body["data"]["id"])
        self.assertEqual(failed["status"], "failed")
        self.assertTrue(failed["error"].startswith("The rebalance on 2012-01-03 (window "
                                                   "2011-01-03 to 2011-12-30) failed: "),
                        failed["error"])
        [stored] = self.find("jobs")
        self.assertNotIn("slot", stored)

    def test_the_quota_counts_backtests(self):
        owner = self.owner()
        for _ in range(self.config.max_active_jobs):
            self.io_loop.run_sync(lambda: jobs.create_job(self.db, owner, PARAMS, 5,
                                                          worker="elsewhere", lease=600,
                                                          kind=JobKind.BACKTEST))
        error = self.assertError(self.backtest(), 429, "TooManyRequests", "the limit is 5")
        self.assertEqual(error["retry_after"], 5)
        self.assertEqual(len(self.find("jobs")), 5)


class KindTest(BacktestTest):

    def test_result_list_and_delete_know_both_kinds(self):
        optimized = self.optimize()[1]["data"]
        self.assertEqual(optimized["kind"], "optimize")
        backtest_id = self.backtest()[1]["data"]["id"]
        self.run_background_jobs()
        status, body = self.post("/portfolio/list", token=self.token)
        self.assertEqual(status, 200, body)
        results = body["data"]["results"]
        self.assertEqual([(job["id"], job["kind"]) for job in results],
                         [(backtest_id, "backtest"), (optimized["id"], "optimize")])
        # Summaries: no series, no rebalances.
        self.assertIsNone(results[0]["series"])
        self.assertIsNone(results[0]["rebalances"])
        self.assertEqual(set(results[0]["stats"]), {"strategy", "equal_weight"})
        result = self.post("/portfolio/result", {"id": optimized["id"]}, token=self.token)[1]
        self.assertEqual((result["data"]["kind"], result["data"]["rebalances"]),
                         ("optimize", None))
        for job_id in (backtest_id, optimized["id"]):
            self.assertEqual(self.post("/portfolio/delete", {"id": job_id}, token=self.token),
                             (200, {"status": 200, "data": {}}))
        self.assertEqual(self.find("jobs"), [])

    def test_a_job_stored_before_kinds_existed_reads_as_an_optimization(self):
        job_id = self.optimize()[1]["data"]["id"]
        self.io_loop.run_sync(lambda: self.db.jobs.update_one({"_id": job_id},
                                                              {"$unset": {"kind": ""}}))
        self.assertNotIn("kind", self.find("jobs")[0])
        for route in ("/portfolio/result", "/portfolio/list"):
            body = self.post(route, {"id": job_id} if route.endswith("result") else {},
                             token=self.token)[1]["data"]
            job = body if route.endswith("result") else body["results"][0]
            self.assertEqual((job["id"], job["kind"]), (job_id, "optimize"))

    def test_the_openapi_document_describes_backtest_and_cancel(self):
        status, document, _ = self.request("GET", "/openapi.json")
        backtest = document["paths"]["/portfolio/backtest"]["post"]
        self.assertEqual(set(backtest["responses"]) & {"200", "202", "422", "429"},
                         {"202", "422", "429"})
        properties = document["components"]["schemas"]["BacktestRequest"]["properties"]
        self.assertNotIn("wait", properties)
        self.assertEqual(properties["lookbackDays"]["minimum"], 20)
        self.assertEqual(properties["costBps"]["maximum"], 1000)
        self.assertEqual(properties["rebalance"]["oneOf"][0]["enum"],
                         ["monthly", "quarterly", "yearly"])
        self.assertIn("objective", properties)
        cancel = document["paths"]["/portfolio/cancel"]["post"]
        self.assertIn("409", cancel["responses"])
        self.assertEqual(cancel["security"], [{"bearer": []}])


class CancelTest(WebSocketClient, BacktestTest):

    def cancel(self, job_id, token=None):
        return self.post("/portfolio/cancel", {"id": job_id}, token=token or self.token)

    def test_a_queued_job_is_cancelled_and_never_claimed(self):
        owner = self.owner()
        connection = self.connect({"Authorization": f"Bearer {self.token}"})
        self.assertEqual(self.read(connection)["event"], "subscribed")
        job = self.io_loop.run_sync(lambda: jobs.create_job(self.db, owner, PARAMS, 5,
                                                            kind=JobKind.BACKTEST))
        status, body = self.cancel(job.id)
        self.assertEqual(status, 200, body)
        self.assertEqual((body["data"]["id"], body["data"]["status"], body["data"]["error"],
                          body["data"]["kind"]), (job.id, "failed", "cancelled", "backtest"))
        messages = [self.read(connection) for _ in range(2)]
        self.assertEqual([(message["event"], message["id"], message["kind"])
                          for message in messages],
                         [("queued", job.id, "backtest"), ("failed", job.id, "backtest")])
        self.assertEqual(messages[1]["error"], "cancelled")
        [stored] = self.find("jobs")
        self.assertEqual((stored["status"], stored["error"]), ("failed", "cancelled"))
        self.assertEqual([event["event"] for event in stored["events"]], ["queued", "failed"])
        self.assertNotIn("slot", stored)
        self.assertFalse(self.io_loop.run_sync(self.services.jobs.claim_and_run))
        connection.close()

    def test_a_running_backtest_stops_between_chunks(self):
        owner = self.owner()
        hold = tempfile.mkdtemp(prefix="indico-hold-")
        self.addCleanup(shutil.rmtree, hold, True)
        # Whatever happens, the shared pool's workers are let go.
        self.addCleanup(lambda: open(os.path.join(hold, "release"), "a").close())
        service = JobService(self.db, self.config, self.services.prices, self.services.events,
                             shared_pool(), chunk_work=chunk_held_by_files)
        job = self.io_loop.run_sync(lambda: jobs.create_job(
            self.db, owner, {**PARAMS, "hold": hold}, 5, kind=JobKind.BACKTEST))

        async def start():
            running = asyncio.ensure_future(service.claim_and_run())
            while not os.path.exists(os.path.join(hold, "started")):  # the first chunk runs
                await asyncio.wait({running}, timeout=0.01)
                self.assertFalse(running.done(), running)
            return running
        running = self.io_loop.run_sync(start, timeout=60)
        status, body = self.cancel(job.id)
        self.assertEqual(status, 200, body)
        self.assertEqual((body["data"]["status"], body["data"]["error"]), ("failed", "cancelled"))
        open(os.path.join(hold, "release"), "a").close()
        self.assertTrue(self.io_loop.run_sync(lambda: running, timeout=60))
        # The chunks under way when it was cancelled were the last: one per worker.
        with open(os.path.join(hold, "chunks")) as handle:
            self.assertEqual(len(handle.readlines()), shared_pool().workers)
        [stored] = self.find("jobs")
        self.assertEqual((stored["status"], stored["error"]), ("failed", "cancelled"))
        self.assertEqual([event["event"] for event in stored["events"]],
                         ["queued", "running", "failed"])
        self.assertNotIn("result", stored)
        self.assertNotIn("progress", stored)

    def test_a_running_optimization_is_cancelled_and_its_runner_cannot_finish_it(self):
        owner = self.owner()
        job = self.io_loop.run_sync(lambda: jobs.create_job(
            self.db, owner, {**PARAMS, "objective": "max_sharpe"}, 5,
            worker="elsewhere", lease=600))
        status, body = self.cancel(job.id)
        self.assertEqual(status, 200, body)
        self.assertEqual((body["data"]["kind"], body["data"]["status"], body["data"]["error"]),
                         ("optimize", "failed", "cancelled"))
        self.assertIsNone(self.io_loop.run_sync(lambda: jobs.complete_job(
            self.db, job, "elsewhere", "done", result={"allocations": {}})))
        [stored] = self.find("jobs")
        self.assertEqual((stored["status"], stored["error"]), ("failed", "cancelled"))
        self.assertNotIn("result", stored)

    def test_error_paths(self):
        owner = self.owner()
        done = self.optimize()[1]["data"]
        other = self.signup(email="bob@example.com")
        for answer in (self.cancel(done["id"], token=other), self.cancel("0" * 24)):
            self.assertError(answer, 404, "NotFound", "no such result")
        error = self.assertError(self.cancel(done["id"]), 409, "Conflict")
        self.assertEqual(error, {
            "type": "Conflict", "id": done["id"], "status": "done",
            "message": "the job has ended (done); only a queued or running job can be "
                       "cancelled"})
        job = self.io_loop.run_sync(lambda: jobs.create_job(self.db, owner, PARAMS, 5))
        self.assertEqual(self.cancel(job.id)[0], 200)
        self.assertError(self.cancel(job.id), 409, "Conflict", "the job has ended (failed)")
        self.assertError(self.post("/portfolio/cancel", {}, token=self.token), 400,
                         "ValidationError", "id: required field is missing")
        self.assertError(self.post("/portfolio/cancel", {"id": job.id}), 401, "Unauthorized")
        self.assertEqual(self.find("jobs", {"_id": done["id"]})[0]["status"], "done")


class SecondProcessTest(WebSocketClient, BacktestTest):

    def test_progress_events_of_a_backtest_run_by_a_second_server_process(self):
        data_dir = tempfile.mkdtemp(prefix="indico-second-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        base = self.start_second_server(data_dir)
        connection = self.connect({"Authorization": f"Bearer {self.token}"})
        self.assertEqual(self.read(connection)["event"], "subscribed")
        body = {**BODY, "rebalance": "monthly"}
        status, answer = self.post_to(base, "/portfolio/backtest", body)
        self.assertEqual(status, 202)
        job_id = answer["data"]["id"]
        events = self.read_until_finished(connection, timeout=60)
        self.assertEqual({(event["id"], event["kind"]) for event in events},
                         {(job_id, "backtest")})
        names = [event["event"] for event in events]
        self.assertEqual(names[:2], ["queued", "running"])
        self.assertEqual(names[-1], "done", events[-1])
        progress = events[2:-1]
        self.assertEqual({event["event"] for event in progress}, {"progress"})
        self.assertGreaterEqual(len(progress), 2)  # the first chunks are small
        counts = [event["done"] for event in progress]
        self.assertEqual(counts, sorted(set(counts)))  # in order, each once
        self.assertEqual({event["total"] for event in progress}, {48})
        self.assertEqual(counts[-1], 48)
        self.assertEqual(len(events[-1]["summary"]["allocations"]), 3)
        done = self.wait_done(job_id)
        self.assertEqual(len(done["rebalances"]), 48)
        connection.close()


class KilledProcessTest(BacktestTest):

    def test_a_backtest_survives_sigkill_of_the_process_running_it(self):
        # A real process starts a backtest as a server does (a lease of 1 s, renewed),
        # computes its first chunk, stores its progress, and is killed with SIGKILL
        # in the second chunk, which never ends.
        script = (
            "import asyncio, concurrent.futures, json, sys\n"
            "from config import Config\n"
            "from indico.db import create_client\n"
            "from indico.services import build_services\n"
            "from indico.services.jobs import JobService\n"
            "from indico.services.pool import create_pool\n"
            "from tests.workloads import chunk_stalled_after_the_first\n"
            "async def main():\n"
            "    config = Config.from_environ({}, mongodb_uri=sys.argv[1],\n"
            "                                 database=sys.argv[2], job_lease=1.0)\n"
            "    db = create_client(sys.argv[1])[sys.argv[2]]\n"
            "    pool = create_pool(1)\n"
            "    services = build_services(config, db,\n"
            "                              concurrent.futures.ThreadPoolExecutor(1), pool)\n"
            "    service = JobService(db, config, services.prices, services.events, pool,\n"
            "                         chunk_work=chunk_stalled_after_the_first)\n"
            "    job = await service.backtest(sys.argv[3], json.loads(sys.argv[4]))\n"
            "    print(job.id, flush=True)\n"
            "    await asyncio.sleep(3600)\n"
            "asyncio.run(main())\n")
        params = {**PARAMS, "rebalance": "monthly"}
        log_path = os.path.join(self.data_dir, "worker.log")
        with open(log_path, "w") as log:  # the killed process's resource tracker complains
            worker = subprocess.Popen(
                [sys.executable, "-c", script, self.config.mongodb_uri, self.db_name,
                 self.owner(), json.dumps(params)], cwd=REPO, stdout=subprocess.PIPE,
                stderr=log, text=True)
        self.addCleanup(lambda: worker.poll() is None and worker.kill())
        job_id = worker.stdout.readline().strip()
        if not job_id:
            with open(log_path) as log:
                self.fail(f"the process never started the backtest: {log.read()[-3000:]}")
        deadline = time.monotonic() + 60
        while not self.find("jobs", {"_id": job_id})[0].get("progress"):
            self.assertLess(time.monotonic(), deadline, "the first chunk never finished")
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        [stored] = self.find("jobs")
        self.assertEqual((stored["status"], stored["progress"]),
                         ("running", {"done": 2, "total": 48}))
        deadline = time.monotonic() + 30
        while not self.io_loop.run_sync(self.services.jobs.claim_and_run, timeout=120):
            self.assertLess(time.monotonic(), deadline, "the backtest was never claimed again")
            time.sleep(0.1)
        done = self.wait_done(job_id)
        self.assertEqual((done["status"], done["kind"]), ("done", "backtest"))
        self.assertEqual(done["progress"], {"done": 48, "total": 48})
        [job] = self.find("jobs")
        self.assertEqual(job["attempts"], 2)
        self.assertNotIn("slot", job)
        names = [event["event"] for event in job["events"]]
        # Taken over, it started again from its first rebalance.
        self.assertEqual(names[:4], ["queued", "running", "progress", "running"])
        self.assertEqual(job["events"][2]["done"], 2)
        self.assertEqual(names[-1], "done")
        # The same result as a backtest that was never interrupted.
        frame, benchmark = self.io_loop.run_sync(
            lambda: self.services.jobs.load_inputs(params, JobKind.BACKTEST))
        expected = walk_forward(
            frame, benchmark, start_date=params["start_date"], end_date=params["end_date"],
            lookback_days=252, rebalance="monthly", cost_bps=10.0, initial_investment=10000.0,
            options=engine_options(params))
        numpy.testing.assert_equal(json.loads(json.dumps(expected)),
                                   {key: done[key] for key in ("rebalances", "series", "stats")})


if __name__ == "__main__":
    import unittest
    unittest.main()
