"""A database that cannot serve (down, silent, failing over, short of a majority): 503, not 500."""

import asyncio
import json
import time
import unittest

from pymongo import uri_parser
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WTimeoutError,
)

from indico import error
from indico.db import open_database
from indico.db.util import unreachable
from indico.routes.base import DATABASE_RETRY_AFTER, _public
from tests.harness import (
    ACCESS_LOG,
    ServerTest,
    test_config,
    tolerate_logs,
)
from tests.relay import Relay

NOT_CONFIRMED = ("the database did not confirm the write (it may still be applied); "
                 "try again shortly")
NO_ANSWER = "the database does not answer; try again shortly"


def bulk_error(write_errors=(), write_concern_errors=()):
    """A BulkWriteError as PyMongo raises it from a bulk write's merged replies."""
    return BulkWriteError({"writeErrors": list(write_errors),
                           "writeConcernErrors": list(write_concern_errors),
                           "nInserted": 0, "nUpserted": 0, "nMatched": 1, "nModified": 1,
                           "nRemoved": 0, "upserted": []})


class MappingTest(unittest.TestCase):
    """The real PyMongo exceptions, as the driver builds them, through the one mapper."""

    def assertUnavailable(self, exception, message):
        public = _public(exception)
        self.assertIsInstance(public, error.ServiceUnavailable, repr(exception))
        self.assertEqual((public.status, public.retry_after), (503, DATABASE_RETRY_AFTER))
        self.assertEqual(public.to_dict(), {"type": "ServiceUnavailable", "message": message,
                                            "retry_after": DATABASE_RETRY_AFTER})

    def test_write_concern_errors_are_503(self):
        majority_unreachable = {"code": 100, "codeName": "UnsatisfiableWriteConcern",
                                "errmsg": "Not enough data-bearing nodes"}
        self.assertUnavailable(WriteConcernError(majority_unreachable["errmsg"], 100,
                                                 majority_unreachable), NOT_CONFIRMED)
        # A bulk write (users.update_users re-raises it) whose writes were
        # applied but not confirmed by a majority.
        self.assertUnavailable(bulk_error(write_concern_errors=[majority_unreachable]),
                               NOT_CONFIRMED)

    def test_timeouts_are_503(self):
        for exception in (
                NetworkTimeout("127.0.0.1:27017: timed out"),
                ServerSelectionTimeoutError("No servers found yet, Timeout: 2.0s"),
                ExecutionTimeout("operation exceeded time limit", 50,
                                 {"ok": 0, "code": 50, "codeName": "MaxTimeMSExpired"}),
                WTimeoutError("waiting for replication timed out", 64,
                              {"code": 64, "errInfo": {"wtimeout": True}}),
                bulk_error(write_errors=[{"index": 0, "code": 50,
                                          "errmsg": "operation exceeded time limit"}])):
            with self.subTest(type(exception).__name__):
                self.assertTrue(exception.timeout)
                # A write concern that timed out: applied, not confirmed.
                self.assertUnavailable(exception, NOT_CONFIRMED
                                       if isinstance(exception, WTimeoutError) else NO_ANSWER)

    def test_connection_failures_and_failovers_are_503(self):
        self.assertUnavailable(ConnectionFailure("connection refused"), NO_ANSWER)
        self.assertUnavailable(AutoReconnect("connection closed"), NO_ANSWER)
        stepped_down = OperationFailure("not primary", 10107,
                                        {"ok": 0, "code": 10107,
                                         "errorLabels": ["RetryableWriteError"]})
        self.assertUnavailable(stepped_down, "the database is electing a new primary; "
                                             "try again shortly")

    def test_other_errors_are_left_alone(self):
        duplicate = DuplicateKeyError("E11000 duplicate key", 11000)
        own_mistakes = bulk_error(write_errors=[{"index": 0, "code": 11000,
                                                 "errmsg": "E11000 duplicate key"}])
        for exception in (duplicate, own_mistakes, OperationFailure("bad query", 2),
                          ValueError("a bug"), error.NotFound("no such thing"), None):
            with self.subTest(repr(exception)):
                self.assertIs(_public(exception), exception)


class RelayedDatabaseTest(ServerTest):
    """The app on the test run's server through a relay (tests/relay.py) that can misbehave.

    ``timeout`` is the app's operation timeout (INDICO_DB_TIMEOUT).
    """

    timeout = 1.0
    #: The driver's monitor checks: far apart unless a test needs them (see below).
    heartbeat_ms = 600_000

    async def open_app_database(self):
        parsed = uri_parser.parse_uri(self.config.mongodb_uri)
        if len(parsed["nodelist"]) != 1:
            self.skipTest("the relay needs a single-server INDICO_MONGODB_URI")
        self.relay = Relay(*parsed["nodelist"][0])
        credentials = {key: value for key, value in (("username", parsed["username"]),
                                                      ("password", parsed["password"]))
                       if value is not None}
        if "authsource" in parsed["options"]:
            credentials["authSource"] = parsed["options"]["authsource"]
        # The driver's monitor would notice the silence too, at its next check
        # (heartbeatFrequencyMS, 10 s by default), and fail the operations in
        # flight. Checks far apart stand for a server that still answers its
        # monitor while operations hang (a lock, a stalled disk): only the
        # operation timeout can end such a request.
        config = test_config(mongodb_uri=self.relay.uri, database=self.db_name,
                             data_dir=self.data_dir, db_timeout=self.timeout)
        database = await self.resources.enter_async_context(open_database(
            config, directConnection=True, heartbeatFrequencyMS=self.heartbeat_ms,
            **credentials))
        self.relay_client = database.client
        return config, database.db

    def tearDown(self):
        self.relay.thaw()
        super().tearDown()
        self.relay.close()

    def wait_healthy(self):
        """Poll the health check until it answers 200 again (a generous deadline)."""
        deadline = time.monotonic() + 60
        with tolerate_logs(ACCESS_LOG):  # its 503s until then
            while self.request("GET", "/healthCheck")[0] != 200:
                self.assertLess(time.monotonic(), deadline, "the app did not recover")
                time.sleep(0.1)


class SilentDatabaseTest(RelayedDatabaseTest):
    """A database that accepts connections but stops answering.

    Frozen, the relay keeps every connection open and accepts new ones, but
    no request passes.
    """

    def test_a_database_whose_operations_hang_answers_503_then_the_app_recovers(self):
        token = self.signup()
        self.assertEqual(self.post("/user/update", {"update_user": {"name": "Before"}},
                                   token=token)[0], 200)
        # The server still answers the driver's monitor, so only the operation
        # timeout ends the request (before it, the request waited forever).
        self.relay.freeze(monitoring=True)
        with self.assertLogs("indico.routes.base", "WARNING") as logs, \
                self.expect_server_errors():
            status, body, response = self.request(
                "POST", "/user/update", {"update_user": {"name": "Frozen"}}, token=token)
        self.assertEqual(status, 503, body)
        self.assertEqual(body, {"status": 503, "error": {
            "type": "ServiceUnavailable", "message": NO_ANSWER,
            "retry_after": DATABASE_RETRY_AFTER}})
        self.assertEqual(response.headers["Retry-After"], str(DATABASE_RETRY_AFTER))
        self.assertEqual(response.headers["Content-Type"], "application/json; charset=UTF-8")
        # One line, no traceback.
        self.assertEqual(len(logs.records), 1, logs.output)
        self.assertIsNone(logs.records[0].exc_info)
        self.assertIn("POST /user/update -> 503, the database does not answer", logs.output[0])
        with self.expect_server_errors():
            status, body, _ = self.request("GET", "/healthCheck")
        self.assertEqual(status, 503, body)
        self.assertEqual(body["error"]["type"], "ServiceUnavailable")
        self.assertIn("the database does not answer", body["error"]["message"])
        self.assertGreater(self.relay.connections, 0)

        self.relay.thaw()
        self.wait_healthy()
        status, body = self.post("/user/update", {"update_user": {"name": "After"}},
                                 token=token)
        self.assertEqual((status, body["data"]["user"]["name"]), (200, "After"), body)
        self.assertNotIn("Traceback", json.dumps(body))

    def test_a_database_that_stops_answering_altogether_answers_503_then_recovers(self):
        token = self.signup()
        self.relay.freeze()
        with self.expect_server_errors() as logs:
            status, body, response = self.request(
                "POST", "/user/update", {"update_user": {"name": "Frozen"}}, token=token)
            self.assertError((status, body), 503, "ServiceUnavailable", NO_ANSWER)
            self.assertEqual(response.headers["Retry-After"], str(DATABASE_RETRY_AFTER))
            self.assertError(self.post("/auth/signup", {"email": "b@example.com",
                                                        "password": "password1"}),
                             503, "ServiceUnavailable", NO_ANSWER)
            self.assertEqual(self.request("GET", "/healthCheck")[0], 503)
        self.assertEqual(len(logs.records), 3, logs.output)  # one access line each
        self.relay.thaw()
        self.wait_healthy()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)


class DeadDatabaseTest(RelayedDatabaseTest):
    """A database process that died: connections refused until it is back.

    The operation timeout is a minute here, so a request that waited it out
    in server selection (as every request did before ``ensure_reachable``)
    would outlast the test client's own timeout; the monitor checks every
    half second (PyMongo's minimum), as the driver would notice in production
    at its next check or at the first failed operation.
    """

    timeout = 60.0
    heartbeat_ms = 500

    def wait_unreachable(self):
        """Poll until the driver has seen the database gone (a generous deadline)."""
        deadline = time.monotonic() + 60
        while not unreachable(self.relay_client):
            self.assertLess(time.monotonic(), deadline, "the driver never saw the database go")
            # The driver's monitor runs on this thread's IOLoop: let it run.
            self.io_loop.run_sync(lambda: asyncio.sleep(0.05))

    def test_requests_answer_503_at_once_while_it_is_down_then_the_app_recovers(self):
        token = self.signup()
        self.assertFalse(unreachable(self.relay_client))
        self.relay.refuse()
        self.wait_unreachable()
        with self.expect_server_errors() as logs:
            status, body, response = self.request(
                "POST", "/user/update", {"update_user": {"name": "Down"}}, token=token)
            self.assertError((status, body), 503, "ServiceUnavailable", NO_ANSWER)
            self.assertEqual(response.headers["Retry-After"], str(DATABASE_RETRY_AFTER))
            self.assertError(self.post("/auth/signup", {"email": "b@example.com",
                                                        "password": "password1"}),
                             503, "ServiceUnavailable", NO_ANSWER)
            self.assertError(self.post("/portfolio/list", {}, token=token),
                             503, "ServiceUnavailable", NO_ANSWER)
            status, body, _ = self.request("GET", "/healthCheck")
            self.assertError((status, body), 503, "ServiceUnavailable",
                             "the database does not answer")
        self.assertEqual(len(logs.records), 4, logs.output)  # one access line each
        self.assertEqual(self.find("users", {"email": "b@example.com"}), [])
        self.relay.accept()
        self.wait_healthy()
        self.assertFalse(unreachable(self.relay_client))
        status, body = self.post("/user/update", {"update_user": {"name": "Back"}}, token=token)
        self.assertEqual((status, body["data"]["user"]["name"]), (200, "Back"), body)


class UnconfirmedWritesTest(RelayedDatabaseTest):
    """Replies that carry a writeConcernError, as a replica set's when no majority confirms."""

    timeout = 5.0
    MAJORITY_TIMED_OUT = {"code": 64, "codeName": "WriteConcernTimeout",
                          "errmsg": "waiting for replication timed out",
                          "errInfo": {"wtimeout": True, "writeConcern": {"w": "majority"}}}

    def test_an_unconfirmed_write_answers_503_not_500(self):
        token = self.signup()
        self.relay.fail_write_concern(self.MAJORITY_TIMED_OUT)
        # insert_one raises WriteConcernError.
        with self.assertLogs("indico.routes.base", "WARNING") as logs, \
                self.expect_server_errors():
            status, body, response = self.request(
                "POST", "/auth/signup", {"email": "b@example.com", "password": "password1"})
        self.assertEqual((status, body), (503, {"status": 503, "error": {
            "type": "ServiceUnavailable", "message": NOT_CONFIRMED,
            "retry_after": DATABASE_RETRY_AFTER}}))
        self.assertEqual(response.headers["Retry-After"], str(DATABASE_RETRY_AFTER))
        self.assertEqual(len(logs.records), 1, logs.output)
        self.assertIsNone(logs.records[0].exc_info)
        self.assertIn("-> 503, the database did not confirm the write", logs.output[0])
        self.assertIn("WTimeoutError", logs.output[0])  # a WriteConcernError
        # Profile changes go through one bulk write (users.update_users), whose
        # BulkWriteError carries the write-concern error.
        with self.assertLogs("indico.routes.base", "WARNING") as logs, \
                self.expect_server_errors():
            self.assertError(self.post("/user/update", {"update_user": {"name": "Unsure"}},
                                       token=token), 503, "ServiceUnavailable", NOT_CONFIRMED)
        self.assertIn("BulkWriteError", logs.output[0])
        # Applied all the same (hence "it may still be applied").
        self.relay.fail_write_concern(None)
        status, body = self.post("/user/get", token=token)
        self.assertEqual((status, body["data"]["user"]["name"]), (200, "Unsure"))
