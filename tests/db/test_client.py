"""create_client: durability, primary reads, retries and timeouts that a URI cannot weaken."""

import unittest

from pymongo import ReadPreference, monitoring

from indico.db import create_client, ensure_indexes
from indico.db.util import DURABLE, LONG_OPERATION, find_by_ids, long_operation
from tests.harness import TEST_DB_TIMEOUT, CommandCounter, ServerTest


class ClientOptionsTest(unittest.IsolatedAsyncioTestCase):

    async def test_the_uri_cannot_weaken_reads_writes_or_retries(self):
        # A URI as a deployment might write it: secondary reads, unjournaled
        # primary-only writes, no retries.
        client = create_client(
            "mongodb://127.0.0.1:9/?readPreference=secondaryPreferred&w=1&journal=false"
            "&retryWrites=false&retryReads=false", timeout=2.5, selection_timeout=15)
        self.addAsyncCleanup(client.close)
        self.assertEqual(client.read_preference, ReadPreference.PRIMARY)
        self.assertEqual(client.write_concern, DURABLE)
        self.assertEqual(client.write_concern.document, {"w": "majority", "j": True})
        self.assertTrue(client.options.retry_writes)
        self.assertTrue(client.options.retry_reads)
        self.assertEqual(client.options.timeout, 2.5)
        self.assertEqual(client.options.server_selection_timeout, 15)
        self.assertEqual(client.options.pool_options.connect_timeout, 15)
        # Every collection inherits them.
        collection = client.indico.sessions
        self.assertEqual(collection.read_preference, ReadPreference.PRIMARY)
        self.assertEqual(collection.write_concern, DURABLE)

    async def test_selection_timeout_defaults_to_the_operation_timeout(self):
        client = create_client("mongodb://127.0.0.1:9/", timeout=3.0)
        self.addAsyncCleanup(client.close)
        self.assertEqual(client.options.timeout, 3.0)
        self.assertEqual(client.options.server_selection_timeout, 3.0)


class CommandsTest(ServerTest):
    """What the commands carry, as the server receives them (command monitoring)."""

    def test_writes_carry_the_majority_journaled_write_concern(self):
        self.signup()
        writes = [command for command in self.counter.commands if "insert" in command]
        self.assertTrue(writes)
        for command in writes:
            self.assertEqual(command["writeConcern"], {"w": "majority", "j": True})
            self.assertNotIn("wtimeout", command["writeConcern"])

    def test_every_command_has_an_operation_timeout(self):
        self.counter.commands.clear()  # not those of the index creation (a long operation)
        self.signup()
        self.assertTrue(self.counter.commands)
        for command in self.counter.commands:
            # maxTimeMS is what remains of timeoutMS when the command is sent.
            self.assertIn("maxTimeMS", command, command)
            self.assertLessEqual(command["maxTimeMS"], TEST_DB_TIMEOUT * 1000)

    def test_find_by_ids_sends_a_limit_not_a_batch_size(self):
        async def fill():
            await self.db.things.insert_many([{"_id": key} for key in range(10)])
        self.io_loop.run_sync(fill)
        self.counter.names.clear()
        self.counter.commands.clear()
        found = self.io_loop.run_sync(lambda: find_by_ids(self.db.things, [3, 1, 3, 42, 7]))
        self.assertEqual(found, [{"_id": 3}, {"_id": 1}, {"_id": 3}, None, {"_id": 7}])
        # One command, whose cursor the limit closes: no getMore, no killCursors.
        # (nx-27017 closes a cursor that has no more documents even without a
        # limit, so the command's fields are what shows the difference.)
        self.assertEqual(self.counter.names, ["find"])
        command = self.counter.commands[0]
        self.assertEqual(command["limit"], 4)  # the distinct keys
        self.assertNotIn("batchSize", command)

    def test_find_by_ids_past_the_first_batch_asks_for_one_batch(self):
        self.counter.commands.clear()
        keys = list(range(150))
        self.assertEqual(self.io_loop.run_sync(lambda: find_by_ids(self.db.things, keys)),
                         [None] * 150)
        command = self.counter.commands[0]
        # (PyMongo sends one more than the limit, so that the server closes the cursor.)
        self.assertEqual(command["limit"], 150)
        self.assertGreaterEqual(command["batchSize"], 150)

    def test_long_operations_wait_for_the_primary_then_get_longer(self):
        async def read():
            async with long_operation(self.db, seconds=TEST_DB_TIMEOUT * 4):
                return await self.db.things.find({}).to_list()
        self.counter.commands.clear()
        self.assertEqual(self.io_loop.run_sync(read), [])
        self.assertEqual(self.counter.names[-2:], ["ping", "find"])
        ping, find = self.counter.commands[-2:]
        self.assertLessEqual(ping["maxTimeMS"], TEST_DB_TIMEOUT * 1000)
        self.assertGreater(find["maxTimeMS"], TEST_DB_TIMEOUT * 1000)

    def test_index_creation_is_a_long_operation(self):
        self.counter.commands.clear()
        self.io_loop.run_sync(lambda: ensure_indexes(self.db))
        creations = [command for command in self.counter.commands if "createIndexes" in command]
        self.assertTrue(creations)
        for command in creations:
            self.assertGreater(command["maxTimeMS"], TEST_DB_TIMEOUT * 1000)
            self.assertLessEqual(command["maxTimeMS"], LONG_OPERATION * 1000)


class CommandCounterTest(unittest.TestCase):
    """The harness counts the code's commands, not the driver's own (handshake, auth, sessions)."""

    def test_driver_commands_are_left_out(self):
        counter = CommandCounter()
        for number, name in enumerate(("hello", "saslStart", "saslContinue", "find",
                                       "isMaster", "authenticate", "update", "endSessions")):
            counter.started(monitoring.CommandStartedEvent(
                {name: 1, "$db": "admin"}, "admin", number, ("127.0.0.1", 27017), number))
        self.assertEqual(counter.names, ["find", "update"])
        self.assertEqual([next(iter(command)) for command in counter.commands], ["find", "update"])


class SelectionTimeoutSettingTest(unittest.TestCase):

    def test_unset_means_the_operation_timeout_and_a_bad_value_names_the_variable(self):
        from config import Config
        from indico.error import ConfigError

        self.assertIsNone(Config.from_environ({}).db_selection_timeout)
        self.assertIsNone(Config.from_environ({"INDICO_DB_SELECTION_TIMEOUT": ""})
                          .db_selection_timeout)
        self.assertEqual(Config.from_environ({"INDICO_DB_SELECTION_TIMEOUT": "15"})
                         .db_selection_timeout, 15.0)
        for bad in ("0", "-1", "soon", "301"):
            with self.subTest(bad), self.assertRaises(ConfigError) as raised:
                Config.from_environ({"INDICO_DB_SELECTION_TIMEOUT": bad})
            self.assertIn("INDICO_DB_SELECTION_TIMEOUT", str(raised.exception))
