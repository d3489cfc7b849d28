"""The handler base: the envelope and its headers, request ids, CORS, bearer tokens, head size."""

from tests.harness import ServerTest


class EnvelopeTest(ServerTest):

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
