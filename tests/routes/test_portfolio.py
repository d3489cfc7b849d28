"""portfolio/optimize, result, list, delete: the seed's request, ownership, jobs, limits."""

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy
import pandas

from indico.services.price_import import PriceImporter
from tests.harness import ServerTest
from tests.services.test_portfolio import cursor_of

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "indico", "data")
SYMBOLS = ["AAPL", "MSFT", "JPM", "KO", "XOM", "AMD"]
SEED_BODY = {"symbols": ["AAPL", "MSFT", "JPM"], "startDate": "01-01-12",
             "endDate": "03-20-16", "initialInvestment": 1000.00}
_sample = {}


def sample_file():
    """A wide CSV with a few sample symbols and the index, 2010-2017, written once."""
    if "path" not in _sample:
        prices = pandas.read_csv(os.path.join(DATA, "sp500_prices.csv.gz"), index_col="Date")
        index = pandas.read_csv(os.path.join(DATA, "sp500_index.csv.gz"), index_col="Date")
        frame = prices[SYMBOLS].join(index)
        frame = frame[(frame.index >= "2010-01-01") & (frame.index <= "2017-12-31")]
        handle, path = tempfile.mkstemp(suffix=".csv", prefix="indico-sample-")
        os.close(handle)
        frame.to_csv(path)
        _sample["path"] = path
    return _sample["path"]


class PortfolioTest(ServerTest):
    """A test database with a few symbols of the sample prices, and a user."""

    def setUp(self):
        super().setUp()
        service = PriceImporter(self.db)
        self.io_loop.run_sync(lambda: service.import_file(sample_file()))
        self.token = self.signup(email="ada@example.com")

    def optimize(self, body=None, token=None):
        return self.post("/portfolio/optimize", SEED_BODY if body is None else body,
                         token=token or self.token)

    def wait_done(self, job_id, token=None, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.post("/portfolio/result", {"id": job_id}, token=token or self.token)
            self.assertEqual(status, 200, body)
            if body["data"]["status"] in ("done", "failed"):
                return body["data"]
            time.sleep(0.05)
        self.fail(f"job {job_id} did not finish")


class OptimizeTest(PortfolioTest):

    def test_the_seed_request_as_it_was_written(self):
        status, body = self.optimize()
        self.assertEqual(status, 200, body)
        result = body["data"]
        self.assertEqual(result["status"], "done")
        self.assertEqual(result["objective"], "max_sharpe")
        self.assertEqual(set(result["allocations"]), {"AAPL", "MSFT", "JPM"})
        self.assertAlmostEqual(sum(result["allocations"].values()), 1.0, places=6)
        self.assertTrue(all(0 <= weight <= 1 for weight in result["allocations"].values()))
        self.assertEqual(set(result["shares"]), {"AAPL", "MSFT", "JPM"})
        self.assertTrue(all(isinstance(count, int) for count in result["shares"].values()))
        self.assertGreaterEqual(result["leftover"], 0)
        self.assertLess(result["leftover"], 1000)
        self.assertEqual(set(result["stats"]), {"expected_return", "volatility", "sharpe",
                                                "risk_contributions", "cvar"})
        self.assertEqual(set(result["stats"]["risk_contributions"]), {"AAPL", "MSFT", "JPM"})
        self.assertAlmostEqual(sum(result["stats"]["risk_contributions"].values()), 1.0,
                               places=9)
        self.assertGreater(result["stats"]["cvar"], 0)
        self.assertIn("portfolio", result["performance"])
        self.assertEqual(result["params"], {
            "symbols": ["AAPL", "MSFT", "JPM"], "start_date": "2012-01-01",
            "end_date": "2016-03-20", "initial_investment": 1000.0, "objective": "max_sharpe",
            "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0], "target_return": None,
            "target_volatility": None, "returns_model": "mean", "returns_span": 500,
            "risk_model": "sample", "risk_span": 180, "cvar_level": 0.95, "groups": None,
            "max_assets": None})
        [job] = self.find("jobs")
        self.assertEqual(job["_id"], result["id"])
        self.assertEqual(job["status"], "done")
        self.assertEqual([event["event"] for event in job["events"]],
                         ["queued", "running", "done"])
        status, saved = self.post("/portfolio/result", {"id": result["id"]}, token=self.token)
        self.assertEqual(status, 200)
        self.assertEqual(saved["data"]["allocations"], result["allocations"])

    def test_snake_case_principle_and_lower_case_symbols(self):
        status, body = self.optimize({"symbols": ["aapl", "Msft"], "start_date": "2012-01-01",
                                      "end_date": "2016-03-20", "principle": 5000,
                                      "objective": "min_volatility",
                                      "weight_bounds": [0.1, 0.9]})
        self.assertEqual(status, 200, body)
        data = body["data"]
        self.assertEqual(data["params"]["symbols"], ["AAPL", "MSFT"])
        self.assertEqual(data["objective"], "min_volatility")
        self.assertTrue(all(0.1 - 1e-9 <= w <= 0.9 + 1e-9 for w in data["allocations"].values()))

    def test_every_objective_answers(self):
        mean = None
        for objective, extra in (("max_sharpe", {}), ("min_volatility", {}),
                                 ("efficient_return", {"targetReturn": 0.2}),
                                 ("efficient_risk", {"targetVolatility": 0.2}),
                                 ("buy_and_hold_sharpe", {}), ("risk_parity", {}),
                                 ("equal_weight", {}), ("hrp", {}), ("min_cvar", {}),
                                 ("inverse_volatility", {}), ("max_diversification", {})):
            with self.subTest(objective=objective):
                status, body = self.optimize({**SEED_BODY, "objective": objective, **extra})
                self.assertEqual(status, 200, body)
                weights = numpy.array(list(body["data"]["allocations"].values()))
                self.assertAlmostEqual(weights.sum(), 1.0, places=6)
                if objective == "equal_weight":
                    mean = weights
        numpy.testing.assert_allclose(mean, [1 / 3] * 3, atol=1e-9)

    def test_estimators_and_cvar_level_in_either_spelling_reach_the_engine(self):
        camel = {**SEED_BODY, "objective": "min_cvar", "returnsModel": "ema",
                 "returnsSpan": 100, "riskModel": "exp_cov", "riskSpan": 60,
                 "cvarLevel": 0.9}
        snake = {**SEED_BODY, "objective": "min_cvar", "returns_model": "ema",
                 "returns_span": 100, "risk_model": "exp_cov", "risk_span": 60,
                 "cvar_level": 0.9}
        results = []
        for body in (camel, snake):
            status, reply = self.optimize(body)
            self.assertEqual(status, 200, reply)
            results.append(reply["data"])
        for result in results:
            self.assertEqual(
                {key: result["params"][key] for key in
                 ("returns_model", "returns_span", "risk_model", "risk_span", "cvar_level")},
                {"returns_model": "ema", "returns_span": 100, "risk_model": "exp_cov",
                 "risk_span": 60, "cvar_level": 0.9})
        self.assertEqual(results[0]["stats"], results[1]["stats"])
        status, default = self.optimize({**SEED_BODY, "objective": "min_cvar"})
        self.assertEqual(status, 200, default)
        # The level changes the CVaR reported; the models change mu and Sigma.
        self.assertNotEqual(default["data"]["stats"]["cvar"], results[0]["stats"]["cvar"])
        self.assertNotEqual(default["data"]["stats"]["expected_return"],
                            results[0]["stats"]["expected_return"])

    def test_estimator_fields_out_of_range_name_the_field(self):
        cases = [
            ({**SEED_BODY, "returnsModel": "median"}, "returnsModel"),
            ({**SEED_BODY, "riskModel": "shrunk"}, "riskModel"),
            ({**SEED_BODY, "returnsSpan": 1}, "returnsSpan"),
            ({**SEED_BODY, "risk_span": 5001}, "risk_span"),
            ({**SEED_BODY, "riskSpan": 180.5}, "riskSpan"),
            ({**SEED_BODY, "cvarLevel": 0.4}, "cvarLevel"),
            ({**SEED_BODY, "cvarLevel": 1}, "cvarLevel"),
        ]
        for body, field in cases:
            with self.subTest(field=field, body=body):
                error = self.bad(body, 400, "ValidationError", field)
                self.assertEqual(error["field"], field)

    def test_a_risk_model_without_variance_for_a_symbol_says_what_to_change(self):
        # 2012-01-03..12: AAPL never fell by more than 0.28 % a day, so with a rate of
        # -100 % no daily return lies below the semicovariance benchmark rate/252.
        body = {**SEED_BODY, "startDate": "2012-01-03", "endDate": "2012-01-12",
                "riskModel": "semicovariance", "riskFreeRate": -1}
        message = ("riskModel semicovariance gives no variance to AAPL (no daily return "
                   "below riskFreeRate/252); use riskModel sample, a higher riskFreeRate, "
                   "a longer date range, or drop these symbols.")
        error = self.bad(body, 422, "OptimizationError", message)
        self.assertEqual(error, {"type": "OptimizationError", "message": message,
                                 "symbols": ["AAPL"]})

    def test_wait_false_answers_202_and_the_job_finishes(self):
        status, body = self.optimize({**SEED_BODY, "wait": False})
        self.assertEqual(status, 202, body)
        self.assertEqual(body["status"], 202)
        self.assertIn(body["data"]["status"], ("queued", "running"))
        self.assertIsNone(body["data"]["allocations"])
        done = self.wait_done(body["data"]["id"])
        self.assertEqual(done["status"], "done")
        self.assertEqual(set(done["allocations"]), {"AAPL", "MSFT", "JPM"})

    def test_wait_false_for_an_impossible_problem_answers_202_and_the_job_fails(self):
        status, body = self.optimize({**SEED_BODY, "objective": "efficient_return",
                                      "targetReturn": 5, "wait": False})
        self.assertEqual(status, 202, body)
        failed = self.wait_done(body["data"]["id"])
        self.assertEqual(failed["status"], "failed")
        self.assertIn("targetReturn", failed["error"])

    def test_bounds_that_cannot_sum_to_1_are_refused_with_advice_that_helps(self):
        cases = [
            ([0.9, 1], ("weightBounds: with 3 symbols and a lower bound of 0.9 the weights "
                        "total at least 2.7, more than 1; lower the lower bound to at most "
                        "0.333333, or give at most 1 symbol")),
            ([0.4, 1], ("weightBounds: with 3 symbols and a lower bound of 0.4 the weights "
                        "total at least 1.2, more than 1; lower the lower bound to at most "
                        "0.333333, or give at most 2 symbols")),
            ([0, 0.2], ("weightBounds: with 3 symbols and an upper bound of 0.2 the weights "
                        "total at most 0.6, less than 1; raise the upper bound to at least "
                        "0.333333, or give at least 5 symbols")),
            ([0, 0], ("weightBounds: with 3 symbols and an upper bound of 0 the weights total "
                      "at most 0, less than 1; raise the upper bound to at least 0.333333")),
        ]
        for bounds, message in cases:
            with self.subTest(bounds=bounds):
                error = self.bad({**SEED_BODY, "weightBounds": bounds}, 422,
                                 "OptimizationError", message)
                self.assertEqual(error, {"type": "OptimizationError", "message": message,
                                         "field": "weightBounds"})
        # Feasible at the edge: 4 × 0.25 is exactly 1.
        status, body = self.optimize({**SEED_BODY, "symbols": SYMBOLS[:4],
                                      "weightBounds": [0.25, 1]})
        self.assertEqual(status, 200, body)

    def test_unknown_symbols_say_how_to_add_prices(self):
        message = ("no prices for GOOG, FB; prices/symbols lists the stored symbols; "
                   "add prices with indico-prices import FILE")
        error = self.bad({**SEED_BODY, "symbols": ["AAPL", "GOOG", "FB"]}, 422,
                         "UnknownSymbols", message)
        self.assertEqual(error, {"type": "UnknownSymbols", "message": message,
                                 "symbols": ["GOOG", "FB"]})

    def test_the_request_rules_name_the_field_as_the_api_spells_it(self):
        cases = [
            ({**SEED_BODY, "symbols": ["AAPL", "aapl", "MSFT", "msft"]},
             "symbols: listed more than once: AAPL, MSFT", "symbols"),
            ({**SEED_BODY, "startDate": "03-20-16", "endDate": "01-01-12"},
             "startDate (2016-03-20) must be before endDate (2012-01-01)", "startDate"),
            ({**SEED_BODY, "startDate": "1950-01-01"},
             "endDate: the range may span at most 40 years", "endDate"),
            ({**SEED_BODY, "objective": "efficient_return"},
             "targetReturn: required by objective efficient_return", "targetReturn"),
            ({**SEED_BODY, "objective": "efficient_risk"},
             "targetVolatility: required by objective efficient_risk", "targetVolatility"),
        ]
        for body, message, field in cases:
            with self.subTest(message=message):
                error = self.bad(body, 400, "ValidationError", message)
                self.assertEqual((error["message"], error["field"]), (message, field))

    def bad(self, body, status, error_type, part):
        before = self.snapshot("jobs")
        error = self.assertError(self.optimize(body), status, error_type, part)
        self.assertEqual(self.snapshot("jobs"), before)
        return error

    def test_bad_inputs_leave_no_job_behind(self):
        cases = [
            ({**SEED_BODY, "symbols": ["AAPL", "NOPE", "ZZZ"]}, 422, "UnknownSymbols", "NOPE"),
            ({**SEED_BODY, "symbols": []}, 400, "ValidationError", "symbols"),
            ({**SEED_BODY, "symbols": ["AAPL", "aapl"]}, 400, "ValidationError", "AAPL"),
            ({**SEED_BODY, "symbols": ["AAPL", "$where"]}, 400, "ValidationError", "symbols.1"),
            ({**SEED_BODY, "symbols": "AAPL"}, 400, "ValidationError", "symbols"),
            ({**SEED_BODY, "startDate": "03-20-16", "endDate": "01-01-12"}, 400,
             "ValidationError", "before"),
            ({**SEED_BODY, "startDate": "yesterday"}, 400, "ValidationError", "startDate"),
            ({**SEED_BODY, "startDate": "2012-02-30"}, 400, "ValidationError", "startDate"),
            ({**SEED_BODY, "initialInvestment": 0}, 400, "ValidationError", "initialInvestment"),
            ({**SEED_BODY, "initialInvestment": -5}, 400, "ValidationError", "initialInvestment"),
            ({**SEED_BODY, "initialInvestment": "1000"}, 400, "ValidationError",
             "initialInvestment"),
            ({**SEED_BODY, "weightBounds": [0.6, 0.2]}, 400, "ValidationError", "weightBounds"),
            ({**SEED_BODY, "weightBounds": [0, 0.2]}, 422, "OptimizationError", "bound"),
            ({**SEED_BODY, "objective": "efficient_return"}, 400, "ValidationError",
             "targetReturn"),
            ({**SEED_BODY, "objective": "efficient_return", "targetReturn": 5}, 422,
             "OptimizationError", "reach"),
            ({**SEED_BODY, "objective": "efficient_risk", "targetVolatility": 0.01}, 422,
             "OptimizationError", "reach"),
            ({**SEED_BODY, "objective": "moon"}, 400, "ValidationError", "objective"),
            ({**SEED_BODY, "startDate": "01-01-99", "endDate": "01-05-99"}, 422, None, None),
            ({**SEED_BODY, "startDate": "2012-01-01", "start_date": "2012-01-01"}, 400,
             "ValidationError", "start_date"),
            ({**SEED_BODY, "riskFreeRate": 0.9}, 422, "OptimizationError", None),
        ]
        for body, status, error_type, part in cases:
            with self.subTest(body=body):
                before = self.snapshot("jobs")
                status_code, answer = self.optimize(body)
                self.assertEqual(status_code, status, answer)
                if error_type:
                    self.assertEqual(answer["error"]["type"], error_type, answer)
                if part:
                    self.assertIn(part.lower(), str(answer["error"]).lower())
                self.assertEqual(self.snapshot("jobs"), before)


FRONTIER_BODY = {"symbols": ["AAPL", "MSFT", "JPM", "KO"], "startDate": "2012-01-01",
                 "endDate": "2016-03-20"}


class FrontierTest(PortfolioTest):
    """portfolio/frontier: the efficient frontier over HTTP, computed and not saved."""

    def frontier(self, body, token=None):
        return self.post("/portfolio/frontier", body, token=token or self.token)

    def test_the_body_shape_and_nothing_saved(self):
        before = self.snapshot("jobs")
        status, body = self.frontier({**FRONTIER_BODY, "points": 7, "weightBounds": [0, 0.6]})
        self.assertEqual(status, 200, body)
        data = body["data"]
        self.assertEqual(set(data), {"points", "min_volatility", "max_sharpe", "corners"})
        self.assertEqual(len(data["points"]), 7)
        for portfolio in [*data["points"], *data["corners"], data["min_volatility"],
                          data["max_sharpe"]]:
            self.assertEqual(set(portfolio), {"expected_return", "volatility", "sharpe",
                                              "weights"})
            self.assertEqual(set(portfolio["weights"]), set(FRONTIER_BODY["symbols"]))
            self.assertAlmostEqual(sum(portfolio["weights"].values()), 1.0, places=9)
            self.assertTrue(all(-1e-12 <= w <= 0.6 + 1e-12
                                for w in portfolio["weights"].values()))
        self.assertEqual(data["points"][0], data["min_volatility"])
        returns = [point["expected_return"] for point in data["points"]]
        self.assertTrue(all(b > a for a, b in zip(returns, returns[1:], strict=False)))
        self.assertEqual(self.snapshot("jobs"), before)

    def test_the_points_are_optimizes_efficient_return_in_either_spelling(self):
        status, body = self.frontier({"symbols": ["aapl", "msft", "jpm", "ko"],
                                      "start_date": "01-01-12", "end_date": "03-20-16",
                                      "risk_model": "ledoit_wolf", "returnsModel": "ema",
                                      "points": 3})
        self.assertEqual(status, 200, body)
        middle = body["data"]["points"][1]
        status, job = self.optimize({**SEED_BODY, "symbols": FRONTIER_BODY["symbols"],
                                     "objective": "efficient_return",
                                     "riskModel": "ledoit_wolf", "returnsModel": "ema",
                                     "targetReturn": middle["expected_return"]})
        self.assertEqual(status, 200, job)
        for symbol, weight in job["data"]["allocations"].items():
            self.assertAlmostEqual(middle["weights"][symbol], weight, delta=1e-9)
        self.assertAlmostEqual(middle["volatility"], job["data"]["stats"]["volatility"],
                               delta=1e-9)

    def test_points_out_of_range_name_the_field(self):
        for points in (1, 201, 2.5, "50", None):
            with self.subTest(points=points):
                error = self.assertError(self.frontier({**FRONTIER_BODY, "points": points}),
                                         400, "ValidationError", "points")
                self.assertEqual(error["field"], "points")

    def test_error_paths(self):
        self.assertError(self.post("/portfolio/frontier", FRONTIER_BODY), 401, "Unauthorized",
                         "missing Authorization")
        cases = [
            ({**FRONTIER_BODY, "objective": "max_sharpe"}, 400, "ValidationError", "objective"),
            ({**FRONTIER_BODY, "targetReturn": 0.1}, 400, "ValidationError", "targetReturn"),
            ({**FRONTIER_BODY, "wait": False}, 400, "ValidationError", "wait"),
            ({**FRONTIER_BODY, "startDate": "2016-03-20", "endDate": "2012-01-01"}, 400,
             "ValidationError", "must be before endDate"),
            ({**FRONTIER_BODY, "weightBounds": [0, 0.2]}, 422, "OptimizationError",
             "weightBounds: with 4 symbols and an upper bound of 0.2"),
            ({**FRONTIER_BODY, "symbols": ["AAPL", "NOPE"]}, 422, "UnknownSymbols", "NOPE"),
            ({**FRONTIER_BODY, "riskModel": "moon"}, 400, "ValidationError", "riskModel"),
            # optimize's field, understood: what to do instead, not "unknown field".
            ({**FRONTIER_BODY, "maxAssets": 3}, 422, "OptimizationError",
             "maxAssets: portfolio/frontier has no limit on the number of assets"),
            ({**FRONTIER_BODY, "max_assets": 3}, 422,
             "OptimizationError", "ask portfolio/optimize for max_sharpe or min_volatility"),
            # The request's other rules first: impossible bounds are what to fix first.
            ({**FRONTIER_BODY, "maxAssets": 3, "weightBounds": [0, 0.2]}, 422,
             "OptimizationError", "weightBounds: with 4 symbols and an upper bound of 0.2"),
        ]
        for body, status, error_type, part in cases:
            with self.subTest(body=body):
                error = self.assertError(self.frontier(body), status, error_type, part)
                if "maxAssets" in part or "portfolio/optimize" in part:
                    self.assertEqual(error["field"], "maxAssets")

    def test_no_portfolio_beating_the_risk_free_rate_answers_a_null_max_sharpe(self):
        status, body = self.frontier({**FRONTIER_BODY, "riskFreeRate": 0.9, "points": 2})
        self.assertEqual(status, 200, body)
        self.assertIsNone(body["data"]["max_sharpe"])
        self.assertLess(body["data"]["points"][-1]["sharpe"], 0)

    def test_the_openapi_document_describes_it(self):
        status, document, _ = self.request("GET", "/openapi.json")
        self.assertEqual(status, 200)
        operation = document["paths"]["/portfolio/frontier"]["post"]
        self.assertIn("security", operation)
        self.assertIn("422", operation["responses"])
        schemas = document["components"]["schemas"]
        self.assertIn("points", schemas["FrontierRequest"]["properties"])
        self.assertNotIn("objective", schemas["FrontierRequest"]["properties"])
        self.assertNotIn("maxAssets", schemas["FrontierRequest"]["properties"])
        self.assertNotIn("max_assets", schemas["FrontierRequest"]["properties"])
        self.assertEqual(schemas["FrontierRequest"]["properties"]["points"]["maximum"], 200)


class OwnershipTest(PortfolioTest):

    def test_another_users_result_is_404_like_a_missing_one(self):
        status, body = self.optimize()
        job_id = body["data"]["id"]
        other = self.signup(email="bob@example.com")
        answers = [self.post("/portfolio/result", {"id": job_id}, token=other),
                   self.post("/portfolio/delete", {"id": job_id}, token=other),
                   self.post("/portfolio/result", {"id": "not-an-id"}, token=other),
                   self.post("/portfolio/result", {"id": "0" * 24}, token=self.token)]
        for answer in answers:
            self.assertError(answer, 404, "NotFound", "no such result")
        self.assertEqual(len({str(answer[1]) for answer in answers}), 1)
        status, body = self.post("/portfolio/list", token=other)
        self.assertEqual(body["data"], {"results": [], "cursor": None})
        self.assertEqual(len(self.find("jobs")), 1)

    def test_delete_then_404(self):
        job_id = self.optimize()[1]["data"]["id"]
        status, body = self.post("/portfolio/delete", {"id": job_id}, token=self.token)
        self.assertEqual((status, body), (200, {"status": 200, "data": {}}))
        self.assertError(self.post("/portfolio/result", {"id": job_id}, token=self.token),
                         404, "NotFound", "no such result")
        self.assertError(self.post("/portfolio/delete", {"id": job_id}, token=self.token),
                         404, "NotFound", "no such result")
        self.assertEqual(self.find("jobs"), [])

    def test_list_is_newest_first_and_paged(self):
        ids = [self.optimize({**SEED_BODY, "objective": objective})[1]["data"]["id"]
               for objective in ("max_sharpe", "min_volatility", "equal_weight")]
        status, body = self.post("/portfolio/list", {"limit": 2}, token=self.token)
        self.assertEqual(status, 200)
        page = body["data"]
        self.assertEqual([job["id"] for job in page["results"]], ids[::-1][:2])
        self.assertIsNone(page["results"][0]["performance"])  # summaries only
        status, body = self.post("/portfolio/list", {"limit": 2, "cursor": page["cursor"]},
                                 token=self.token)
        self.assertEqual([job["id"] for job in body["data"]["results"]], ids[:1])
        self.assertIsNone(body["data"]["cursor"])
        error = self.assertError(self.post("/portfolio/list", {"cursor": "garbage!"},
                                           token=self.token),
                                 400, "ValidationError", "cursor: not a cursor from portfolio/list")
        self.assertEqual(error["field"], "cursor")
        # A well-formed cursor whose date leaves the driver's range in UTC (500 before).
        beyond = cursor_of(["0001-01-01T00:00:00+05:00", ids[0]])
        self.assertError(self.post("/portfolio/list", {"cursor": beyond}, token=self.token),
                         400, "ValidationError", "cursor: not a cursor from portfolio/list")
        self.assertError(self.post("/portfolio/list", {"limit": 0}, token=self.token),
                         400, "ValidationError", "limit")

    def test_deleting_the_user_deletes_their_results(self):
        self.optimize()
        self.post("/user/delete", {"password": "correct horse"}, token=self.token)
        self.assertEqual(self.find("jobs"), [])


class LimitsTest(PortfolioTest):

    settings = {"max_active_jobs": 1, "max_symbols": 3, "max_range_years": 2}

    def test_too_many_active_jobs_is_429(self):
        from indico.db import jobs
        owner = str(self.find("users")[0]["_id"])
        # A job running in another process holds the user's only slot.
        self.io_loop.run_sync(lambda: jobs.create_job(self.db, owner, {}, 1, worker="elsewhere",
                                                      lease=600))
        before = self.snapshot("jobs")
        status, body, response = self.request("POST", "/portfolio/optimize",
                                              {**SEED_BODY, "endDate": "2013-01-01"},
                                              token=self.token)
        self.assertEqual(status, 429)
        self.assertEqual(body["error"]["type"], "TooManyRequests")
        self.assertIn("limit is 1", body["error"]["message"])
        self.assertIn("Retry-After", response.headers)
        self.assertEqual(self.snapshot("jobs"), before)

    def test_a_refused_job_leaves_its_computation_unused_and_quiet(self):
        # The engine starts as the job is written; when the quota refuses the
        # job, the computation ends unread: nothing stored, nothing logged (an
        # ERROR record, such as asyncio's "exception was never retrieved" for
        # the impossible problem, fails the test), the pool serves the next.
        from indico.db import jobs
        owner = str(self.find("users")[0]["_id"])
        holder = self.io_loop.run_sync(lambda: jobs.create_job(
            self.db, owner, {}, 1, worker="elsewhere", lease=600))
        before = self.snapshot("jobs")
        body = {**SEED_BODY, "endDate": "2013-01-01"}
        for request in (body, {**body, "objective": "efficient_return", "targetReturn": 5}):
            with self.subTest(objective=request.get("objective", "max_sharpe")):
                status, answer = self.optimize(request)
                self.assertError((status, answer), 429, "TooManyRequests", "limit is 1")
                self.wait_for_the_computations()
                self.assertEqual(self.services.jobs.background, set())
                self.assertEqual(self.services.jobs.early, {})
                self.assertEqual(self.snapshot("jobs"), before)
        self.io_loop.run_sync(lambda: self.db.jobs.delete_one({"_id": holder.id}))
        status, answer = self.optimize(body)
        self.assertEqual((status, answer["data"]["status"]), (200, "done"), answer)

    def wait_for_the_computations(self):
        """Until the background computations end, without reading their outcome.

        asyncio.wait reads no result or exception; the tasks are then dropped
        and collected, so one whose exception nobody retrieved would log
        "Task exception was never retrieved" (an ERROR record fails the test).
        """
        async def settled():
            # Read on the loop: a computation may end between two looks from here.
            pending = set(self.services.jobs.background)
            if pending:
                await asyncio.wait(pending)

        self.io_loop.run_sync(settled, timeout=60)
        gc.collect()

    def test_refused_requests_start_no_more_computations_than_the_quota(self):
        # Each refused request would otherwise leave a computation for the pool:
        # an owner at the quota could keep every worker busy. With every worker
        # held, no computation can end during the requests.
        from indico.db import jobs
        from tests.workloads import hold_until
        owner = str(self.find("users")[0]["_id"])
        self.io_loop.run_sync(lambda: jobs.create_job(
            self.db, owner, {}, 1, worker="elsewhere", lease=600))
        pool = self.services.jobs.pool
        release = os.path.join(self.data_dir, "release")
        started = [os.path.join(self.data_dir, f"started{n}") for n in range(pool.workers)]
        holds = [pool.pool.schedule(hold_until, args=(path, release)) for path in started]
        try:
            deadline = time.monotonic() + 60
            while not all(os.path.exists(path) for path in started):
                self.assertLess(time.monotonic(), deadline, "the workers were not all held")
                time.sleep(0.05)
            body = {**SEED_BODY, "endDate": "2013-01-01"}
            for _ in range(3):
                self.assertError(self.optimize(body), 429, "TooManyRequests", "limit is 1")
            self.assertEqual(self.services.jobs.early, {owner: 1})
            self.assertEqual(len(self.services.jobs.background), 1)
        finally:
            open(release, "w").close()
            for hold in holds:
                hold.result(timeout=60)
        self.wait_for_the_computations()
        self.assertEqual((self.services.jobs.early, self.services.jobs.background), ({}, set()))

    def test_symbol_and_range_limits(self):
        error = self.assertError(self.optimize({**SEED_BODY, "symbols": SYMBOLS[:4],
                                                "endDate": "2013-01-01"}),
                                 400, "ValidationError", "at most 3 symbols")
        self.assertEqual(error["field"], "symbols")
        self.assertError(self.optimize(), 400, "ValidationError", "at most 2 years")
        self.assertEqual(self.find("jobs"), [])


class TimeLimitTest(PortfolioTest):
    """A stuck job fails at the time limit; only its worker is killed."""

    settings = {"job_time_limit": 1.0, "workers": 2}

    def service_options(self):
        # A pool of its own (a worker is killed): open_services makes one of
        # INDICO_WORKERS processes and shuts it down; and workers that never
        # finish a min_volatility job: stuck however fast the machine is.
        from tests.workloads import stall_on_min_volatility, stall_on_three_points
        return {**super().service_options(), "pool": None, "work": stall_on_min_volatility,
                "frontier_work": stall_on_three_points}

    def make_app(self):
        self.pool = self.services.jobs.pool
        # Started here, with a generous deadline: a worker takes seconds to import
        # the engine on a busy machine, more than a request's 5 s.
        self.pool.pool.schedule(os.getpid).result(timeout=60)
        return super().make_app()

    def test_a_job_over_the_time_limit_fails_and_the_pool_serves_the_next(self):
        from tests.workloads import hold_until
        started = os.path.join(self.data_dir, "started")
        release = os.path.join(self.data_dir, "release")
        # Another task in flight on the other worker, until released.
        other = self.pool.pool.schedule(hold_until, args=(started, release))
        deadline = time.monotonic() + 60
        while not os.path.exists(started):
            self.assertLess(time.monotonic(), deadline, "the other task never started")
            time.sleep(0.05)
        with open(started) as handle:
            other_pid = int(handle.read())
        status, body = self.optimize({**SEED_BODY, "objective": "min_volatility"})
        message = ("the optimization took longer than the limit of 1 s; try fewer symbols, "
                   "a shorter range or a simpler objective")
        error = self.assertError((status, body), 422, "Unprocessable", message)
        [job] = self.find("jobs")
        self.assertEqual(error, {"type": "Unprocessable", "message": message, "id": job["_id"]})
        self.assertEqual((job["status"], job["error"]), ("failed", message))
        self.assertEqual(job["events"][-1]["event"], "failed")
        self.assertNotIn("slot", job)
        # The other worker was not touched: its task is still running, and ends normally.
        self.assertFalse(other.done())
        os.kill(other_pid, 0)
        open(release, "w").close()
        self.assertEqual(other.result(timeout=60), other_pid)
        # The pool serves the next job.
        status, body = self.optimize()
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"]["status"], "done")

    def test_a_job_whose_worker_died_fails_and_the_pool_serves_the_next(self):
        message = "the worker process died; try again"
        error = self.assertError(self.optimize({**SEED_BODY, "objective": "equal_weight"}),
                                 422, "Unprocessable", message)
        [job] = self.find("jobs")
        self.assertEqual(error, {"type": "Unprocessable", "message": message, "id": job["_id"]})
        self.assertEqual((job["status"], job["error"]), ("failed", message))
        status, body = self.optimize()
        self.assertEqual(status, 200, body)

    def frontier(self, points):
        body = {key: value for key, value in SEED_BODY.items() if key != "initialInvestment"}
        return self.post("/portfolio/frontier", {**body, "points": points}, token=self.token)

    def test_a_frontier_over_the_time_limit_is_a_422_and_the_pool_serves_the_next(self):
        before = self.snapshot("jobs")
        self.assertError(self.frontier(3), 422, "Unprocessable",
                         "the frontier took longer than the limit of 1 s; try fewer symbols, "
                         "points or a shorter range")
        self.assertEqual(self.snapshot("jobs"), before)  # nothing is stored
        status, body = self.frontier(5)
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body["data"]["points"]), 5)

    def test_a_frontier_whose_worker_died_is_a_422_and_the_pool_serves_the_next(self):
        error = self.assertError(self.frontier(4), 422, "Unprocessable")
        self.assertEqual(error, {"type": "Unprocessable",
                                 "message": "the worker process died; try again"})
        status, body = self.frontier(5)
        self.assertEqual(status, 200, body)
        self.assertEqual(len(body["data"]["points"]), 5)


class CommandBudgetTest(PortfolioTest):

    settings = {"price_recheck": 30.0, "session_cache": 300.0}

    def test_a_synchronous_optimize_costs_2_commands(self):
        self.assertEqual(self.optimize()[0], 200)  # warms the price cache
        self.counter.names.clear()
        status, body = self.optimize({**SEED_BODY, "objective": "min_volatility"})
        self.assertEqual(status, 200, body)
        # The new job and its result: the session, the user and the prices were
        # read by the first request and nothing changed since. The result's
        # write does not ask for the stored job back (an update, not a findAndModify).
        self.assertEqual(self.counter.names, ["insert", "update"])


PARAMS = {"symbols": ["AAPL", "MSFT", "JPM"], "start_date": "2012-01-01",
          "end_date": "2016-03-20", "initial_investment": 1000.0, "objective": "max_sharpe",
          "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0], "target_return": None,
          "target_volatility": None}


class LeaseTakeoverTest(PortfolioTest):

    def test_a_job_whose_worker_was_killed_is_finished_by_another_claim(self):
        owner = str(self.find("users")[0]["_id"])
        # A real process takes a job under its own lease, as a server does before
        # it starts optimizing, and is killed with SIGKILL before it finishes.
        script = (
            "import asyncio, json, os, sys\n"
            "from indico.db import create_client, jobs\n"
            "async def main():\n"
            "    client = create_client(sys.argv[1])\n"
            "    job = await jobs.create_job(client[sys.argv[2]], sys.argv[3],\n"
            "                                json.loads(sys.argv[4]), 5,\n"
            "                                worker=f'pid-{os.getpid()}', lease=600)\n"
            "    print(job.id, flush=True)\n"
            "    await asyncio.sleep(3600)\n"
            "asyncio.run(main())\n")
        from tests.harness import REPO
        worker = subprocess.Popen(
            [sys.executable, "-c", script, self.config.mongodb_uri, self.db_name, owner,
             json.dumps(PARAMS)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: worker.poll() is None and worker.kill())
        job_id = worker.stdout.readline().strip()
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        [stored] = self.find("jobs")
        self.assertEqual((stored["_id"], stored["status"]), (job_id, "running"))
        self.assertEqual(stored["lease_owner"], f"pid-{worker.pid}")
        service = self.services.jobs
        # While the dead worker's lease lasts, nobody may take the job over.
        self.assertFalse(self.io_loop.run_sync(service.claim_and_run))
        # Its lease runs out (moved into the past in the database: no waiting
        # on the clock), and the next look takes the job over and finishes it.
        self.io_loop.run_sync(lambda: self.db.jobs.update_one(
            {"_id": job_id}, {"$set": {"lease_expires": time.time() - 1}}))
        self.assertTrue(self.io_loop.run_sync(service.claim_and_run))
        status, body = self.post("/portfolio/result", {"id": job_id}, token=self.token)
        self.assertEqual(status, 200)
        self.assertEqual(body["data"]["status"], "done")
        self.assertEqual(set(body["data"]["allocations"]), {"AAPL", "MSFT", "JPM"})
        [job] = self.find("jobs")
        self.assertEqual(job["attempts"], 2)
        self.assertNotIn("slot", job)
        self.assertEqual([event["event"] for event in job["events"]],
                         ["queued", "running", "running", "done"])

    def test_a_claimed_job_whose_prices_vanished_fails_clearly(self):
        from indico.db import jobs
        owner = str(self.find("users")[0]["_id"])
        params = {"symbols": ["GONE", "MSFT"], "start_date": "2012-01-01",
                  "end_date": "2016-03-20", "initial_investment": 1000.0,
                  "objective": "max_sharpe", "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0],
                  "target_return": None, "target_volatility": None}
        job = self.io_loop.run_sync(lambda: jobs.create_job(self.db, owner, params, 5))
        service = self.services.jobs
        self.assertTrue(self.io_loop.run_sync(service.claim_and_run))
        [stored] = self.find("jobs")
        self.assertEqual((stored["_id"], stored["status"]), (job.id, "failed"))
        self.assertIn("GONE", stored["error"])


class OutlastsTheWaitTest(PortfolioTest):

    settings = {"job_wait": 0.0}

    def test_a_synchronous_job_that_outlasts_the_wait_answers_202_and_still_finishes(self):
        status, body = self.optimize()
        self.assertEqual(status, 202, body)
        self.assertEqual(body["data"]["status"], "running")
        done = self.wait_done(body["data"]["id"])
        self.assertEqual(done["status"], "done")
        self.assertEqual(set(done["allocations"]), {"AAPL", "MSFT", "JPM"})
