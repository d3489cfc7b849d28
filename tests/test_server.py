"""The server process: start, serve, stop on SIGTERM with in-flight requests finished."""

import asyncio
import errno
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request
from http.client import HTTPConnection

import pymongo
import pymongo.uri_parser
import tornado.iostream
import tornado.netutil

from indico.db.embedded import _free_port, _pid_alive
from indico.server import DrainingHTTPServer, serve, stop_listening
from tests.harness import (
    REPO,
    ServerTest,
    database_uri,
    needs_embedded,
    server_command,
    test_config,
)
from tests.relay import Relay


def log_lines(text):
    """The JSON log lines of a server's stderr, parsed (lines of another shape left out)."""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def logged(text, **fields):
    """True when a JSON log line of ``text`` has all of ``fields``."""
    return any(all(line.get(key) == value for key, value in fields.items())
               for line in log_lines(text))


def http(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def http_connection(port):
    """A kept-alive HTTP/1.1 connection to the server on ``port``."""
    return HTTPConnection("127.0.0.1", port, timeout=20)


def exchange(connection, method, path, body=None):
    """Send one request on ``connection``; return status, lower-cased headers, JSON body."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = json.loads(response.read())
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


class ServerProcessTest(unittest.TestCase):

    def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="indico-server-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, *arguments, **environ):
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("INDICO_")}
        env.update({"INDICO_DATA_DIR": self.data_dir, "INDICO_LOAD_SAMPLE_PRICES": "false",
                    "INDICO_ARGON2_MEMORY_KIB": "8", "INDICO_ARGON2_TIME_COST": "1", **environ})
        process = subprocess.Popen(server_command(*arguments), cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def wait_healthy(self, process, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assertIsNone(process.poll(), process.stderr.read() if process.poll() else "")
            try:
                status, body = http("GET", self.base + "/healthCheck", timeout=2)
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.1)
        self.fail("the server never became healthy")

    def wait_until_signing_up(self):
        """Wait until a sign-up is in flight: its first write (the address's count) is stored.

        The hashing after it takes seconds with the costly parameters these tests use.
        """
        with open(os.path.join(self.data_dir, "db", "server.json")) as handle:
            client = pymongo.MongoClient(json.load(handle)["uri"], serverSelectionTimeoutMS=5000)
        try:
            deadline = time.monotonic() + 30
            while client.indico.rate_limits.find_one({"_id": "signup:address:127.0.0.1"}) is None:
                self.assertLess(time.monotonic(), deadline, "the sign-up never reached the server")
                time.sleep(0.02)
        finally:
            client.close()

    def embedded_pid(self):
        with open(os.path.join(self.data_dir, "db", "server.json")) as handle:
            return json.load(handle)["pid"]

    @needs_embedded("runs the server on the embedded database it starts and stops")
    def test_port_flag_sigterm_finishes_in_flight_request_and_stops_the_database(self):
        # Costly hashing makes a sign-up slow enough to be in flight at SIGTERM.
        process = self.start(f"--port={self.port}", INDICO_ARGON2_TIME_COST="40",
                             INDICO_ARGON2_MEMORY_KIB="65536")
        self.assertEqual(self.wait_healthy(process), {"status": 200, "data": {"database": "ok"}})
        database_pid = self.embedded_pid()
        answers = {}

        def sign_up():
            answers["signup"] = http("POST", self.base + "/auth/signup",
                                     {"email": "late@example.com", "password": "password1"})
        thread = threading.Thread(target=sign_up)
        thread.start()
        self.wait_until_signing_up()
        process.send_signal(signal.SIGTERM)
        thread.join(30)
        self.assertEqual(process.wait(30), 0)
        status, body = answers["signup"]
        self.assertEqual(status, 201, body)
        self.assertEqual(body["data"]["user"]["email"], "late@example.com")
        deadline = time.monotonic() + 5
        while _pid_alive(database_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(_pid_alive(database_pid), "the embedded database is still running")
        with self.assertRaises(OSError):
            http("GET", self.base + "/", timeout=1)
        log = process.stderr.read()
        self.assertTrue(logged(log, message="stopped"), log)
        self.assertTrue(logged(log, path="/auth/signup", status=201), log)

    @needs_embedded("runs the server on the embedded database it starts and stops")
    def test_a_request_whose_client_left_still_finishes_before_the_database_closes(self):
        process = self.start(f"--port={self.port}", INDICO_ARGON2_TIME_COST="40",
                             INDICO_ARGON2_MEMORY_KIB="65536")
        self.wait_healthy(process)
        body = json.dumps({"email": "gone@example.com", "password": "password1"}).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as client:
            client.sendall(b"POST /auth/signup HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            self.wait_until_signing_up()
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(30), 0)
        log = process.stderr.read()
        self.assertTrue(logged(log, path="/auth/signup", status=201), log)
        self.assertFalse(logged(log, level="ERROR"), log)
        self.assertTrue(log_lines(log), log)

    @needs_embedded("runs the server on the embedded database it starts and stops")
    def test_sigterm_drains_kept_alive_connections_instead_of_closing_them(self):
        # nginx keeps connections to a backend alive and does not retry a POST
        # sent on one the backend closes: after SIGTERM the server must answer
        # on them with Connection: close and let the client close them.
        process = self.start(f"--port={self.port}", INDICO_SHUTDOWN_GRACE="30",
                             INDICO_ARGON2_TIME_COST="40", INDICO_ARGON2_MEMORY_KIB="65536")
        self.wait_healthy(process)
        kept = [http_connection(self.port) for _ in range(3)]
        for connection in kept:
            status, headers, _ = exchange(connection, "GET", "/healthCheck")
            self.assertEqual(status, 200)
            self.assertNotEqual(headers.get("connection"), "close")
        # A slow sign-up, sent on a connection the server has accepted, is in
        # flight or about to be while the server drains.
        signup = json.dumps({"email": "drain@example.com", "password": "password1"})
        kept[2].request("POST", "/auth/signup", body=signup,
                        headers={"Content-Type": "application/json"})
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.02)
        else:
            self.fail("the server kept accepting connections after SIGTERM")
        status, headers, body = exchange(kept[0], "POST", "/auth/check", "{}")
        self.assertEqual(status, 401)
        self.assertEqual(body["error"]["type"], "Unauthorized")
        self.assertEqual(headers.get("connection"), "close")
        kept[0].close()
        response = kept[2].getresponse()
        self.assertEqual(response.status, 201)
        self.assertEqual(json.loads(response.read())["data"]["user"]["email"], "drain@example.com")
        kept[2].close()
        # The sign-up has finished; the last kept connection is still served.
        status, headers, body = exchange(kept[1], "GET", "/")
        self.assertEqual((status, body["data"]["message"]), (200, "Success!"))
        self.assertEqual(headers.get("connection"), "close")
        kept[1].close()
        self.assertEqual(process.wait(30), 0)
        log = process.stderr.read()
        self.assertTrue(logged(log, message="stopped"), log)

    @needs_embedded("runs the server on the embedded database it starts and stops")
    def test_sigint_also_stops_cleanly(self):
        process = self.start(f"--port={self.port}")
        self.wait_healthy(process)
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(30), 0)

    def test_an_unusable_data_dir_fails_at_start_naming_the_variable(self):
        process = self.start(INDICO_DATA_DIR=os.path.join(REPO, "README.md", "data"))
        self.assertEqual(process.wait(30), 1)
        error = process.stderr.read()
        self.assertIn("indico: cannot start: INDICO_DATA_DIR: cannot use", error)
        self.assertIn("Not a directory", error)
        self.assertNotIn("Traceback", error)

    def test_a_database_that_does_not_answer_fails_at_start_in_one_line(self):
        process = self.start(INDICO_MONGODB_URI=f"mongodb://127.0.0.1:{_free_port()}/",
                             INDICO_DB_TIMEOUT="0.5")
        self.assertEqual(process.wait(30), 1)
        error = process.stderr.read()
        self.assertIn("indico: cannot start: the database does not answer "
                      "(INDICO_MONGODB_URI)", error)
        self.assertNotIn("Traceback", error)
        self.assertNotIn("Topology", error)

    def test_a_database_that_accepts_but_does_not_answer_fails_at_start_in_one_line(self):
        # Connections open and the driver's monitor is answered, but no
        # operation is: the operation timeout, not a ConnectionFailure, ends it.
        parsed = pymongo.uri_parser.parse_uri(database_uri())
        with Relay(*parsed["nodelist"][0]) as relay:
            relay.freeze(monitoring=True)
            process = self.start(INDICO_MONGODB_URI=relay.uri, INDICO_DB_TIMEOUT="0.5",
                                 INDICO_DATABASE=f"test_{os.getpid()}_silent")
            self.assertEqual(process.wait(60), 1)
        error = process.stderr.read()
        self.assertIn("indico: cannot start: the database does not answer "
                      "(INDICO_MONGODB_URI)", error)
        self.assertNotIn("Traceback", error)

    def test_bad_configuration_fails_at_start_naming_the_variable(self):
        process = self.start(INDICO_PORT="http")
        self.assertNotEqual(process.wait(30), 0)
        self.assertIn("INDICO_PORT", process.stderr.read())


class StopListeningTest(ServerTest):
    """The listening socket's queue at shutdown: served, not reset."""

    def test_a_connection_queued_when_the_server_stops_listening_is_served(self):
        server = DrainingHTTPServer(self._app)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        # The kernel completes the connection; the IOLoop has not accepted it
        # yet (it does not run until run_sync below).
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(client.close)
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        stop_listening(server, sockets)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        stream = tornado.iostream.IOStream(client)
        answer = self.io_loop.run_sync(stream.read_until_close, timeout=10)
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(json.loads(body)["data"]["message"], "Success!")


class ServeTest(unittest.IsolatedAsyncioTestCase):
    """``serve`` in this process: what it opened is closed when the start fails."""

    async def test_a_failure_after_the_services_opened_closes_everything(self):
        data_dir = tempfile.mkdtemp(prefix="indico-serve-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # The embedded database of its own, and a port that cannot be bound:
        # the last step of the start fails, inside both blocks.
        config = test_config(mongodb_uri="", data_dir=data_dir, embedded_start_timeout=60.0,
                             port=taken.getsockname()[1], workers=1)
        self.addCleanup(gc.unfreeze)  # serve freezes what exists before it binds
        before = asyncio.all_tasks()
        with self.assertRaises(OSError) as raised:
            await serve(config)
        self.assertEqual(raised.exception.errno, errno.EADDRINUSE)
        # No loop is left running (job runner, event poller, purge, watcher) ...
        self.assertEqual(asyncio.all_tasks(), before)
        # ... and the embedded database it started is stopped.
        self.assertFalse(os.path.exists(os.path.join(data_dir, "db", "server.json")))
