"""The test harness: one embedded database server per test run, one database per test.

With ``INDICO_MONGODB_URI`` set, tests use that server instead (``make test``
runs the suite both ways), and the tests that need the embedded server itself
are skipped with the reason (:func:`needs_embedded`). Each ``ServerTest``
opens a database of its own and the services with the server's own context
managers (:func:`indico.db.open_database`, :func:`indico.services.open_services`),
builds the real application on them, and afterwards closes both and drops that
database; requests go over HTTP through Tornado's client.
"""

import atexit
import concurrent.futures
import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
import uuid

from pymongo import monitoring
from tornado.testing import AsyncHTTPTestCase

from config import Config
from indico.app import make_app
from indico.db import open_database
from indico.db.embedded import EmbeddedServer
from indico.db.util import Clock
from indico.routes.base import InFlight
from indico.server import SERVER_MAX_HEADER
from indico.services import open_services

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_server = {}


def server_command(*arguments):
    """``python -m indico.server ARGS``, through coverage when the tests run under it."""
    if "coverage" in sys.modules:
        return [sys.executable, "-m", "coverage", "run", "-m", "indico.server", *arguments]
    return [sys.executable, "-m", "indico.server", *arguments]


# Cheapest Argon2 parameters: only tests use them (the default is OWASP's). The session
# cache as `make run` has it (on), although the tests give a database URI.
TEST_SETTINGS = {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1,
                 "load_sample_prices": False, "price_recheck": 0.0, "session_cache": 5.0}
# The operation timeout of the tests' clients: generous, so that a slow command on
# a loaded machine is not a failure; the tests of the timeouts set their own.
TEST_DB_TIMEOUT = 30.0
CPU_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-cpu")


def shared_pool():
    """One optimization process pool for the whole run (worker start-up is slow)."""
    if "pool" not in _server:
        from indico.services.pool import create_pool
        _server["pool"] = create_pool(2)
        _server["pool"].start()  # the workers import the engine while the first tests run
        atexit.register(_server["pool"].shutdown, wait=False, cancel_futures=True)
    return _server["pool"]


# Commands a client sends on its own, whatever the code asks: the connection
# handshake, authentication (with INDICO_MONGODB_URI's credentials) and the
# release of sessions at close. They depend on the server and the pool, not on
# the code under test, so command counts leave them out.
DRIVER_COMMANDS = frozenset({"hello", "isMaster", "ismaster", "saslStart", "saslContinue",
                             "authenticate", "getnonce", "logout", "endSessions"})


class CommandCounter(monitoring.CommandListener):
    """Records the command a client sends (PyMongo command monitoring).

    ``names`` holds the name of each command the code sent, in order
    (:data:`DRIVER_COMMANDS` left out); ``commands`` the command documents.
    """

    def __init__(self):
        self.names = []
        self.commands = []

    def started(self, event):
        if event.command_name in DRIVER_COMMANDS:
            return
        self.names.append(event.command_name)
        self.commands.append(dict(event.command))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def external_database():
    """The ``INDICO_MONGODB_URI`` the suite runs against, or "" for the embedded server."""
    return os.environ.get("INDICO_MONGODB_URI", "")


def needs_embedded(reason):
    """Skip a test or class when the suite runs against ``INDICO_MONGODB_URI``.

    For tests of the embedded server itself (starting, attaching to, killing
    nx-27017) and of its quirks; the skip names ``reason``, and the run's
    closing summary lists it.
    """
    return unittest.skipIf(bool(external_database()),
                           f"needs the embedded database ({reason}); "
                           "INDICO_MONGODB_URI is set")


def database_uri():
    """The test run's server: ``INDICO_MONGODB_URI``, or nx-27017 started on first use."""
    uri = external_database()
    if uri:
        return uri
    if "uri" not in _server:
        directory = tempfile.mkdtemp(prefix="indico-test-db-")
        server = EmbeddedServer(directory)
        _server["uri"] = server.start()

        def stop():
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)
        atexit.register(stop)
    return _server["uri"]


def test_config(**overrides):
    """A Config for tests: the test server, cheap hashing, no sample prices."""
    settings = {**TEST_SETTINGS, "mongodb_uri": database_uri(), **overrides}
    return Config.from_environ({}, **settings)


# The logger of the access lines; a 5xx answer is logged there at ERROR.
ACCESS_LOG = "indico.access"


@contextlib.contextmanager
def tolerate_logs(name: str):
    """Keep the records of logger ``name`` in the block from the log guard, however many.

    For a poll that may see a 5xx answer any number of times, none included,
    before the condition it waits for (``assertLogs`` needs at least one).
    Anything else expected uses ``assertLogs``.
    """
    logger = logging.getLogger(name)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.propagate = propagate


class Stop(Exception):
    """Raised by a test's sleep to end a loop that otherwise runs forever."""


def recording_sleep(rounds):
    """An injectable sleep that records its arguments and raises Stop after ``rounds`` calls."""
    waits = []

    async def sleep(seconds):
        waits.append(seconds)
        if len(waits) >= rounds:
            raise Stop
    return sleep, waits


class FakeClock(Clock):
    """A clock that runs with the real one, plus whatever :meth:`advance` added.

    Tests move it past a window instead of sleeping through it; it keeps running
    so that what the code stamps in order stays in order.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> datetime.datetime:
        return super().now() + datetime.timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return super().monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead, at once."""
        self.offset += seconds


class ServerTest(AsyncHTTPTestCase):
    """The real application on a database of its own, spoken to over HTTP.

    The database and the services are opened as the server opens them, by
    :func:`indico.db.open_database` and :func:`indico.services.open_services`
    in ``self.resources`` (an ``AsyncExitStack`` closed at tear-down), with
    the run's shared executor and worker pool and no job runner (tests claim
    jobs themselves). ``self.client`` and ``self.db`` are the test's database,
    ``self.services`` and ``self.in_flight`` what the application was given.

    Subclasses may set ``settings`` (Config overrides) for the whole class,
    give other services dependencies (:meth:`service_options`) or open the
    application's database otherwise (:meth:`open_app_database`).
    ``self.clock`` is the :class:`FakeClock` of the application's session
    store and rate limits.
    """

    settings = {}

    def setUp(self):
        self.clock = FakeClock()
        self.db_name = f"test_{uuid.uuid4().hex[:20]}"
        self.data_dir = tempfile.mkdtemp(prefix="indico-test-data-")
        self.config = test_config(database=self.db_name, data_dir=self.data_dir, **self.settings)
        self.resources = contextlib.AsyncExitStack()
        self.in_flight = InFlight()
        super().setUp()

    def client_options(self):
        """``AsyncMongoClient`` options: every command is recorded in ``self.counter``."""
        self.counter = CommandCounter()
        return {"event_listeners": [self.counter]}

    def get_httpserver_options(self):
        """The server's own head buffer, as ``indico.server`` listens: a head over
        INDICO_HEADER_LIMIT reaches the handler and gets its JSON 431."""
        return {"max_header_size": SERVER_MAX_HEADER}

    def get_app(self):
        try:
            self.io_loop.run_sync(self.open_resources)
        except BaseException:  # setUp fails (or skips): tearDown will not run
            self.io_loop.run_sync(self.resources.aclose)
            raise
        return self.make_app()

    async def open_resources(self):
        """Open the test's database, then the application's services, in ``self.resources``."""
        # The tests' client waits longer than the application would (TEST_DB_TIMEOUT).
        database_config = self.config.model_copy(update={"db_timeout": TEST_DB_TIMEOUT})
        database = await self.resources.enter_async_context(
            open_database(database_config, **self.client_options()))
        self.client, self.db = database.client, database.db
        self.resources.push_async_callback(self.client.drop_database, self.db_name)
        self.app_config, self.app_db = await self.open_app_database()
        self.services = await self.resources.enter_async_context(
            open_services(self.app_config, self.app_db, **self.service_options()))

    async def open_app_database(self):
        """``(config, db)`` of the application: the test's own; subclasses may open another."""
        return self.config, self.db

    def service_options(self):
        """Keyword arguments of ``open_services``; subclasses may add dependencies."""
        return {"cpu_executor": CPU_EXECUTOR, "pool": shared_pool(), "run_jobs": False,
                "clock": self.clock}

    def make_app(self):
        """Build the application on what :meth:`open_resources` opened."""
        return make_app(self.app_config, self.app_db, self.services, self.in_flight)

    def tearDown(self):
        self.io_loop.run_sync(self.resources.aclose)
        super().tearDown()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def request(self, method, path, body=None, token=None, headers=None):
        """Send a request; return ``(status, parsed JSON body or None, response)``."""
        headers = dict(headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        response = self.fetch(path, method=method, body=body, headers=headers,
                              allow_nonstandard_methods=True, raise_error=False)
        try:
            parsed = json.loads(response.body) if response.body else None
        except ValueError:
            parsed = None
        return response.code, parsed, response

    def post(self, route, data=None, token=None, headers=None):
        """POST ``data`` (a dict, or raw bytes/str) as JSON; return ``(status, body)``."""
        status, body, _ = self.request("POST", route, {} if data is None else data,
                                       token, headers)
        return status, body

    def find(self, collection, query=None):
        """Return every document of ``collection`` matching ``query`` (for assertions)."""
        async def read():
            return await self.db[collection].find(query or {}).to_list()
        return self.io_loop.run_sync(read)

    def snapshot(self, *collections):
        """The content of ``collections``, to check that a request changed nothing."""
        return {name: sorted(self.find(name), key=lambda doc: str(doc["_id"]))
                for name in collections}

    def expect_server_errors(self):
        """``with self.expect_server_errors():`` a block whose answers include a 5xx.

        The access line of a 5xx is an ERROR record, which fails a test that
        does not expect it (``tests/log_guard.py``); this is ``assertLogs`` on
        the access log, so the block must log at least one.
        """
        return self.assertLogs(ACCESS_LOG, logging.ERROR)

    def assertError(self, status_and_body, status, error_type, message_part=None):
        """Assert an error envelope: status, type and (part of) the message."""
        status_code, body = status_and_body
        self.assertEqual(status_code, status, body)
        self.assertEqual(body["status"], status)
        self.assertEqual(body["error"]["type"], error_type, body)
        if message_part is not None:
            self.assertIn(message_part, body["error"]["message"])
        self.assertNotIn("Traceback", json.dumps(body))
        return body["error"]

    def start_second_server(self, data_dir):
        """Start ``python -m indico.server`` on this test's database; return its base URL.

        A real second process, as a deployment runs several: it shares the
        database and, through ``data_dir``, the host's change marks. It is
        stopped with SIGTERM (and must exit 0) at cleanup.
        """
        from indico.db.embedded import _free_port
        port = _free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
        env.update({"INDICO_MONGODB_URI": self.config.mongodb_uri, "INDICO_DATABASE": self.db_name,
                    "INDICO_LOAD_SAMPLE_PRICES": "false", "INDICO_DATA_DIR": data_dir,
                    "INDICO_ARGON2_MEMORY_KIB": "8", "INDICO_ARGON2_TIME_COST": "1",
                    "INDICO_SESSION_CACHE": "5"})
        process = subprocess.Popen(server_command(f"--port={port}"), cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            self.assertEqual(process.wait(30), 0)
        self.addCleanup(stop)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/healthCheck", timeout=2)
                return base
            except OSError:
                self.assertLess(time.monotonic(), deadline, "the second server never answered")
                time.sleep(0.1)

    def signup(self, email="ada@example.com", password="correct horse", name="Ada"):
        """Create an account; return its token."""
        status, body = self.post("/auth/signup", {"email": email, "password": password,
                                                  "name": name})
        self.assertEqual(status, 201, body)
        return body["data"]["token"]
