"""prices/symbols over HTTP, the shared Symbol type, and the UnknownSymbols error shape."""

import os
import tempfile
import unittest

import pydantic

from indico import error
from indico.routes.models import Request, Symbol
from indico.services.price_import import PriceImporter
from tests.harness import ServerTest


class SymbolsRequestExample(Request):
    symbols: list[Symbol]


class PricesRouteTest(ServerTest):

    def import_text(self, text):
        handle, path = tempfile.mkstemp(suffix=".csv")
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        try:
            return self.io_loop.run_sync(lambda: PriceImporter(self.db).import_file(path))
        finally:
            os.remove(path)

    def test_symbols_needs_a_token(self):
        self.assertError(self.post("/prices/symbols"), 401, "Unauthorized")

    def test_symbols_lists_each_symbol_with_its_range(self):
        token = self.signup()
        status, body = self.post("/prices/symbols", token=token)
        self.assertEqual((status, body["data"]), (200, {"symbols": []}))
        self.import_text("Date,MSFT,AAPL\n2020-01-02,2,1\n2020-01-03,,1.5\n")
        status, body = self.post("/prices/symbols", token=token)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"]["symbols"], [
            {"symbol": "AAPL", "first": "2020-01-02", "last": "2020-01-03", "rows": 2},
            {"symbol": "MSFT", "first": "2020-01-02", "last": "2020-01-02", "rows": 1},
        ])

    def test_symbols_takes_no_arguments(self):
        token = self.signup()
        error_body = self.assertError(self.post("/prices/symbols", {"symbol": "AAPL"}, token),
                                      400, "ValidationError", "unknown field")
        self.assertEqual(error_body["field"], "symbol")
        status, _, response = self.request("GET", "/prices/symbols")
        self.assertEqual((status, response.headers["Allow"]), (405, "POST, OPTIONS"))

    def test_the_action_is_documented(self):
        status, body, _ = self.request("GET", "/openapi.json")
        self.assertEqual(status, 200)
        self.assertIn("/prices/symbols", body["paths"])


class SymbolTypeTest(unittest.TestCase):

    def test_symbols_are_normalized_and_validated(self):
        model = SymbolsRequestExample.model_validate({"symbols": [" aapl", "BRK.B", "rds-a"]})
        self.assertEqual(model.symbols, ["AAPL", "BRK.B", "RDS-A"])
        for bad in ("", "A B", "ELEVENCHARS", "A/B", 5):
            with self.subTest(bad=bad), self.assertRaises(pydantic.ValidationError) as caught:
                SymbolsRequestExample.model_validate({"symbols": [bad]})
            message = caught.exception.errors()[0]["msg"]
            self.assertTrue("not a valid symbol" in message or "valid string" in message, message)

    def test_unknown_symbols_are_a_422_listing_them(self):
        exc = error.UnknownSymbols("no prices for NOPE", symbols=["NOPE"])
        self.assertEqual(exc.status, 422)
        self.assertEqual(exc.to_dict(), {"type": "UnknownSymbols", "message": "no prices for NOPE",
                                         "symbols": ["NOPE"]})
