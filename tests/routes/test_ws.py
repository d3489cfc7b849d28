"""``/ws/jobs``: the handshake's errors, its bearer header, the token checks and the 4401
close, the origin check, and the job events it sends (of this process and of another).
"""

import json
import shutil
import tempfile
import urllib.request

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.harness import ServerTest
from tests.routes.test_portfolio import SEED_BODY, PortfolioTest

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


class WebSocketClient:
    """Connect to /ws/jobs and read its messages (for a ServerTest)."""

    def connect(self, headers=None):
        url = self.get_url("/ws/jobs").replace("http://", "ws://")
        return self.io_loop.run_sync(lambda: websocket_connect(HTTPRequest(url, headers=headers)))

    def read(self, connection, timeout=20):
        message = self.io_loop.run_sync(connection.read_message, timeout=timeout)
        return None if message is None else json.loads(message)

    def read_until_finished(self, connection, timeout=20):
        """The messages up to and with the first ``done`` or ``failed`` event."""
        events = []
        while not events or events[-1]["event"] not in ("done", "failed"):
            message = self.read(connection, timeout=timeout)
            self.assertIsNotNone(message, "the WebSocket closed")
            events.append(message)
        return events

    def post_to(self, base, path, body):
        """POST ``body`` to another server at ``base`` as this test's user: (status, body)."""
        request = urllib.request.Request(
            base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())


class BearerHeaderTest(WebSocketClient, ServerTest):
    """The ``Authorization`` header of the handshake takes the scheme in any case."""

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


class WebSocketTest(WebSocketClient, PortfolioTest):
    """Subscribing by header or first message, refusals, and the events of jobs."""

    def test_events_of_a_job_run_by_a_second_server_process(self):
        data_dir = tempfile.mkdtemp(prefix="indico-second-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        base = self.start_second_server(data_dir)
        connection = self.connect({"Authorization": f"Bearer {self.token}"})
        self.assertEqual(self.read(connection)["event"], "subscribed")
        job_id = self.post_to(base, "/portfolio/optimize", SEED_BODY)[1]["data"]["id"]
        events = self.read_until_finished(connection)
        self.assertEqual([(event["event"], event["id"]) for event in events],
                         [("queued", job_id), ("running", job_id), ("done", job_id)])
        self.assertEqual(set(events[-1]["summary"]["allocations"]), {"AAPL", "MSFT", "JPM"})
        connection.close()

    def test_events_of_a_local_job_and_token_in_the_first_message(self):
        connection = self.connect()
        connection.write_message(json.dumps({"token": self.token}))
        self.assertEqual(self.read(connection)["event"], "subscribed")
        status, body = self.optimize({**SEED_BODY, "wait": False})
        job_id = body["data"]["id"]
        events = [self.read(connection) for _ in range(3)]
        self.assertEqual([event["event"] for event in events], ["queued", "running", "done"])
        self.assertTrue(all(event["id"] == job_id for event in events))
        other = self.signup(email="bob@example.com")
        self.post("/portfolio/optimize", SEED_BODY, token=other)  # Bob's job: not for Ada
        self.optimize({**SEED_BODY, "objective": "equal_weight", "initialInvestment": 1,
                       "symbols": ["AAPL", "MSFT", "JPM", "KO", "XOM", "AMD"]})
        mine = self.read(connection)
        self.assertEqual(mine["event"], "queued")
        status, body = self.post("/portfolio/list", {"limit": 1}, token=self.token)
        self.assertEqual(mine["id"], body["data"]["results"][0]["id"])

    def test_bad_tokens_and_foreign_origins_are_refused(self):
        connection = self.connect({"Authorization": "Bearer " + "A" * 43})
        message = self.read(connection)
        self.assertEqual(message["event"], "error")
        self.assertEqual(message["error"]["type"], "Unauthorized")
        self.assertIsNone(self.read(connection))
        self.assertEqual(connection.close_code, 4401)
        connection = self.connect()
        connection.write_message("not json")
        self.assertEqual(self.read(connection)["error"]["type"], "Unauthorized")
        with self.assertRaises(HTTPClientError) as caught:
            self.connect({"Origin": "https://evil.example"})
        self.assertEqual(caught.exception.code, 403)


class AnsweredJobTest(WebSocketClient, PortfolioTest):
    """A job whose request has answered 202 ends failed with the message; it never vanishes."""

    settings = {"job_wait": 0.0}

    def test_an_impossible_job_answered_202_ends_failed_and_its_event_is_sent(self):
        connection = self.connect({"Authorization": f"Bearer {self.token}"})
        self.assertEqual(self.read(connection)["event"], "subscribed")
        status, body = self.optimize({**SEED_BODY, "objective": "efficient_return",
                                      "targetReturn": 5})
        self.assertEqual(status, 202, body)
        job_id = body["data"]["id"]
        failed = self.wait_done(job_id)
        self.assertEqual(failed["status"], "failed")
        self.assertTrue(failed["error"].startswith("targetReturn"), failed["error"])
        events = [self.read(connection) for _ in range(3)]
        self.assertEqual([(event["event"], event["id"]) for event in events],
                         [("queued", job_id), ("running", job_id), ("failed", job_id)])
        self.assertEqual(events[-1]["error"], failed["error"])
        [job] = self.find("jobs")
        self.assertEqual((job["_id"], job["status"], job["error"]),
                         (job_id, "failed", failed["error"]))
        self.assertNotIn("slot", job)  # its slot of the quota is free again
        connection.close()
