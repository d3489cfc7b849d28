"""db.util: expiry indexes (TTL on MongoDB, plain plus purge on nx-27017), ids, cancellation."""

import asyncio
import datetime
import unittest

from bson import ObjectId

from indico.db import purge_all_expired
from indico.db.util import (
    create_expiry_index,
    is_embedded,
    now,
    object_id,
    reraise_lost_cancellation,
)
from tests.harness import ServerTest, needs_embedded


class ExpiryTest(ServerTest):

    def indexes(self, name):
        return self.io_loop.run_sync(lambda: self.db[name].index_information())

    def test_ttl_index_on_mongodb_plain_index_on_nx(self):
        self.io_loop.run_sync(lambda: create_expiry_index(self.db, "things", embedded=False))
        ttl = [info for info in self.indexes("things").values() if "expireAfterSeconds" in info]
        self.assertEqual([info["key"] for info in ttl], [[("expires", 1)]])
        # Switching to the embedded server's scheme drops the TTL index.
        self.io_loop.run_sync(lambda: create_expiry_index(self.db, "things", embedded=True))
        infos = self.indexes("things").values()
        self.assertFalse(any("expireAfterSeconds" in info for info in infos))
        self.assertIn([("expires", 1)], [info["key"] for info in infos])

    @needs_embedded("asserts that the suite's server is nx-27017")
    def test_the_test_server_is_the_embedded_one(self):
        self.assertTrue(self.io_loop.run_sync(lambda: is_embedded(self.db)))

    def test_purge_removes_only_expired_documents(self):
        past = now() - datetime.timedelta(seconds=5)
        future = now() + datetime.timedelta(hours=1)

        async def fill():
            await self.db.sessions.insert_many([{"_id": "old", "expires": past},
                                                {"_id": "live", "expires": future}])
            await self.db.rate_limits.insert_one({"_id": "old-window", "count": 3,
                                                  "expires": past})
        self.io_loop.run_sync(fill)
        self.assertEqual(self.io_loop.run_sync(lambda: purge_all_expired(self.db)), 2)
        self.assertEqual([doc["_id"] for doc in self.find("sessions")], ["live"])
        self.assertEqual(self.find("rate_limits"), [])

    def test_object_id(self):
        oid = ObjectId()
        self.assertIs(object_id(oid), oid)
        self.assertEqual(object_id(str(oid)), oid)
        for bad in ("z" * 24, "abc", 12, None, {"$gt": ""}):
            self.assertIsNone(object_id(bad))


class LostCancellationTest(unittest.IsolatedAsyncioTestCase):

    async def test_a_cancellation_that_wait_for_swallowed_is_raised_again(self):
        async def loop_step():
            done = asyncio.ensure_future(asyncio.sleep(0))
            await done
            asyncio.current_task().cancel()
            # Python 3.11 returns here instead of raising (python/cpython#107547),
            # as it does inside PyMongo's sends; 3.12 raises.
            await asyncio.wait_for(done, timeout=10)
            reraise_lost_cancellation()
            return "went on as if not cancelled"

        with self.assertRaises(asyncio.CancelledError):
            await asyncio.ensure_future(loop_step())

    async def test_nothing_happens_without_a_cancellation(self):
        reraise_lost_cancellation()
