"""The base handler: dispatch only to registered actions, the envelope, parsing, CORS."""

import asyncio
import json

from tests.harness import ServerTest

TORNADO_METHODS = ["finish", "redirect", "render", "write", "flush", "clear", "_private",
                   "__init__", "send_error", "write_error", "prepare", "get_argument",
                   "initialize", "lookup", "parse_body", "post", "get_user", "delete_user"]


class DispatchTest(ServerTest):

    def test_tornado_methods_are_not_actions(self):
        bodies = [{}, {"url": "http://evil.example/"}, {"template_name": "/etc/passwd"},
                  {"chunk": "<script>alert(1)</script>"}]
        for name in TORNADO_METHODS:
            for body in bodies:
                with self.subTest(name=name, body=body):
                    error = self.assertError(self.post(f"/user/{name}", body), 404, "NotFound")
                    self.assertEqual(error["message"], f"no action user/{name}")

    def test_tornado_method_probes_reach_no_side_effect(self):
        status, body, response = self.request("POST", "/user/redirect",
                                              {"url": "http://evil.example/"})
        self.assertEqual(status, 404)
        self.assertNotIn("Location", response.headers)
        status, body, response = self.request("POST", "/user/render",
                                              {"template_name": "config.py"})
        self.assertEqual(status, 404)
        self.assertNotIn("mongodb_uri", response.body.decode())

    def test_unknown_resource_and_action(self):
        self.assertError(self.post("/nothing/here"), 404, "NotFound", "no route /nothing/here")
        self.assertError(self.post("/auth/nothing"), 404, "NotFound", "no action auth/nothing")
        self.assertError(self.post("/auth/"), 404, "NotFound")
        self.assertError(self.post("/auth/login/extra"), 404, "NotFound")
        status, body, _ = self.request("GET", "/missing")
        self.assertEqual((status, body["error"]["type"]), (404, "NotFound"))

    def test_wrong_method_answers_405_with_allow(self):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                body = None if method in ("GET", "DELETE") else "{}"
                status, parsed, response = self.request(method, "/auth/check", body)
                self.assertEqual(status, 405)
                self.assertEqual(response.headers["Allow"], "POST, OPTIONS")
                self.assertEqual(parsed["error"]["type"], "MethodNotAllowed")
                self.assertIn(method, parsed["error"]["message"])
        status, _, response = self.request("HEAD", "/auth/check")
        self.assertEqual((status, response.headers["Allow"]), (405, "POST, OPTIONS"))

    def test_wrong_method_on_unknown_action_is_404(self):
        status, body, _ = self.request("GET", "/user/finish")
        self.assertEqual((status, body["error"]["type"]), (404, "NotFound"))

    def test_unsupported_http_method(self):
        status, body, response = self.request("PROPFIND", "/auth/check")
        self.assertEqual(status, 405)
        self.assertEqual(body["error"]["type"], "MethodNotAllowed")

    def test_get_routes_refuse_post(self):
        status, body, response = self.request("POST", "/healthCheck", "{}")
        self.assertEqual(status, 405)
        self.assertEqual(response.headers["Allow"], "GET, OPTIONS")
        self.assertEqual(body["error"]["type"], "MethodNotAllowed")

    def test_responses_are_json_objects_with_request_id(self):
        status, body, response = self.request("POST", "/auth/check", "{}")
        self.assertEqual(status, 401)
        self.assertEqual(response.headers["Content-Type"], "application/json; charset=UTF-8")
        self.assertEqual(response.headers["X-Content-Type-Options"], "nosniff")
        self.assertRegex(response.headers["X-Request-ID"], r"^[0-9a-f]{32}$")
        self.assertNotIn("Server", response.headers)
        _, _, response = self.request("POST", "/auth/check", "{}",
                                      headers={"X-Request-ID": "abc-123"})
        self.assertEqual(response.headers["X-Request-ID"], "abc-123")
        _, _, response = self.request("POST", "/auth/check", "{}",
                                      headers={"X-Request-ID": "bad id\u00e9"})
        self.assertNotEqual(response.headers["X-Request-ID"], "bad id\u00e9")

    def test_registering_an_http_method_name_is_refused(self):
        from indico.routes.base import ActionHandler, action
        with self.assertRaises(TypeError) as caught:
            class Bad(ActionHandler):  # noqa: F841 - defining it is the test
                @action()
                async def get(self, body):
                    return {}
        self.assertIn("shadow", str(caught.exception))


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
            self.assertEqual(len(self._app.settings["in_flight"]), 1)
            writer.close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                waiting = [task for task in asyncio.all_tasks()
                           if "RequestHandler._execute" in repr(task.get_coro())]
                if not waiting and not self._app.settings["in_flight"]:
                    return
            self.fail(f"still waiting for the body: {waiting}, "
                      f"in flight: {self._app.settings['in_flight']}")
        self.io_loop.run_sync(leave_mid_body)
        self.assertEqual(self.find("users"), [])

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


class CorsTest(ServerTest):

    settings = {"cors_origins": ["https://app.example.com"]}

    def test_preflight_for_configured_origin(self):
        status, body, response = self.request("OPTIONS", "/auth/login", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertEqual(status, 204)
        self.assertEqual(response.headers["Access-Control-Allow-Origin"],
                         "https://app.example.com")
        self.assertIn("POST", response.headers["Access-Control-Allow-Methods"])
        self.assertIn("Authorization", response.headers["Access-Control-Allow-Headers"])
        self.assertEqual(response.headers["Vary"], "Origin")

    def test_preflight_for_other_origin(self):
        status, body, response = self.request("OPTIONS", "/auth/login", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        self.assertEqual(status, 403)
        self.assertEqual(body["error"]["type"], "Forbidden")
        self.assertNotIn("Access-Control-Allow-Origin", response.headers)

    def test_cors_headers_on_responses(self):
        _, _, response = self.request("POST", "/auth/check", "{}",
                                      headers={"Origin": "https://app.example.com"})
        self.assertEqual(response.headers["Access-Control-Allow-Origin"],
                         "https://app.example.com")
        self.assertIn("X-Request-ID", response.headers["Access-Control-Expose-Headers"])
        _, _, response = self.request("POST", "/auth/check", "{}",
                                      headers={"Origin": "https://evil.example"})
        self.assertNotIn("Access-Control-Allow-Origin", response.headers)

    def test_options_without_origin(self):
        status, body, response = self.request("OPTIONS", "/auth/login")
        self.assertEqual(status, 204)
        self.assertEqual(response.headers["Allow"], "POST, OPTIONS")


class NoCorsByDefaultTest(ServerTest):

    def test_no_origin_is_allowed_by_default(self):
        status, body, response = self.request("OPTIONS", "/auth/login", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
        self.assertEqual(status, 403)
        self.assertNotIn("Access-Control-Allow-Origin", response.headers)
        self.assertNotIn("Vary", response.headers)


CHALLENGE = 'Bearer realm="indico"'
INVALID_TOKEN = 'Bearer realm="indico", error="invalid_token"'


class BearerSchemeTest(ServerTest):
    """RFC 7235 §2.1: the auth-scheme is case-insensitive."""

    def test_the_scheme_in_any_case(self):
        token = self.signup()
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            with self.subTest(scheme=scheme):
                status, body = self.post("/auth/check", headers={
                    "Authorization": f"{scheme} {token}"})
                self.assertEqual((status, body["data"]["user"]["email"]),
                                 (200, "ada@example.com"))
        status, _ = self.post("/auth/check", headers={"Authorization": f"bearer   {token}"})
        self.assertEqual(status, 200)  # 1*SP between scheme and credentials

    def test_other_schemes_are_still_refused(self):
        token = self.signup()
        for header in (f"Bearers {token}", f"Basic {token}", f"bearer{token}", "bearer"):
            with self.subTest(header=header):
                self.assertError(self.post("/auth/check", headers={"Authorization": header}),
                                 401, "Unauthorized", "malformed Authorization header")


class ChallengeTest(ServerTest):
    """RFC 6750 §3 and RFC 7235 §3.1: every 401 carries ``WWW-Authenticate: Bearer``."""

    def check(self, route, headers, challenge, message_part, body=None):
        status, answer, response = self.request("POST", route, {} if body is None else body,
                                                headers=headers)
        self.assertError((status, answer), 401, "Unauthorized", message_part)
        self.assertEqual(response.headers.get_list("WWW-Authenticate"), [challenge])

    def test_every_401_has_a_bearer_challenge(self):
        token = self.signup()
        self.check("/auth/check", {}, CHALLENGE, "missing Authorization")
        self.check("/user/get", {"Authorization": f"Basic {token}"}, CHALLENGE, "malformed")
        self.check("/user/get", {"Authorization": "Bearer !!!"}, INVALID_TOKEN, "malformed")
        self.check("/user/get", {"Authorization": "Bearer " + "A" * 43}, INVALID_TOKEN,
                   "invalid, expired or revoked")
        self.assertEqual(self.post("/auth/logout", token=token)[0], 200)
        self.check("/portfolio/list", {"Authorization": f"Bearer {token}"}, INVALID_TOKEN,
                   "invalid, expired or revoked")
        # Wrong credentials at login: the plain challenge (no token was presented).
        self.check("/auth/login", {}, CHALLENGE, "email or password is wrong",
                   {"email": "ada@example.com", "password": "wrong password"})

    def test_a_token_whose_account_is_gone(self):
        token = self.signup()
        self.io_loop.run_sync(lambda: self.db.users.delete_many({}))
        self.check("/user/update", {"Authorization": f"Bearer {token}"}, INVALID_TOKEN,
                   "no longer exists", {"update_user": {"name": "x"}})

    def test_other_errors_have_no_challenge(self):
        token = self.signup()
        status, body, response = self.request("POST", "/user/password", {
            "current_password": "wrong password", "new_password": "battery staple"},
            token=token)
        self.assertError((status, body), 403, "Forbidden")
        self.assertNotIn("WWW-Authenticate", response.headers)


class HeadSizeTest(ServerTest):
    """A request head over INDICO_HEADER_LIMIT gets a JSON 431, on every kind of route."""

    def test_an_oversized_authorization_header_gets_431(self):
        big = {"Authorization": "Bearer " + "A" * 200_000}
        for method, route in (("POST", "/auth/check"), ("POST", "/auth/login"),
                              ("GET", "/"), ("GET", "/healthCheck"), ("GET", "/nowhere"),
                              ("POST", "/nowhere/at-all"), ("GET", "/docs/static/missing.js"),
                              ("GET", "/ws/jobs"), ("OPTIONS", "/auth/login")):
            with self.subTest(method=method, route=route):
                status, body, response = self.request(
                    method, route, "{}" if method == "POST" else None, headers=big)
                error = self.assertError((status, body), 431, "RequestHeaderFieldsTooLarge",
                                         "the limit is 16384")
                self.assertIn("bytes", error["message"])
                self.assertEqual(response.headers["Content-Type"],
                                 "application/json; charset=UTF-8")
                self.assertRegex(response.headers["X-Request-ID"], r"^[0-9a-f]{32}$")

    def test_many_small_headers_count_too(self):
        headers = {f"X-Filler-{number}": "x" * 100 for number in range(200)}
        self.assertError(self.post("/auth/check", headers=headers), 431,
                         "RequestHeaderFieldsTooLarge")

    def test_a_head_just_under_the_limit_is_served(self):
        token = self.signup()
        status, body = self.post("/auth/check", token=token,
                                 headers={"X-Filler": "x" * (self.config.header_limit - 1024)})
        self.assertEqual(status, 200, body)


class SmallHeadLimitTest(ServerTest):

    settings = {"header_limit": 1024}

    def test_the_limit_comes_from_the_config(self):
        self.assertError(self.post("/auth/check", headers={"X-Filler": "x" * 1100}), 431,
                         "RequestHeaderFieldsTooLarge", "the limit is 1024")
        self.assertError(self.post("/auth/check", headers={"X-Filler": "x" * 500}), 401,
                         "Unauthorized")
