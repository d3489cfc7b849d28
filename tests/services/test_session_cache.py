"""services.auth.SessionCache: exact across processes through the change marks."""

import datetime
import time
import unittest

from indico.db.util import now
from indico.services.auth import SessionCache, profile_mark, sessions_mark
from indico.utils.marks import ChangeMarks


def session(user_id, seconds=60):
    return {"user_id": user_id, "expires": now() + datetime.timedelta(seconds=seconds)}


class SessionCacheTest(unittest.TestCase):

    def setUp(self):
        self.marks = ChangeMarks()
        self.addCleanup(self.marks.close)

    def test_an_entry_lives_until_its_mark_changes(self):
        cache = SessionCache(self.marks, lifetime=60)
        cache.put_session("t1", session("u1"), self.marks.read(sessions_mark("u1")))
        cache.put_user("u1", {"name": "Ada"}, self.marks.read(profile_mark("u1")))
        self.assertEqual(cache.get_session("t1")["user_id"], "u1")
        self.assertEqual(cache.get_user("u1"), {"name": "Ada"})
        self.marks.bump(profile_mark("u1"))
        self.assertIsNone(cache.get_user("u1"))
        self.assertEqual(cache.get_session("t1")["user_id"], "u1")  # another mark
        self.marks.bump(sessions_mark("u1"))
        self.assertIsNone(cache.get_session("t1"))
        self.assertEqual((cache.sessions, cache.users), ({}, {}))  # stale entries go

    def test_an_entry_stamped_before_a_bump_is_never_used(self):
        cache = SessionCache(self.marks, lifetime=60)
        stamp = self.marks.read(sessions_mark("u1"))
        self.marks.bump(sessions_mark("u1"))  # a revocation while the database was read
        cache.put_session("t1", session("u1"), stamp)
        self.assertIsNone(cache.get_session("t1"))

    def test_lifetime_expiry_and_size(self):
        cache = SessionCache(self.marks, lifetime=0.05, size=2)
        for key in ("a", "b", "c"):
            cache.put_session(key, session("u"), 0)
        self.assertEqual(list(cache.sessions), ["b", "c"])  # the oldest went first
        cache.put_session("gone", session("u", seconds=-1), 0)
        self.assertIsNone(cache.get_session("gone"))  # the session itself expired
        time.sleep(0.06)
        self.assertIsNone(cache.get_session("c"))
        self.assertFalse(SessionCache(self.marks, lifetime=0).enabled)
        self.assertTrue(cache.enabled)
