"""services.sessions: the cache, exact across processes, and a walk over every write of the store.

The walk (:func:`stale_answers`) finds the store's writes by introspection
(every public coroutine method not in ``SessionStore.READS``), so a write
added tomorrow is walked too, and fails if the walk does not know how to
call it; for each, it warms two caches (the writer's and another process's,
sharing the marks file), performs the write and compares what both answer
afterwards with the database.
"""

import dataclasses
import datetime
import inspect
import unittest
import uuid

from pymongo.errors import PyMongoError

from indico.db import sessions, users
from indico.db.records import Account as AccountRecord
from indico.db.records import Session, User
from indico.db.util import now
from indico.services.sessions import (
    SessionCache,
    SessionStore,
    profile_mark,
    sessions_mark,
    token_hash,
)
from indico.utils.marks import ChangeMarks
from tests.harness import FakeClock, ServerTest
from tests.routes.test_database_errors import RelayedDatabaseTest


def session(user_id, seconds=60):
    return Session(f"hash of {user_id}", user_id, now(),
                   now() + datetime.timedelta(seconds=seconds))


def user(name):
    return User("u1", "ada@example.com", name, {}, now(), now())


class SessionCacheTest(unittest.TestCase):

    def setUp(self):
        self.marks = ChangeMarks()
        self.addCleanup(self.marks.close)

    def test_an_entry_lives_until_its_mark_changes(self):
        cache = SessionCache(self.marks, lifetime=60)
        cache.put_session("t1", session("u1"), self.marks.read(sessions_mark("u1")))
        ada = user("Ada")
        cache.put_user("u1", ada, self.marks.read(profile_mark("u1")))
        self.assertEqual(cache.get_session("t1").user_id, "u1")
        self.assertEqual(cache.get_user("u1"), ada)
        self.marks.bump(profile_mark("u1"))
        self.assertIsNone(cache.get_user("u1"))
        self.assertEqual(cache.get_session("t1").user_id, "u1")  # another mark
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
        clock = FakeClock()
        cache = SessionCache(self.marks, lifetime=0.05, size=2, clock=clock)
        for key in ("a", "b", "c"):
            cache.put_session(key, session("u"), 0)
        self.assertEqual(list(cache.sessions), ["b", "c"])  # the oldest went first
        self.assertIsNotNone(cache.get_session("b"))  # ... or rather the least recently used
        cache.put_session("d", session("u"), 0)
        self.assertEqual(sorted(cache.sessions), ["b", "d"])
        cache.put_session("gone", session("u", seconds=-1), 0)
        self.assertIsNone(cache.get_session("gone"))  # the session itself expired
        clock.advance(0.06)
        self.assertIsNone(cache.get_session("d"))
        self.assertEqual(len(cache.sessions), 0)  # every entry outlived its lifetime
        self.assertFalse(SessionCache(self.marks, lifetime=0).enabled)
        self.assertTrue(cache.enabled)

    def test_an_entry_that_expires_while_it_is_checked_is_just_gone(self):
        # The stale entry's lifetime ends between the read and the removal: the
        # cache must answer None, not raise (cachetools refuses to delete it then).
        class Stepping(FakeClock):
            def monotonic(self):
                self.advance(0.6)  # each look at the time is 0.6 s later
                return super().monotonic()

        # Put at t, read at t + 0.6 (within the lifetime of 1 s), removed at t + 1.2.
        cache = SessionCache(self.marks, lifetime=1.0, clock=Stepping())
        cache.put_user("u1", user("Ada"), self.marks.read(profile_mark("u1")))
        self.marks.bump(profile_mark("u1"))
        self.assertIsNone(cache.get_user("u1"))
        cache = SessionCache(self.marks, lifetime=1.0, clock=Stepping())
        cache.put_session("t1", session("u1"), self.marks.read(sessions_mark("u1")))
        self.marks.bump(sessions_mark("u1"))
        self.assertIsNone(cache.get_session("t1"))

    def test_a_cached_session_expires_on_the_clock(self):
        clock = FakeClock()
        cache = SessionCache(self.marks, lifetime=300, clock=clock)
        cache.put_session("t1", session("u1", seconds=10), self.marks.read(sessions_mark("u1")))
        clock.advance(9)
        self.assertIsNotNone(cache.get_session("t1"))
        clock.advance(2)
        self.assertIsNone(cache.get_session("t1"))


@dataclasses.dataclass
class Account:
    """A user with two sessions, made for one write of the walk."""

    user: User
    tokens: list

    @property
    def user_id(self):
        return self.user.id


# How the walk calls each write of the store, on an account of its own.
CALLS = {
    "create_account": lambda store, account: store.create_account(
        f"new-{account.user_id}@example.com", "$argon2id$new", "New"),
    "open_session": lambda store, account: store.open_session(account.user,
                                                                    account.tokens[0] + " c"),
    "revoke_session": lambda store, account: store.revoke_session(account.tokens[0],
                                                                  account.user_id),
    "update_profile": lambda store, account: store.update_profile(
        account.user_id, {"name": "Countess", "preferences": {"currency": "EUR"}}),
    "rehash_password": lambda store, account: store.rehash_password(account.user_id,
                                                                    "$argon2id$rehashed"),
    "change_password": lambda store, account: store.change_password(
        account.user_id, "$argon2id$changed", keep_token=account.tokens[1]),
    "delete_account": lambda store, account: store.delete_account(account.user_id),
}


def write_methods(store_class):
    """The names of the writes of ``store_class``: public coroutine methods that are not reads."""
    return sorted(name for name, member in inspect.getmembers(store_class,
                                                              inspect.iscoroutinefunction)
                  if not name.startswith("_") and name not in store_class.READS)


async def perform(call, store, account):
    """Run one write of the walk as it is."""
    await call(store, account)


class StoreWalk:
    """The walk over the writes of a store; mixed into ServerTests."""

    def store(self, store_class, marks, db=None):
        return store_class(self.db if db is None else db, marks, cache_lifetime=300.0,
                           session_ttl=self.config.session_ttl, clock=self.clock)

    async def truth(self, account):
        """What the database holds: each session of ``account``, then its public user."""
        found = await sessions.get_sessions(self.db, [token_hash(token)
                                                      for token in account.tokens])
        [user] = await users.get_public_users(self.db, [account.user_id])
        return [*found, user]

    async def answers(self, store, account):
        """What ``store`` answers for the same reads."""
        found = [await store.get_session(token_hash(token)) for token in account.tokens]
        return [*found, await store.get_user(account.user_id)]

    async def walk(self, store_class, calls, writer_db=None, perform=perform):
        """Walk every write of ``store_class``; return what went wrong, one line each.

        Args:
            writer_db: the database handle of the store that writes (the
                test's if None).
            perform: ``async perform(call, store, account)`` runs one write.
        """
        writer = self.store(store_class, ChangeMarks(self.config.marks_path), writer_db)
        # Another process of the host: its own map of the same marks file.
        other = self.store(store_class, ChangeMarks(self.config.marks_path))
        problems = []
        for name in write_methods(store_class):
            if name not in calls:
                problems.append(f"{name}: a write the walk does not know how to call")
                continue
            # The walks of one test share a database: emails and tokens of their own.
            unique = uuid.uuid4().hex
            user = await writer.create_account(f"{unique}@example.com", "$argon2id$x", None)
            account = Account(user, [f"{unique} a", f"{unique} b"])
            for token in account.tokens:
                await writer.open_session(user, token)
            for store in (writer, other):  # warm both caches
                self.assertEqual(await self.answers(store, account), await self.truth(account))
            await perform(calls[name], writer, account)
            truth = await self.truth(account)
            for where, store in (("the writer", writer), ("another process", other)):
                answers = await self.answers(store, account)
                for what, answer, stored in zip(("session a", "session b", "user"), answers,
                                                truth, strict=True):
                    if answer != stored:
                        problems.append(f"{name}: {what} stale in {where}")
        return problems


class StoreRecordsTest(StoreWalk, ServerTest):
    """The store hands up records, cached or not: string ids, UTC datetimes, no hash in a User."""

    def test_reads_answer_records(self):
        async def reads():
            store = self.store(SessionStore, ChangeMarks(self.config.marks_path))
            account = await store.create_account("ada@example.com", "$argon2id$x", "Ada")
            expires = await store.open_session(account, "token")
            return (account, expires, [await store.get_session(token_hash("token"))
                                       for _ in range(2)],
                    [await store.get_user(account.id) for _ in range(2)],
                    await store.get_account(account.id), await store.get_user("not an id"))
        account, expires, found, public, stored, nobody = self.io_loop.run_sync(reads)
        self.assertIsInstance(account, AccountRecord)
        self.assertEqual(stored, account)
        self.assertIsNone(nobody)
        for session in found:  # read from the database, then from the cache
            self.assertIsInstance(session, Session)
            self.assertEqual((session.id, session.user_id, session.expires),
                             (token_hash("token"), account.id, expires))
            self.assertEqual(session.created.utcoffset(), datetime.timedelta(0))
        for user in public:
            self.assertIs(type(user), User)
            self.assertEqual((user.id, user.email, user.created), (account.id, account.email,
                                                                   account.created))


class StoreWalkTest(StoreWalk, ServerTest):
    """Every write of the store leaves no stale answer in any process's cache."""

    def test_no_write_leaves_a_stale_answer(self):
        self.assertEqual(write_methods(SessionStore), sorted(CALLS))
        self.assertEqual(self.io_loop.run_sync(lambda: self.walk(SessionStore, CALLS)), [])

    def test_the_walk_finds_a_write_that_forgets_its_marks(self):
        class ForgetfulStore(SessionStore):
            async def rename(self, user_id, name):
                """A write that does not bump the profile mark."""
                await users.update_user(self.db, user_id, {"name": name})

        self.assertIn("rename", write_methods(ForgetfulStore))
        self.assertEqual(self.io_loop.run_sync(lambda: self.walk(ForgetfulStore, CALLS)),
                         ["rename: a write the walk does not know how to call"])
        calls = {**CALLS, "rename": lambda store, account: store.rename(account.user_id, "X")}
        self.assertEqual(self.io_loop.run_sync(lambda: self.walk(ForgetfulStore, calls)),
                         ["rename: user stale in the writer",
                          "rename: user stale in another process"])

    def test_the_walk_finds_a_write_that_bumps_the_wrong_mark(self):
        class HalfRevokingStore(SessionStore):
            async def revoke_session(self, token, user_id):
                """Bumps the profile, not the sessions."""
                with self._changing(user_id, profile_mark):
                    await sessions.delete_session(self.db, token_hash(token))

        self.assertEqual(self.io_loop.run_sync(lambda: self.walk(HalfRevokingStore, CALLS)),
                         ["revoke_session: session a stale in the writer",
                          "revoke_session: session a stale in another process"])


class BumpOnlyOnSuccess(SessionStore):
    """A logout that bumps its mark only when the database confirmed the delete."""

    async def revoke_session(self, token, user_id):
        await sessions.delete_session(self.db, token_hash(token))
        self.marks.bump(sessions_mark(user_id))


class FailedWriteWalkTest(StoreWalk, RelayedDatabaseTest):
    """A write the database applied but did not confirm (a write-concern error) still
    leaves no stale answer: the marks are bumped when a write fails, even half-way
    (a password change whose password is stored and whose revocation never ran)."""

    timeout = 5.0
    MAJORITY_TIMED_OUT = {"code": 64, "codeName": "WriteConcernTimeout",
                          "errmsg": "waiting for replication timed out",
                          "errInfo": {"wtimeout": True, "writeConcern": {"w": "majority"}}}

    async def failing(self, call, store, account):
        """Run the write with every write's reply carrying a write-concern error."""
        self.relay.fail_write_concern(self.MAJORITY_TIMED_OUT)
        try:
            with self.assertRaises(PyMongoError):
                await call(store, account)
        finally:
            self.relay.fail_write_concern(None)

    def walk_failing(self, store_class):
        return self.io_loop.run_sync(lambda: self.walk(
            store_class, CALLS, self.relay_client[self.db_name], self.failing), timeout=120)

    def test_a_failed_write_leaves_no_stale_answer(self):
        self.assertEqual(self.walk_failing(SessionStore), [])

    def test_the_walk_finds_a_write_that_bumps_only_on_success(self):
        self.assertEqual(self.walk_failing(BumpOnlyOnSuccess),
                         ["revoke_session: session a stale in the writer",
                          "revoke_session: session a stale in another process"])
