"""The embedded nx-27017 server: start, attach from a second process, stale files, stop."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from indico.db.embedded import EmbeddedServer, _answers
from tests.harness import needs_embedded


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
