"""``open_database``: what it opens (embedded server, client, indexes, expiry purge) and closes."""

import datetime
import json
import os
import shutil
import tempfile
import unittest
import uuid

from pymongo import MongoClient
from pymongo.errors import ConfigurationError, InvalidOperation

from indico.db import open_database
from indico.db.embedded import _pid_alive
from indico.db.util import is_embedded
from tests.harness import database_uri, test_config


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class OpenDatabaseTest(unittest.IsolatedAsyncioTestCase):
    """On the test run's server: indexes, the purge on nx-27017, everything closed after."""

    def setUp(self) -> None:
        self.name = f"test_{uuid.uuid4().hex[:20]}"
        self.raw = MongoClient(database_uri(), serverSelectionTimeoutMS=30_000)
        self.addCleanup(self.raw.close)
        self.addCleanup(self.raw.drop_database, self.name)

    async def test_on_nx_27017_the_purge_runs_with_the_block_and_stops_after_it(self) -> None:
        sessions = self.raw[self.name].sessions
        sessions.insert_many([
            {"_id": "expired", "expires": utc_now() - datetime.timedelta(seconds=1)},
            {"_id": "live", "expires": utc_now() + datetime.timedelta(hours=1)},
        ])
        async with open_database(test_config(database=self.name)) as database:
            if not await is_embedded(database.db):
                self.assertIsNone(database.purge)  # MongoDB's TTL monitor does it
                self.skipTest("the server is not nx-27017: its TTL index purges")
            purge = database.purge
            # Nobody but open_database started it, and its first round has
            # ended before the block runs: the expired session is gone.
            self.assertFalse(purge.task.done())
            self.assertEqual([doc["_id"] for doc in sessions.find()], ["live"])
            self.assertIsNone(database.embedded)  # a URI: no server of its own
            client = database.client
        self.assertTrue(purge.task.done())
        with self.assertRaisesRegex(InvalidOperation, "after close"):
            await client.admin.command("ping")

    async def test_indexes_are_created(self) -> None:
        async with open_database(test_config(database=self.name)) as database:
            indexes = await database.db.users.index_information()
        self.assertTrue(any(info.get("unique") for name, info in indexes.items()
                            if name != "_id_"), indexes)

    async def test_the_client_is_closed_when_the_block_raises(self) -> None:
        with self.assertRaises(ZeroDivisionError):
            async with open_database(test_config(database=self.name)) as database:
                client, purge = database.client, database.purge
                raise ZeroDivisionError("the block fails")
        with self.assertRaisesRegex(InvalidOperation, "after close"):
            await client.admin.command("ping")
        if purge is not None:
            self.assertTrue(purge.task.done())


class EmbeddedDatabaseTest(unittest.IsolatedAsyncioTestCase):
    """Without a URI: the embedded nx-27017 of the data directory, started and stopped."""

    def setUp(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="indico-open-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)
        self.config = test_config(mongodb_uri="", data_dir=self.data_dir,
                                  embedded_start_timeout=60.0)
        self.state = os.path.join(self.data_dir, "db", "server.json")

    def started_pid(self) -> int:
        with open(self.state) as handle:
            return json.load(handle)["pid"]

    async def test_starts_watches_purges_and_stops_the_embedded_database(self) -> None:
        async with open_database(self.config) as database:
            embedded = database.embedded
            self.assertTrue(embedded.owned)
            pid = self.started_pid()
            self.assertTrue(embedded.alive())
            self.assertIsNotNone(database.purge)
            self.assertEqual(await database.db.command("ping"), {"ok": 1.0})
            purge = database.purge
        self.assertTrue(purge.task.done())
        self.assertFalse(_pid_alive(pid), "the embedded database is still running")
        self.assertFalse(os.path.exists(self.state))

    async def test_a_failure_after_the_start_stops_the_embedded_database(self) -> None:
        # The client refuses an unknown option: after the server has started.
        with self.assertRaises(ConfigurationError):
            async with open_database(self.config, noSuchOption=1):
                self.fail("the block ran")
        self.assertFalse(os.path.exists(self.state), "the embedded database was left running")

    async def test_an_attached_database_is_left_running(self) -> None:
        async with open_database(self.config) as first:
            pid = self.started_pid()
            async with open_database(self.config, watch=False) as second:
                self.assertFalse(second.embedded.owned)
                self.assertEqual(second.embedded.pid, pid)
            self.assertTrue(_pid_alive(pid))
            self.assertEqual(await first.db.command("ping"), {"ok": 1.0})
        self.assertFalse(_pid_alive(pid))


if __name__ == "__main__":
    unittest.main()
