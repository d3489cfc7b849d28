"""maxAssets on portfolio/optimize and portfolio/backtest over HTTP: stored, exact against
every subset, semi-continuous lower bounds, the job's time limit, and every refusal with
its status and body.

The search itself (against brute force for n <= 12, the gap under an injected clock)
is tested in tests/optimization/test_cardinality.py.
"""

import itertools

from indico.db import jobs
from indico.db.records import decode_result
from indico.error import OptimizationError
from indico.services.jobs import JobService
from indico.services.pool import WorkerFrame, run_optimization
from tests.harness import shared_pool
from tests.routes.test_backtest import BODY as BACKTEST_BODY
from tests.routes.test_backtest import BacktestTest
from tests.routes.test_portfolio import SEED_BODY, PortfolioTest
from tests.workloads import optimization_telling_its_time_limit

SYMBOLS = ["AAPL", "MSFT", "JPM", "KO", "XOM"]
BODY = {**SEED_BODY, "symbols": SYMBOLS, "objective": "min_volatility"}


def held(weights):
    return {symbol for symbol, weight in weights.items() if weight > 0}


class MaxAssetsOptimizeTest(PortfolioTest):

    def test_the_best_of_every_subset_and_the_proof(self):
        status, body = self.optimize({**BODY, "maxAssets": 2})
        self.assertEqual(status, 200, body)
        data = body["data"]
        self.assertEqual(data["params"]["max_assets"], 2)
        self.assertLessEqual(len(held(data["allocations"])), 2)
        self.assertAlmostEqual(sum(data["allocations"].values()), 1.0, places=9)
        self.assertIs(data["stats"]["optimal"], True)
        self.assertEqual(data["stats"]["gap"], 0.0)
        # Every portfolio of one or two of the symbols, each optimized on its own.
        best = min(
            self.optimize({**BODY, "symbols": list(subset)})[1]["data"]["stats"]["volatility"]
            for size in (1, 2) for subset in itertools.combinations(SYMBOLS, size))
        self.assertAlmostEqual(data["stats"]["volatility"], best, delta=1e-9 * best)
        # Without the limit the portfolio holds more, at a lower volatility.
        status, free = self.optimize(BODY)
        self.assertEqual(status, 200, free)
        self.assertGreater(len(held(free["data"]["allocations"])), 2)
        self.assertLess(free["data"]["stats"]["volatility"], data["stats"]["volatility"])
        self.assertNotIn("optimal", free["data"]["stats"])
        self.assertIsNone(free["data"]["params"]["max_assets"])

    def test_max_sharpe_and_snake_case(self):
        status, body = self.optimize({**BODY, "objective": "max_sharpe", "max_assets": 1})
        self.assertEqual(status, 200, body)
        data = body["data"]
        [symbol] = held(data["allocations"])
        self.assertEqual(data["allocations"][symbol], 1.0)
        self.assertIs(data["stats"]["optimal"], True)
        singles = {name: self.optimize({**BODY, "objective": "max_sharpe", "symbols": [name]})
                   [1]["data"]["stats"]["sharpe"] for name in SYMBOLS}
        self.assertEqual(symbol, max(singles, key=singles.get))

    def test_the_lower_bound_applies_to_the_assets_held(self):
        bounds = [0.3, 1]
        # Five symbols of at least 0.3 each cannot sum to 1 ...
        self.assertError(self.optimize({**BODY, "weightBounds": bounds}), 422,
                         "OptimizationError", "lower the lower bound to at most 0.2")
        # ... but at most three of them, each at least 0.3, can.
        status, body = self.optimize({**BODY, "weightBounds": bounds, "maxAssets": 3})
        self.assertEqual(status, 200, body)
        weights = body["data"]["allocations"]
        self.assertLessEqual(len(held(weights)), 3)
        for symbol in held(weights):
            self.assertGreaterEqual(weights[symbol], 0.3 - 1e-9, weights)
        self.assertEqual(body["data"]["params"]["weight_bounds"], bounds)

    def test_refusals_name_the_field_and_leave_no_job(self):
        cases = [
            ({"maxAssets": 0}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": "2"}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": 2.0}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": True}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": [2]}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": 10**30}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": 1001}, 400, "ValidationError", "maxAssets"),
            ({"maxAssets": 2, "objective": "hrp"}, 422, "OptimizationError",
             "maxAssets applies to objectives max_sharpe and min_volatility only, not hrp; "
             "choose one of them or leave maxAssets out."),
            ({"maxAssets": 2, "objective": "efficient_return", "targetReturn": 0.1}, 422,
             "OptimizationError", "maxAssets applies to objectives max_sharpe and "
             "min_volatility only, not efficient_return"),
            ({"maxAssets": 2, "groups": [{"name": "tech", "symbols": ["AAPL"], "max": 0.5}]},
             422, "OptimizationError",
             "maxAssets cannot be combined with groups yet: drop one of them."),
            ({"maxAssets": 3, "weightBounds": [0, 0.3]}, 422, "OptimizationError",
             "maxAssets 3: with weightBounds up to 0.3 the weights of at most 3 assets total "
             "at most 0.9, less than 1; raise maxAssets to at least 4, or the upper bound to "
             "at least 0.333333."),
            # More symbols help only as many as a request may give (INDICO_MAX_SYMBOLS).
            ({"maxAssets": 30, "weightBounds": [0, 0.05]}, 422, "OptimizationError",
             "maxAssets 30: with weightBounds up to 0.05 the weights of at most 5 assets "
             "total at most 0.25, less than 1; raise the upper bound to at least 0.2, or "
             "give at least 20 symbols."),
            ({"maxAssets": 1000, "weightBounds": [0, 0.005]}, 422, "OptimizationError",
             "maxAssets 1000: with weightBounds up to 0.005 the weights of at most 5 assets "
             "total at most 0.025, less than 1; raise the upper bound to at least 0.2."),
        ]
        for extra, status, error_type, message in cases:
            with self.subTest(extra=extra):
                before = self.snapshot("jobs")
                error = self.assertError(self.optimize({**BODY, **extra}), status, error_type,
                                         message)
                if status == 422:
                    self.assertEqual(error["field"], "maxAssets")
                else:
                    self.assertIn("maxAssets", error["message"])
                self.assertEqual(self.snapshot("jobs"), before)

    def test_the_job_time_limit_reaches_the_worker_and_is_not_stored(self):
        owner = str(self.find("users")[0]["_id"])
        params = {"symbols": SYMBOLS, "start_date": "2012-01-01", "end_date": "2016-03-20",
                  "initial_investment": 1000.0, "objective": "min_volatility",
                  "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0], "target_return": None,
                  "target_volatility": None, "max_assets": 2}
        job = self.io_loop.run_sync(lambda: jobs.create_job(self.db, owner, params, 5))
        service = JobService(self.db, self.config, self.services.prices, self.services.events,
                             shared_pool(), work=optimization_telling_its_time_limit)
        self.assertTrue(self.io_loop.run_sync(service.claim_and_run, timeout=60))
        [stored] = self.find("jobs")
        self.assertEqual((stored["_id"], stored["status"]), (job.id, "done"))
        self.assertEqual(stored["params"], params)
        result = decode_result(stored["result"])
        self.assertEqual(result["time_limit_seen"], self.config.job_time_limit)
        self.assertIs(result["stats"]["optimal"], True)

    def test_a_search_out_of_time_says_what_to_change(self):
        status, body = self.optimize({**BODY, "maxAssets": 2})
        self.assertEqual(status, 200, body)
        frame = self.io_loop.run_sync(lambda: self.services.prices.get_frame(
            SYMBOLS, "2012-01-01", "2016-03-20"))
        params = {**body["data"]["params"], "time_limit": 0.0}
        with self.assertRaises(OptimizationError) as raised:
            run_optimization(WorkerFrame(frame, None), params)
        self.assertEqual(str(raised.exception),
                         "maxAssets 2: the search found no portfolio within the time limit; "
                         "raise maxAssets, widen weightBounds or give fewer symbols.")

    def test_the_openapi_document_describes_max_assets(self):
        status, document, _ = self.request("GET", "/openapi.json")
        self.assertEqual(status, 200)
        field = document["components"]["schemas"]["OptimizeRequest"]["properties"]["maxAssets"]
        self.assertIn("stats.optimal", field["description"])
        self.assertIn({"type": "integer", "minimum": 1, "maximum": 1000}, field["anyOf"])


class MaxAssetsBacktestTest(BacktestTest):

    def test_every_rebalance_holds_at_most_max_assets(self):
        status, body = self.backtest({**BACKTEST_BODY, "symbols": SYMBOLS, "maxAssets": 2,
                                      "objective": "min_volatility"})
        self.assertEqual(status, 202, body)
        self.assertEqual(body["data"]["params"]["max_assets"], 2)
        self.run_background_jobs()
        status, body = self.post("/portfolio/result", {"id": body["data"]["id"]},
                                 token=self.token)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"]["status"], "done", body)
        counts = [len(held(entry["weights"])) for entry in body["data"]["rebalances"]]
        self.assertTrue(counts and max(counts) <= 2, counts)

    def test_a_refusal_leaves_no_job(self):
        before = self.snapshot("jobs")
        self.assertError(self.backtest({**BACKTEST_BODY, "maxAssets": 2, "objective": "hrp"}),
                         422, "OptimizationError", "maxAssets applies to objectives")
        self.assertEqual(self.snapshot("jobs"), before)
