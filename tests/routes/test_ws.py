"""``/ws/jobs`` before the upgrade: the handshake's errors and its bearer header.

(The job events themselves are tested with the portfolio jobs.)
"""

import json

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.harness import ServerTest

JSON = "application/json; charset=UTF-8"
HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


class HandshakeErrorsTest(ServerTest):
    """Every refusal of ``/ws/jobs`` is the JSON envelope, not tornado's plain text."""

    def check(self, method, headers, status, error_type, message_part=None):
        code, body, response = self.request(method, "/ws/jobs",
                                            "{}" if method == "POST" else None, headers=headers)
        self.assertEqual(response.headers["Content-Type"], JSON)
        error = self.assertError((code, body), status, error_type, message_part)
        self.assertRegex(response.headers["X-Request-ID"], r"^[0-9a-f]{32}$")
        return error, response

    def test_post_is_a_json_405(self):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                _, response = self.check(method, {}, 405, "MethodNotAllowed",
                                         f"method {method} is not allowed")
                self.assertEqual(response.headers["Allow"], "GET, OPTIONS")

    def test_head_and_options(self):
        code, _, response = self.request("HEAD", "/ws/jobs")
        self.assertEqual((code, response.headers["Content-Type"], response.body),
                         (405, JSON, b""))
        code, _, response = self.request("OPTIONS", "/ws/jobs")
        self.assertEqual((code, response.headers["Allow"]), (204, "GET, OPTIONS"))

    def test_get_without_upgrade_is_a_json_400(self):
        self.check("GET", {}, 400, "BadRequest", 'Can "Upgrade" only to "WebSocket"')
        self.check("GET", {"Upgrade": "websocket", "Connection": "keep-alive"}, 400,
                   "BadRequest", '"Connection" must be "Upgrade"')
        headers = {key: value for key, value in HANDSHAKE.items() if key != "Sec-WebSocket-Key"}
        self.check("GET", headers, 400, "BadRequest", "Missing/Invalid WebSocket headers")

    def test_another_version_is_a_json_426(self):
        _, response = self.check("GET", {**HANDSHAKE, "Sec-WebSocket-Version": "8"}, 426,
                                 "UpgradeRequired", "version 13")
        self.assertEqual(response.headers["Sec-WebSocket-Version"], "13")

    def test_a_foreign_origin_is_a_json_403(self):
        self.check("GET", {**HANDSHAKE, "Origin": "https://evil.example"}, 403, "Forbidden",
                   "INDICO_CORS_ORIGINS")


class BearerHeaderTest(ServerTest):
    """The ``Authorization`` header of the handshake takes the scheme in any case."""

    def connect(self, headers):
        url = self.get_url("/ws/jobs").replace("http://", "ws://")
        return self.io_loop.run_sync(lambda: websocket_connect(HTTPRequest(url, headers=headers)))

    def read(self, connection):
        message = self.io_loop.run_sync(connection.read_message, timeout=20)
        return None if message is None else json.loads(message)

    def test_the_scheme_in_any_case_subscribes(self):
        token = self.signup()
        [user] = self.find("users")
        for scheme in ("Bearer", "bearer", "BEARER"):
            with self.subTest(scheme=scheme):
                connection = self.connect({"Authorization": f"{scheme} {token}"})
                self.assertEqual(self.read(connection),
                                 {"event": "subscribed", "user": str(user["_id"])})
                # Upgraded, it no longer counts as a request in flight (shutdown waits for those).
                self.assertEqual(self.in_flight.handlers, set())
                connection.close()

    def test_a_bad_token_is_refused_after_the_upgrade(self):
        connection = self.connect({"Authorization": "bearer " + "A" * 43})
        message = self.read(connection)
        self.assertEqual((message["event"], message["error"]["type"]), ("error", "Unauthorized"))
        self.assertIsNone(self.read(connection))
        self.assertEqual(connection.close_code, 4401)

    def test_an_oversized_handshake_is_a_json_431(self):
        with self.assertRaises(HTTPClientError) as caught:
            self.connect({"Authorization": "Bearer " + "A" * 200_000})
        self.assertEqual(caught.exception.code, 431)
        body = json.loads(caught.exception.response.body)
        self.assertEqual(body["error"]["type"], "RequestHeaderFieldsTooLarge")
