"""Request bodies: strict JSON, nesting depth, content type, size, validation messages."""

import asyncio
import json
import unittest

import pydantic

from indico import error
from indico.routes.body import parse_body, validate
from tests.harness import ServerTest


class ParsingTest(ServerTest):
    """Every malformed body is a 4xx envelope and nothing is written."""

    def signup_body(self, raw, headers=None):
        headers = {"Content-Type": "application/json", **(headers or {})}
        before = self.snapshot("users", "sessions")
        status, body, _ = self.request("POST", "/auth/signup", raw, headers=headers)
        self.assertEqual(self.snapshot("users", "sessions"), before)
        return status, body

    def test_invalid_json(self):
        error = self.assertError(self.signup_body(b'{"email": '), 400, "BadRequest")
        self.assertIn("not valid JSON", error["message"])
        self.assertIn("line 1", error["message"])

    def test_json_not_an_object(self):
        for raw, kind in ((b"[]", "list"), (b'"x"', "str"), (b"3", "int"), (b"null", "NoneType")):
            with self.subTest(raw=raw):
                error = self.assertError(self.signup_body(raw), 400, "BadRequest")
                self.assertEqual(error["message"], f"the body must be a JSON object, not {kind}")

    def test_invalid_utf8(self):
        error = self.assertError(self.signup_body(b'{"email": "\xff\xfe"}'), 400, "BadRequest")
        self.assertIn("not valid UTF-8", error["message"])

    def test_nan_is_not_json(self):
        error = self.assertError(self.signup_body(b'{"email": NaN}'), 400, "BadRequest")
        self.assertIn("NaN is not valid JSON", error["message"])

    def test_wrong_content_type(self):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            with self.subTest(content_type=content_type):
                error = self.assertError(
                    self.signup_body(b'{"email": "a@b.co"}', {"Content-Type": content_type}),
                    415, "UnsupportedMediaType")
                self.assertIn("application/json", error["message"])

    def test_content_type_with_charset_is_fine(self):
        status, body = self.post("/auth/signup", json.dumps(
            {"email": "a@example.com", "password": "password1"}),
            headers={"Content-Type": "Application/JSON; charset=utf-8"})
        self.assertEqual(status, 201, body)

    def test_deeply_nested_json(self):
        raw = "[" * 5000 + "]" * 5000
        error = self.assertError(self.signup_body('{"a": ' + raw + "}"), 400, "BadRequest")
        self.assertIn("nested deeper than 32", error["message"])

    def test_brackets_inside_strings_do_not_count_as_nesting(self):
        status, body = self.signup_body(json.dumps({"name": "[" * 100, "email": 1}))
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["type"], "ValidationError")

    def test_validation_names_the_field(self):
        error = self.assertError(self.signup_body(json.dumps({"email": "a@example.com"})),
                                 400, "ValidationError")
        self.assertEqual(error["field"], "password")
        self.assertEqual(error["message"], "password: required field is missing")

    def test_unknown_field_is_named(self):
        error = self.assertError(
            self.signup_body(json.dumps({"email": "a@example.com", "password": "password1",
                                         "role": "admin"})), 400, "ValidationError")
        self.assertEqual(error["field"], "role")

    def test_validation_errors_do_not_echo_input(self):
        secret = "s3cret-value-not-an-email"
        status, body = self.signup_body(json.dumps({"email": secret, "password": "password1"}))
        self.assertEqual(status, 400)
        self.assertNotIn(secret, json.dumps(body))

    def test_empty_body_counts_as_empty_object(self):
        error = self.assertError(self.signup_body(b""), 400, "ValidationError")
        self.assertEqual(error["field"], "email")
        error = self.assertError(self.signup_body(b" \r\n\t"), 400, "ValidationError")
        self.assertEqual(error["field"], "email")

    def test_white_space_that_is_not_json_is_not_an_empty_body(self):
        token = self.signup()
        for raw in (b"\x0c", b"\x0b", b" \x0c "):
            with self.subTest(raw=raw):
                status, body = self.post("/prices/symbols", raw, token=token,
                                         headers={"Content-Type": "application/json"})
                self.assertError((status, body), 400, "BadRequest", "not valid JSON")

    def test_body_over_the_limit(self):
        raw = json.dumps({"email": "a@example.com", "password": "x" * (70 * 1024)})
        error = self.assertError(self.signup_body(raw), 413, "PayloadTooLarge")
        self.assertIn(str(self.config.body_limit), error["message"])

    def test_chunked_body_over_the_limit(self):
        chunks = [b'{"password": "'] + [b"x" * 8192] * 10 + [b'"}']

        def producer(write):
            for chunk in chunks:
                write(chunk)
        response = self.fetch("/auth/signup", method="POST", body_producer=producer,
                              headers={"Content-Type": "application/json"}, raise_error=False)
        self.assertEqual(response.code, 413)
        body = json.loads(response.body)
        self.assertEqual(body["error"]["type"], "PayloadTooLarge")

    def test_a_client_that_leaves_mid_body_leaves_nothing_behind(self):
        async def leave_mid_body():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.get_http_port())
            writer.write(b"POST /auth/signup HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            await writer.drain()
            await asyncio.sleep(0.1)
            self.assertEqual(len(self.in_flight.handlers), 1)
            writer.close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                waiting = [task for task in asyncio.all_tasks()
                           if "RequestHandler._execute" in repr(task.get_coro())]
                if not waiting and not self.in_flight.handlers:
                    return
            self.fail(f"still waiting for the body: {waiting}, "
                      f"in flight: {self.in_flight.handlers}")
        self.io_loop.run_sync(leave_mid_body)
        self.assertEqual(self.find("users"), [])


class Limited(pydantic.BaseModel):
    """A request model that reads a limit from the validation context."""

    symbols: list[str]

    @pydantic.field_validator("symbols")
    @classmethod
    def at_most(cls, value, info):
        limit = (info.context or {}).get("max_symbols")
        if limit is not None and len(value) > limit:
            raise ValueError(f"at most {limit} symbols")
        return value


class ValidateTest(unittest.TestCase):
    """``validate`` and ``parse_body`` on their own."""

    def test_the_context_reaches_the_model(self):
        document = {"symbols": ["A", "B", "C"]}
        self.assertEqual(validate(Limited, document).symbols, ["A", "B", "C"])
        self.assertEqual(validate(Limited, document, context={"max_symbols": 3}).symbols,
                         ["A", "B", "C"])
        with self.assertRaises(error.ValidationError) as caught:
            validate(Limited, document, context={"max_symbols": 2})
        self.assertEqual(caught.exception.to_dict()["field"], "symbols")
        self.assertIn("at most 2 symbols", caught.exception.message)

    def test_parse_body(self):
        self.assertEqual(parse_body(b"", "", 32), {})
        self.assertEqual(parse_body(b' {"a": [1]} ', "application/json", 32), {"a": [1]})
        with self.assertRaises(error.UnsupportedMediaType):
            parse_body(b"{}", "text/plain", 32)
        with self.assertRaises(error.BadRequest) as caught:
            parse_body(b"[[1]]", "application/json", 1)
        self.assertIn("nested deeper than 1", caught.exception.message)
