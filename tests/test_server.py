"""The server process: start, serve, stop on SIGTERM with in-flight requests finished."""

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

import pymongo
import pymongo.uri_parser

from indico.db.embedded import _free_port, _pid_alive
from tests.harness import REPO, database_uri, needs_embedded, server_command
from tests.relay import Relay


def http(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


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
        self.assertIn('"message": "stopped"', log)
        self.assertIn('"path": "/auth/signup", "status": 201', log)

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
        self.assertIn('"path": "/auth/signup", "status": 201', log)
        self.assertNotIn('"level": "ERROR"', log)

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
