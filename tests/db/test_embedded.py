"""The embedded nx-27017 server: start, attach from a second process, stale files, stop, restart."""

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from pymongo import MongoClient, WriteConcern

from indico.db.embedded import EmbeddedServer, _answers, _pid_alive
from indico.error import StartupError
from tests.harness import needs_embedded


class Stop(Exception):
    """Raised by a test's sleep to end :meth:`EmbeddedServer.watch`."""


class FlakyServer(EmbeddedServer):
    """An embedded server whose first ``failures`` starts fail, as a busy port would."""

    def __init__(self, *args, failures=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = failures

    def start(self):
        if self.failures:
            self.failures -= 1
            raise StartupError("port 1 is already in use")
        return super().start()


@needs_embedded("starts, attaches to and kills nx-27017 processes of its own")
class EmbeddedServerTest(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="indico-embedded-")
        self.servers = []

    def tearDown(self):
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def server(self, **options):
        server = EmbeddedServer(self.directory, **options)
        self.servers.append(server)
        return server

    def test_start_writes_state_and_stop_cleans_up(self):
        server = self.server()
        uri = server.start()
        self.assertTrue(uri.startswith("mongodb://127.0.0.1:"))
        self.assertTrue(_answers(uri, 2))
        with open(server.state_path) as handle:
            self.assertEqual(json.load(handle), {"pid": server.process.pid, "uri": uri})
        process = server.process
        server.stop()
        self.assertIsNotNone(process.poll(), "the server process is still running")
        self.assertFalse(os.path.exists(server.state_path))
        self.assertFalse(_answers(uri, 0.5))

    def test_second_instance_attaches_and_does_not_stop_the_owner(self):
        owner = self.server()
        uri = owner.start()
        guest = self.server()
        self.assertEqual(guest.start(), uri)
        self.assertFalse(guest.owned)
        guest.stop()
        self.assertTrue(_answers(uri, 2))

    def test_stale_files_from_a_crash_do_not_block_a_restart(self):
        first = self.server()
        first.start()
        first.process.kill()  # a crash: the pid and state files stay behind
        first.process.wait()
        first.owned = False
        self.assertTrue(os.path.exists(first.state_path))
        second = self.server()
        uri = second.start()
        self.assertTrue(second.owned)
        self.assertTrue(_answers(uri, 2))

    def test_garbage_state_file_is_replaced(self):
        os.makedirs(os.path.join(self.directory, "db"))
        with open(os.path.join(self.directory, "db", "server.json"), "w") as handle:
            handle.write("{not json")
        with open(os.path.join(self.directory, "db", "nx-27017.pid"), "w") as handle:
            handle.write("999999")
        server = self.server()
        self.assertTrue(_answers(server.start(), 2))

    def test_data_survives_a_restart(self):
        from pymongo import MongoClient
        server = self.server()
        client = MongoClient(server.start(), serverSelectionTimeoutMS=2000)
        client.keep.things.insert_one({"_id": 1, "value": "kept"})
        client.close()
        server.stop()
        client = MongoClient(server.start(), serverSelectionTimeoutMS=2000)
        self.assertEqual(client.keep.things.find_one({"_id": 1})["value"], "kept")
        client.close()

    def test_journaled_write_survives_a_kill(self):
        from pymongo import MongoClient, WriteConcern
        server = self.server()
        client = MongoClient(server.start(), serverSelectionTimeoutMS=2000)
        things = client.keep.get_collection("things", write_concern=WriteConcern(w=1, j=True))
        things.insert_one({"_id": 2, "value": "acknowledged"})
        client.close()
        server.process.send_signal(9)
        server.process.wait()
        server.owned = False
        restarted = self.server()
        client = MongoClient(restarted.start(), serverSelectionTimeoutMS=2000)
        self.assertEqual(client.keep.things.find_one({"_id": 2})["value"], "acknowledged")
        client.close()

    def kill(self, server):
        """SIGKILL the server process, as a crash would; it leaves its files behind."""
        server.process.kill()
        server.process.wait()

    def write_acknowledged(self, uri, value):
        client = MongoClient(uri, serverSelectionTimeoutMS=2000)
        things = client.keep.get_collection("things", write_concern=WriteConcern(w=1, j=True))
        things.insert_one({"_id": value, "value": value})
        client.close()

    def read(self, uri, value):
        client = MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            return client.keep.things.find_one({"_id": value})
        finally:
            client.close()

    def test_recover_restarts_a_killed_server_on_the_same_port_with_its_data(self):
        server = self.server()
        uri = server.start()
        self.write_acknowledged(uri, "before")
        first = server.process
        self.kill(server)
        self.assertFalse(server.alive())
        with self.assertLogs("indico.db.embedded", logging.WARNING) as logs:
            self.assertEqual(asyncio.run(server.recover()), 1)
        self.assertTrue(server.alive())
        self.assertIsNot(server.process, first)
        self.assertTrue(server.owned)
        self.assertEqual(server.uri, uri)
        self.assertEqual(self.read(uri, "before")["value"], "before")
        self.assertIn("embedded database: restart attempt 1 succeeded, started at " + uri,
                      [record.getMessage().split(" (pid")[0] for record in logs.records])
        with open(server.state_path) as handle:
            self.assertEqual(json.load(handle), {"pid": server.process.pid, "uri": uri})

    def test_recover_backs_off_and_logs_one_line_per_attempt(self):
        server = FlakyServer(self.directory, failures=4)
        self.servers.append(server)
        waits = []

        async def sleep(seconds):
            waits.append(seconds)
        with self.assertLogs("indico.db.embedded", logging.WARNING) as logs:
            attempts = asyncio.run(server.recover(sleep, first_delay=0.5, max_delay=3.0))
        self.assertEqual(attempts, 5)
        self.assertEqual(waits, [0.5, 1.0, 2.0, 3.0])
        attempt_lines = [record.getMessage() for record in logs.records
                         if "restart attempt" in record.getMessage()]
        self.assertEqual(attempt_lines[:4], [
            f"embedded database: restart attempt {n} failed (port 1 is already in use); "
            f"next in {wait:g} s" for n, wait in zip(range(1, 5), waits, strict=True)])
        self.assertTrue(attempt_lines[4].startswith("embedded database: restart attempt 5 "
                                                    "succeeded, started at mongodb://"))
        self.assertEqual(len(attempt_lines), 5)
        self.assertTrue(all(record.exc_info is None for record in logs.records))
        self.assertTrue(server.alive())

    def test_watch_restarts_the_server_whenever_it_dies(self):
        server = self.server()
        uri = server.start()
        self.write_acknowledged(uri, "kept")
        started = [server.process.pid]

        async def sleep(seconds):
            # Each look at the process: kill it twice, then stop watching.
            if server.process.pid != started[-1]:
                started.append(server.process.pid)
            if len(started) == 3:
                raise Stop
            if server.alive():
                self.kill(server)
        with (self.assertLogs("indico.db.embedded", logging.WARNING) as logs,
              self.assertRaises(Stop)):
            asyncio.run(server.watch(sleep, interval=0.01))
        self.assertEqual(len(set(started)), 3)
        self.assertTrue(server.alive())
        self.assertEqual(server.uri, uri)
        self.assertEqual(self.read(uri, "kept")["value"], "kept")
        exits = [record.getMessage() for record in logs.records if "exited" in record.getMessage()]
        self.assertEqual(len(exits), 2)
        self.assertIn("exited with code -9; restarting it on the same port", exits[0])

    def test_a_process_that_attached_takes_over_when_the_server_dies(self):
        owner = self.server()
        uri = owner.start()
        self.write_acknowledged(uri, "shared")
        guest = self.server()
        guest.start()
        self.assertFalse(guest.owned)
        self.assertTrue(guest.alive())
        self.kill(owner)
        self.assertFalse(guest.alive())
        self.assertEqual(asyncio.run(guest.recover()), 1)
        self.assertTrue(guest.owned)
        self.assertEqual(guest.uri, uri)
        # The former owner finds the new server (the lock orders their starts) and attaches.
        self.assertEqual(asyncio.run(owner.recover()), 1)
        self.assertFalse(owner.owned)
        self.assertEqual(owner.pid, guest.process.pid)
        self.assertEqual(self.read(uri, "shared")["value"], "shared")
        owner.stop()  # not its server: it keeps running
        self.assertTrue(guest.alive())

    def test_a_zombie_counts_as_gone(self):
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        self.addCleanup(child.wait)
        # Wait for the exit without reaping: the process stays a zombie.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        self.assertFalse(_pid_alive(child.pid))
        self.assertTrue(_pid_alive(os.getpid()))

    def test_start_failure_is_reported(self):
        blocker = self.server()
        blocker.start()
        port = int(blocker.uri.rsplit(":", 1)[1].strip("/"))
        other_dir = tempfile.mkdtemp(prefix="indico-embedded-busy-")
        self.addCleanup(shutil.rmtree, other_dir, True)
        busy = EmbeddedServer(other_dir, start_timeout=5, port=port)
        # The port answers, but it is the other server: never mistake it for ours.
        with self.assertRaises(RuntimeError) as caught:
            busy.start()
        self.assertIn(f"port {port} is already in use", str(caught.exception))
        self.assertFalse(busy.owned)

    def test_child_entry_point_help(self):
        result = subprocess.run([sys.executable, "-m", "indico.db.embedded", "--help"],
                                capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0)
        self.assertIn("--data-dir", result.stdout)
