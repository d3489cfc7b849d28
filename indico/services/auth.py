"""Accounts: sign-up, login, sessions and brute-force limits.

Plain arguments in, stored documents out; no tornado. Tokens are 256-bit
random strings given to the client once; only their SHA-256 is stored.
"""

import collections
import datetime
import hashlib
import secrets
import time

from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db import rate_limits, sessions, users
from indico.db.batch import Batcher
from indico.db.util import now, object_id

INVALID_CREDENTIALS = "email or password is wrong"


def token_hash(token):
    """The SHA-256 hex digest under which a token's session is stored."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def sessions_mark(user_id):
    """The change mark of a user's sessions: bumped when any of them is revoked."""
    return f"sessions:{user_id}"


def profile_mark(user_id):
    """The change mark of a user's profile: bumped when it changes or goes."""
    return f"profile:{user_id}"


class SessionCache:
    """Sessions and users this process read recently, exact across the processes of a host.

    Each entry is stamped with its :class:`indico.utils.marks.ChangeMarks`
    mark as read *before* the database was read, and is used only while the
    mark still holds that value. indico bumps the mark after every change it
    makes to a user's sessions (logout, password change, deletion) or profile
    (update, deletion), once the database has acknowledged the change, so a
    revocation counts at once in every process that shares the marks file.
    ``lifetime`` bounds what the marks cannot see: changes made to the
    database by something other than indico, or by indico processes on
    another host. 0 turns the cache off (every request reads the database).

    Args:
        marks: the host's ChangeMarks.
        lifetime: seconds an entry may be used at most.
        size: the most entries of each kind kept (the oldest go first).
    """

    def __init__(self, marks, lifetime, size=100_000):
        self.marks = marks
        self.lifetime = lifetime
        self.size = size
        self.sessions = collections.OrderedDict()  # token hash -> (session, stamp, until)
        self.users = collections.OrderedDict()  # user id -> (user, stamp, until)

    @property
    def enabled(self):
        """True unless the lifetime is 0."""
        return self.lifetime > 0

    def _get(self, table, key, mark_of):
        entry = table.get(key)
        if entry is None:
            return None
        value, stamp, until = entry
        if time.monotonic() >= until or self.marks.read(mark_of(value)) != stamp:
            del table[key]
            return None
        return value

    def _put(self, table, key, value, stamp):
        table[key] = (value, stamp, time.monotonic() + self.lifetime)
        table.move_to_end(key)
        if len(table) > self.size:
            table.popitem(last=False)

    def get_session(self, key):
        """The cached session under token hash ``key`` if nothing changed, else None."""
        session = self._get(self.sessions, key, lambda value: sessions_mark(value["user_id"]))
        if session is not None and session["expires"] <= now():
            del self.sessions[key]
            return None
        return session

    def put_session(self, key, session, stamp):
        """Cache ``session`` under token hash ``key``, stamped with its mark read before it."""
        self._put(self.sessions, key, session, stamp)

    def get_user(self, user_id):
        """The cached user ``user_id`` if nothing changed, else None."""
        return self._get(self.users, user_id, lambda value: profile_mark(user_id))

    def put_user(self, user_id, user, stamp):
        """Cache ``user``, stamped with its profile mark read before it."""
        self._put(self.users, user_id, user, stamp)


def _retry_after(expires):
    return max(1, int((expires - now()).total_seconds()) + 1)


def account_key(email: str) -> str:
    """The key of an account's counter of wrong passwords, shared by login and the token actions."""
    return f"login:account:{email}"


def user_key(user_id) -> str:
    """The key of a user's counter of wrong passwords given with a token.

    Kept by user id, so that changing the account's email (which needs no
    password) does not give a token's holder a fresh count.
    """
    return f"password:user:{user_id}"


class AuthService:
    """Sign-up, login, logout and token checks.

    A request's session and user come from the :class:`SessionCache` when their
    marks say nothing changed, else from the database; the reads of concurrent
    requests go to the database together (:class:`indico.db.batch.Batcher`).

    Args:
        db: the database handle.
        config: the Config.
        passwords: a :class:`indico.services.passwords.Passwords`.
        marks: the host's :class:`indico.utils.marks.ChangeMarks`.
    """

    def __init__(self, db, config, passwords, marks):
        self.db = db
        self.config = config
        self.passwords = passwords
        self.marks = marks
        self.cache = SessionCache(marks, config.session_cache)
        self.session_reader = Batcher(lambda keys: sessions.get_sessions(db, keys))
        self.user_reader = Batcher(lambda ids: users.get_public_users(db, ids))

    async def get_user(self, user_id):
        """Return the user ``user_id`` as it is now, without its password hash, or None."""
        user_id = str(user_id)
        user = self.cache.get_user(user_id)
        if user is not None:
            return user
        oid = object_id(user_id)
        if oid is None:
            return None
        stamp = self.marks.read(profile_mark(user_id))
        user = await self.user_reader.submit(oid)
        if user is not None and self.cache.enabled:
            self.cache.put_user(user_id, user, stamp)
        return user

    async def get_session(self, key):
        """Return the unexpired session under token hash ``key``, or None."""
        session = self.cache.get_session(key)
        if session is not None:
            return session
        session = await self.session_reader.submit(key)
        if session is None or not self.cache.enabled:
            return session
        # The mark lives under the user, known only now: read the session
        # again after the mark, so a revocation between the two reads counts.
        stamp = self.marks.read(sessions_mark(session["user_id"]))
        session = await self.session_reader.submit(key)
        if session is not None:
            self.cache.put_session(key, session, stamp)
        return session

    async def _new_session(self, user):
        token = secrets.token_urlsafe(32)
        expires = now() + datetime.timedelta(seconds=self.config.session_ttl)
        await sessions.create_session(self.db, token_hash(token), user, expires)
        return {"user": user, "token": token, "expires": expires}

    async def _count(self, key: str, limit: int, window: float,
                     message: str) -> datetime.datetime:
        """Count one attempt under ``key`` before doing what it guards.

        Returns:
            the end of the window the attempt was counted in.

        Raises:
            TooManyRequests: the attempt is past ``limit`` in the window.
        """
        count, expires = await rate_limits.increment(self.db, key, window)
        if count > limit:
            raise error.TooManyRequests(message, retry_after=_retry_after(expires))
        return expires

    async def signup(self, email, password, name, address):
        """Create an account and its first session.

        Every attempt that reaches this call counts against the limit of
        ``address``, a refused one (409) too: it bounds how many addresses one
        client can probe for an account as well as how many it can create.

        Raises:
            TooManyRequests: too many sign-ups from ``address`` in the window.
            Conflict: the email is taken.
        """
        await self._count(f"signup:address:{address}", self.config.signup_max_per_address,
                          self.config.signup_window,
                          "too many sign-ups from this address; try later")
        if await users.get_user_by_email(self.db, email):
            raise error.Conflict("an account with this email exists", field="email")
        password_hash = await self.passwords.hash(password)
        try:
            user = await users.create_user(self.db, email, password_hash, name)
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists", field="email") from None
        return await self._new_session(user)

    async def login(self, email, password, address):
        """Check credentials and open a session.

        Every attempt is counted, per account and per address, before the
        password is checked; past either limit the answer is 429 until the
        window ends, whether or not the password is right, so guessing gains
        nothing, and concurrent attempts get at most the limit's number of
        password checks. A success resets the account's counters and gives
        the address its attempt back (so the limits count failures).

        Raises:
            TooManyRequests: a threshold is reached (``retry_after`` set).
            Unauthorized: unknown email or wrong password (the same message).
        """
        message = "too many failed logins; try later"
        window = self.config.login_window
        await self._count(account_key(email), self.config.login_max_failures, window, message)
        address_key = f"login:address:{address}"
        counted_until = await self._count(address_key, self.config.login_address_max_failures,
                                          window, message)
        user = await users.get_user_by_email(self.db, email)
        stored_hash = user["password_hash"] if user else None
        if not await self.passwords.verify(stored_hash, password):
            raise error.Unauthorized(INVALID_CREDENTIALS)
        await self._forgive(user)
        await rate_limits.give_back(self.db, address_key, counted_until)
        if self.passwords.needs_rehash(stored_hash):
            new_hash = await self.passwords.hash(password)
            await users.update_user(self.db, user["_id"], {"password_hash": new_hash})
        opened = await self._new_session(user)
        # A password change (or a deletion) that landed after the check above
        # has already revoked the other sessions: this one must not outlive it.
        now_stored = await users.get_user(self.db, user["_id"])
        if (now_stored is None or now_stored.get("password_version", 0)
                != user.get("password_version", 0)):
            await sessions.delete_session(self.db, token_hash(opened["token"]))
            raise error.Unauthorized(INVALID_CREDENTIALS)
        return opened

    async def _forgive(self, user) -> None:
        """Reset the counters of wrong passwords of ``user``, who just gave the right one."""
        await rate_limits.reset(self.db, account_key(user["email"]))
        await rate_limits.reset(self.db, user_key(user["_id"]))

    async def confirm_password(self, user, password: str) -> bool:
        """Check the password that confirms an action of the signed-in ``user``.

        Counted like a login, before the check, against the same per-account
        limit (``login:account:<email>``) and against one of the user's own
        (:func:`user_key`) with the same threshold; a right password resets
        both.

        Args:
            user: the stored user (with its password hash).
            password: the password given.

        Returns:
            True when ``password`` is the user's.

        Raises:
            TooManyRequests: either limit is reached (``retry_after`` set).
        """
        message = "too many wrong passwords for this account; try later"
        limit, window = self.config.login_max_failures, self.config.login_window
        await self._count(account_key(user["email"]), limit, window, message)
        await self._count(user_key(user["_id"]), limit, window, message)
        if not await self.passwords.verify(user["password_hash"], password):
            return False
        await self._forgive(user)
        return True

    async def logout(self, token, user_id):
        """Revoke the session of ``token`` (a session of ``user_id``) at once."""
        try:
            await sessions.delete_session(self.db, token_hash(token))
        finally:
            self.marks.bump(sessions_mark(user_id))

    async def authenticate(self, token):
        """Return the user (no password hash) of a valid, unexpired, unrevoked ``token``.

        Raises:
            Unauthorized: otherwise, or when the user no longer exists.
        """
        session = await self.get_session(token_hash(token))
        if not session:
            raise error.Unauthorized("the token is invalid, expired or revoked",
                                     bearer_error="invalid_token")
        user = await self.get_user(session["user_id"])
        if not user:
            raise error.Unauthorized("the account no longer exists",
                                     bearer_error="invalid_token")
        return user
