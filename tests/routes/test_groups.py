"""groups on portfolio/optimize and portfolio/frontier over HTTP: stored, applied, and
every refusal with its status and body."""

from tests.routes.test_portfolio import SEED_BODY, PortfolioTest

BODY = {**SEED_BODY, "symbols": ["AAPL", "MSFT", "JPM", "KO", "XOM"],
        "objective": "min_volatility"}
TECH = {"name": "tech", "symbols": ["aapl", "MSFT"], "min": 0.4, "max": 0.6}
ENERGY = {"name": "energy", "symbols": ["XOM"], "max": 0.05}


class GroupsOptimizeTest(PortfolioTest):

    def test_groups_are_stored_and_hold(self):
        status, body = self.optimize({**BODY, "groups": [TECH, ENERGY]})
        self.assertEqual(status, 200, body)
        data = body["data"]
        self.assertEqual(data["params"]["groups"], [
            {"name": "tech", "symbols": ["AAPL", "MSFT"], "min": 0.4, "max": 0.6},
            {"name": "energy", "symbols": ["XOM"], "min": 0.0, "max": 0.05}])
        weights = data["allocations"]
        self.assertGreaterEqual(weights["AAPL"] + weights["MSFT"], 0.4 - 1e-9)
        self.assertLessEqual(weights["AAPL"] + weights["MSFT"], 0.6 + 1e-9)
        self.assertLessEqual(weights["XOM"], 0.05 + 1e-9)
        status, free = self.optimize(BODY)
        self.assertEqual(status, 200, free)
        self.assertLess(free["data"]["allocations"]["AAPL"] + free["data"]["allocations"]["MSFT"],
                        0.4)
        self.assertIsNone(free["data"]["params"]["groups"])

    def test_every_objective_that_takes_groups(self):
        for objective, extra in (("max_sharpe", {}), ("min_volatility", {}),
                                 ("efficient_return", {"targetReturn": 0.12}),
                                 ("efficient_risk", {"target_volatility": 0.2}),
                                 ("min_cvar", {})):
            with self.subTest(objective=objective):
                status, body = self.optimize({**BODY, "objective": objective, **extra,
                                              "groups": [TECH]})
                self.assertEqual(status, 200, body)
                weights = body["data"]["allocations"]
                self.assertGreaterEqual(weights["AAPL"] + weights["MSFT"], 0.4 - 1e-9)
                self.assertLessEqual(weights["AAPL"] + weights["MSFT"], 0.6 + 1e-9)

    def test_refusals_name_the_group_and_leave_no_job(self):
        cases = [
            ([{"name": "tech", "symbols": ["AAPL", "GOOG"]}], 422, "OptimizationError",
             "group tech: GOOG not among symbols; add it to symbols or remove it from the "
             "group."),
            ([TECH, {**ENERGY, "name": "tech"}], 422, "OptimizationError",
             "group tech: the name is used by more than one group"),
            ([{**TECH, "min": 0.7}], 422, "OptimizationError",
             "group tech: min 0.7 exceeds max 0.6; swap them or lower min."),
            ([{**TECH, "max": 1.5}], 422, "OptimizationError",
             "group tech: max must be a number within [0, 1]."),
            ([{**TECH, "min": -0.2}], 422, "OptimizationError",
             "group tech: min must be a number within [0, 1]."),
            ([{**TECH, "min": "0.4"}], 400, "ValidationError", "groups.0.min"),
            ([{**TECH, "sector": "x"}], 400, "ValidationError", "groups.0.sector"),
            ([{**TECH, "symbols": []}], 400, "ValidationError", "groups.0.symbols"),
            ({"name": "tech"}, 400, "ValidationError", "groups"),
        ]
        for groups, status, error_type, message in cases:
            with self.subTest(groups=groups):
                before = self.snapshot("jobs")
                error = self.assertError(self.optimize({**BODY, "groups": groups}), status,
                                         error_type, message)
                if status == 422:
                    self.assertEqual(error["field"], "groups")
                    self.assertEqual(error["group"], "tech")
                self.assertEqual(self.snapshot("jobs"), before)

    def test_objectives_without_groups_are_refused(self):
        for objective in ("buy_and_hold_sharpe", "risk_parity", "equal_weight", "hrp",
                          "inverse_volatility", "max_diversification"):
            with self.subTest(objective=objective):
                error = self.assertError(
                    self.optimize({**BODY, "objective": objective, "groups": [TECH]}), 422,
                    "OptimizationError",
                    "groups apply to objectives max_sharpe, min_volatility, efficient_return, "
                    f"efficient_risk, min_cvar, not {objective}; remove groups")
                self.assertEqual(error["field"], "groups")

    def test_groups_that_cannot_hold_answer_422_with_the_numbers(self):
        cases = [
            ({"weightBounds": [0, 0.3]}, [{"name": "tech", "symbols": ["AAPL"], "min": 0.5}],
             "group tech: its symbols' upper bounds sum to 0.3 < min 0.5; raise their upper "
             "bounds or lower min."),
            ({}, [{"name": "tech", "symbols": ["AAPL", "MSFT"], "min": 0.6},
                  {"name": "banks", "symbols": ["JPM"], "min": 0.5}],
             "groups tech, banks cannot hold together within weightBounds and a budget of 1 "
             "(their min sum to 1.1 > 1); widen their [min, max]"),
        ]
        for extra, groups, message in cases:
            with self.subTest(groups=groups):
                self.assertError(self.optimize({**BODY, **extra, "groups": groups}), 422,
                                 "OptimizationError", message)
                self.assertError(self.post("/portfolio/frontier", {
                    **{k: v for k, v in BODY.items() if k != "objective"}, **extra,
                    "groups": groups}, token=self.token), 422, "OptimizationError", message)

    def test_the_openapi_document_describes_groups(self):
        status, document, _ = self.request("GET", "/openapi.json")
        self.assertEqual(status, 200)
        schemas = document["components"]["schemas"]
        group = schemas["GroupRequest"]
        self.assertEqual(set(group["properties"]), {"name", "symbols", "min", "max"})
        self.assertEqual(group["properties"]["min"]["maximum"], 1)


class GroupsFrontierTest(PortfolioTest):

    def test_every_point_meets_the_groups_and_is_efficient_return(self):
        body = {k: v for k, v in BODY.items() if k != "objective"}
        status, answer = self.post("/portfolio/frontier",
                                   {**body, "points": 5, "groups": [TECH, ENERGY]},
                                   token=self.token)
        self.assertEqual(status, 200, answer)
        data = answer["data"]
        for point in [*data["points"], *data["corners"], data["max_sharpe"]]:
            weights = point["weights"]
            self.assertGreaterEqual(weights["AAPL"] + weights["MSFT"], 0.4 - 1e-9)
            self.assertLessEqual(weights["AAPL"] + weights["MSFT"], 0.6 + 1e-9)
            self.assertLessEqual(weights["XOM"], 0.05 + 1e-9)
        middle = data["points"][2]
        status, job = self.optimize({**BODY, "objective": "efficient_return",
                                     "targetReturn": middle["expected_return"],
                                     "groups": [TECH, ENERGY]})
        self.assertEqual(status, 200, job)
        for symbol, weight in job["data"]["allocations"].items():
            self.assertAlmostEqual(middle["weights"][symbol], weight, delta=1e-9)
