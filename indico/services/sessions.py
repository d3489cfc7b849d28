"""The session store: sessions and users as requests read them, and every write that changes them.

One object owns the three things that must agree: the reads (grouped into
few database commands by :class:`indico.db.batch.Batcher`), the per-process
cache (:class:`SessionCache`) and the host's change marks
(:class:`indico.utils.marks.ChangeMarks`). Every write that can leave a
cached answer stale (a logout, a password change, a profile update, a
deletion) is a method of :class:`SessionStore` and bumps the marks itself,
after the database acknowledged it and also when it failed half-way (a
needless bump only costs a re-read), so no caller can forget one. The
services (:mod:`indico.services.auth`, :mod:`indico.services.users`) keep
the rules and call the store; nothing else writes ``sessions`` or
``users``. ``tests/services/test_sessions.py`` walks every write method and
fails if one leaves a stale cached answer.

The time comes from a :class:`indico.db.util.Clock` given to the store, so
tests move a clock instead of sleeping.
"""

import contextlib
import datetime
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import cachetools
from pymongo.asynchronous.database import AsyncDatabase

from indico.db import sessions, users
from indico.db.batch import Batcher
from indico.db.records import Account, Session, User
from indico.db.util import SYSTEM_CLOCK, Clock
from indico.utils.marks import ChangeMarks

# An entry of a cache table: the record and its mark as read before it.
Entry = tuple[Any, int]


def token_hash(token: str) -> str:
    """The SHA-256 hex digest under which a token's session is stored."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def sessions_mark(user_id: str) -> str:
    """The change mark of a user's sessions: bumped when any of them is revoked."""
    return f"sessions:{user_id}"


def profile_mark(user_id: str) -> str:
    """The change mark of a user's profile: bumped when it changes or goes."""
    return f"profile:{user_id}"


class SessionCache:
    """Sessions and users this process read recently, exact across the processes of a host.

    Each entry is stamped with its :class:`~indico.utils.marks.ChangeMarks`
    mark as read *before* the database was read, and is used only while the
    mark still holds that value; :class:`SessionStore` bumps the mark after
    every change it makes, so a revocation counts at once in every process
    that shares the marks file. ``lifetime`` bounds what the marks cannot
    see: changes made to the database by something other than indico, or by
    indico processes on another host. 0 turns the cache off.

    Args:
        marks: the host's ChangeMarks.
        lifetime: seconds an entry may be used at most.
        size: the most entries of each kind kept (the least recently used go first).
        clock: the time (entry lifetimes, session expiry).
    """

    def __init__(self, marks: ChangeMarks, lifetime: float, size: int = 100_000,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.marks = marks
        self.lifetime = lifetime
        self.size = size
        self.clock = clock
        # cachetools drops an entry ``lifetime`` seconds after it was put (on the
        # clock given, so tests move it) and, when full, the least recently used.
        self.sessions: cachetools.TTLCache[str, Entry] = cachetools.TTLCache(
            size, lifetime, timer=clock.monotonic)
        self.users: cachetools.TTLCache[str, Entry] = cachetools.TTLCache(
            size, lifetime, timer=clock.monotonic)

    @property
    def enabled(self) -> bool:
        """True unless the lifetime is 0."""
        return self.lifetime > 0

    def _get(self, table: cachetools.TTLCache[str, Entry], key: str,
             mark_of: Callable[[Any], str]) -> Any:
        entry = table.get(key)
        if entry is None:
            return None
        value, stamp = entry
        if self.marks.read(mark_of(value)) != stamp:
            # It may have expired since the get (cachetools then refuses the del).
            table.pop(key, None)
            return None
        return value

    def _put(self, table: cachetools.TTLCache[str, Entry], key: str, value: object,
             stamp: int) -> None:
        table[key] = (value, stamp)

    def get_session(self, key: str) -> Session | None:
        """The cached session under token hash ``key`` if nothing changed, else None."""
        session: Session | None = self._get(self.sessions, key,
                                            lambda value: sessions_mark(value.user_id))
        if session is not None and session.expires <= self.clock.now():
            self.sessions.pop(key, None)
            return None
        return session

    def put_session(self, key: str, session: Session, stamp: int) -> None:
        """Cache ``session`` under token hash ``key``, stamped with its mark read before it."""
        self._put(self.sessions, key, session, stamp)

    def get_user(self, user_id: str) -> User | None:
        """The cached user ``user_id`` if nothing changed, else None."""
        user: User | None = self._get(self.users, user_id, lambda value: profile_mark(user_id))
        return user

    def put_user(self, user_id: str, user: User, stamp: int) -> None:
        """Cache ``user``, stamped with its profile mark read before it."""
        self._put(self.users, user_id, user, stamp)


class SessionStore:
    """Sessions and users: cached reads, and the writes that keep the cache exact.

    :data:`READS` names the methods that change nothing; every other public
    coroutine method is a write and bumps the marks of what it changed
    (``tests/services/test_sessions.py`` checks both by walking them).

    Args:
        db: the database handle.
        marks: the host's :class:`~indico.utils.marks.ChangeMarks`.
        cache_lifetime: seconds a cached session or user may be used at most
            (``INDICO_SESSION_CACHE``; 0: no cache).
        session_ttl: a new session's lifetime in seconds (``INDICO_SESSION_TTL``).
        clock: the time; tests give one they move.
        timeout: the most seconds a request waits for a grouped read or write
            (``INDICO_DB_TIMEOUT``), however many commands are ahead of it.
    """

    READS = frozenset({"get_session", "get_user", "get_account", "get_account_by_email",
                       "fetch_sessions"})

    def __init__(self, db: AsyncDatabase, marks: ChangeMarks, *, cache_lifetime: float,
                 session_ttl: float,
                 clock: Clock = SYSTEM_CLOCK, timeout: float | None = None) -> None:
        self.db = db
        self.marks = marks
        self.session_ttl = session_ttl
        self.clock = clock
        self.cache = SessionCache(marks, cache_lifetime, clock=clock)
        self.session_reader: Batcher[str, Session | None] = Batcher(self.fetch_sessions,
                                                                    timeout=timeout)
        self.user_reader: Batcher[str, User | None] = Batcher(
            lambda ids: users.get_public_users(db, ids), timeout=timeout)
        # Profile changes of concurrent requests share one journaled command.
        self.updater: Batcher[tuple[str, users.Fields], None] = Batcher(
            lambda changes: users.update_users(db, changes, clock.now), timeout=timeout)

    # Reads.

    async def fetch_sessions(self, keys: list[str]) -> list[Session | None]:
        """One database command reading the unexpired sessions under ``keys``, uncached.

        The command behind :meth:`get_session`'s group reads; a test's subclass
        may wrap it to act between the two reads of a cache miss.
        """
        return await sessions.get_sessions(self.db, keys, self.clock.now)

    async def get_session(self, key: str) -> Session | None:
        """Return the unexpired session under token hash ``key``, or None."""
        session = self.cache.get_session(key)
        if session is not None:
            return session
        session = await self.session_reader.submit(key)
        if session is None or not self.cache.enabled:
            return session
        # The mark lives under the user, known only now: read the session
        # again after the mark, so a revocation between the two reads counts.
        stamp = self.marks.read(sessions_mark(session.user_id))
        session = await self.session_reader.submit(key)
        if session is not None:
            self.cache.put_session(key, session, stamp)
        return session

    async def get_user(self, user_id: str) -> User | None:
        """Return the user ``user_id`` as it is now, without its password hash, or None."""
        user = self.cache.get_user(user_id)
        if user is not None:
            return user
        stamp = self.marks.read(profile_mark(user_id))
        user = await self.user_reader.submit(user_id)
        if user is not None and self.cache.enabled:
            self.cache.put_user(user_id, user, stamp)
        return user

    async def get_account(self, user_id: str) -> Account | None:
        """Return the stored user ``user_id`` with its password hash, from the database, or None."""
        return await users.get_user(self.db, user_id)

    async def get_account_by_email(self, email: str) -> Account | None:
        """Return the stored user with ``email`` (normalized), with its password hash, or None."""
        return await users.get_user_by_email(self.db, email)

    # Writes: each bumps the marks of what it changes, inside the write.

    @contextlib.contextmanager
    def _changing(self, user_id: str, *marks: Callable[[str], str]) -> Iterator[None]:
        """Bump ``marks`` of ``user_id`` once the block is over, even when it failed half-way."""
        try:
            yield
        finally:
            for mark in marks:
                self.marks.bump(mark(user_id))

    async def create_account(self, email: str, password_hash: str,
                             name: str | None) -> Account:
        """Store a new user (no cached answer can name a new id, so no mark).

        Raises:
            DuplicateKeyError: the email is taken.
        """
        return await users.create_user(self.db, email, password_hash, name, self.clock.now)

    async def open_session(self, user: User, token: str) -> datetime.datetime:
        """Store a session of ``user`` under ``token``'s hash; return its expiry.

        A token nobody held before is in no cache, so no mark.
        """
        expires = self.clock.now() + datetime.timedelta(seconds=self.session_ttl)
        await sessions.create_session(self.db, token_hash(token), user.id, expires,
                                      self.clock.now)
        return expires

    async def revoke_session(self, token: str, user_id: str) -> None:
        """Delete the session of ``token`` (a session of ``user_id``): it stops working at once."""
        with self._changing(user_id, sessions_mark):
            await sessions.delete_session(self.db, token_hash(token))

    async def update_profile(self, user_id: str, fields: users.Fields) -> None:
        """Apply validated ``fields`` (:func:`indico.db.users.profile_update`) to a user.

        Grouped with the updates of concurrent requests into one command.

        Raises:
            DuplicateKeyError: the new email belongs to another account.
        """
        with self._changing(user_id, profile_mark):
            await self.updater.submit((user_id, fields))

    async def rehash_password(self, user_id: str, password_hash: str) -> None:
        """Store a new hash of the same password (new Argon2 parameters); sessions stay."""
        with self._changing(user_id, profile_mark):
            await users.update_user(self.db, user_id, {"password_hash": password_hash},
                                    self.clock.now)

    async def change_password(self, user_id: str, password_hash: str,
                              keep_token: str | None) -> None:
        """Store a new password and revoke every session of the user but ``keep_token``'s."""
        with self._changing(user_id, sessions_mark, profile_mark):
            # The new password first: a login that checked the old one and
            # opens its session after this sees it changed and gives it up.
            await users.set_password(self.db, user_id, password_hash, self.clock.now)
            await sessions.delete_user_sessions(
                self.db, user_id, keep=None if keep_token is None else token_hash(keep_token))

    async def delete_account(self, user_id: str) -> None:
        """Delete the user and every session of theirs (their jobs are the caller's)."""
        with self._changing(user_id, sessions_mark, profile_mark):
            await sessions.delete_user_sessions(self.db, user_id)
            await users.delete_user(self.db, user_id)
