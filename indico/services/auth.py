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
from indico.db.util import now

INVALID_CREDENTIALS = "email or password is wrong"


def token_hash(token):
    """The SHA-256 hex digest under which a token's session is stored."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _retry_after(expires):
    return max(1, int((expires - now()).total_seconds()) + 1)


class SessionCache:
    """Sessions this process looked up recently, for ``INDICO_SESSION_CACHE`` seconds.

    Off (0) by default: then every request reads its session, and a revocation
    anywhere is seen everywhere at once. When on, this process forgets a
    session the moment it revokes or changes it here (logout, password change,
    account changes); another process keeps accepting a revoked token for at
    most the cache's lifetime. That is the price of authenticating without a
    database round trip, and the operator chooses it.

    Args:
        lifetime: seconds an entry is trusted; 0 disables the cache.
        size: the most entries kept (the oldest go first).
    """

    def __init__(self, lifetime, size=10_000):
        self.lifetime = lifetime
        self.size = size
        self.entries = collections.OrderedDict()

    def get(self, key):
        """The cached session under ``key`` if still trusted and unexpired, else None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        session, trusted_until = entry
        if time.monotonic() >= trusted_until or session["expires"] <= now():
            del self.entries[key]
            return None
        return session

    def put(self, key, session):
        if self.lifetime <= 0:
            return
        self.entries[key] = (session, time.monotonic() + self.lifetime)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def forget(self, key):
        self.entries.pop(key, None)

    def forget_user(self, user_id, keep=None):
        """Forget every cached session of ``user_id`` except the one under ``keep``."""
        for key in [key for key, (session, _) in self.entries.items()
                    if session["user_id"] == user_id and key != keep]:
            del self.entries[key]


class AuthService:
    """Sign-up, login, logout and token checks.

    Args:
        db: the database handle.
        config: the Config.
        passwords: a :class:`indico.services.passwords.Passwords`.
    """

    def __init__(self, db, config, passwords, cache=None):
        self.db = db
        self.config = config
        self.passwords = passwords
        self.cache = cache or SessionCache(config.session_cache)

    async def _new_session(self, user):
        token = secrets.token_urlsafe(32)
        expires = now() + datetime.timedelta(seconds=self.config.session_ttl)
        await sessions.create_session(self.db, token_hash(token), user, expires)
        return {"user": user, "token": token, "expires": expires}

    async def signup(self, email, password, name, address):
        """Create an account and its first session.

        Raises:
            TooManyRequests: too many sign-ups from ``address`` in the window.
            Conflict: the email is taken.
        """
        key = f"signup:address:{address}"
        count, expires = await rate_limits.get_counter(self.db, key)
        if count >= self.config.signup_max_per_address:
            raise error.TooManyRequests("too many sign-ups from this address; try later",
                                        retry_after=_retry_after(expires))
        if await users.get_user_by_email(self.db, email):
            raise error.Conflict("an account with this email exists", field="email")
        password_hash = await self.passwords.hash(password)
        try:
            user = await users.create_user(self.db, email, password_hash, name)
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists", field="email") from None
        await rate_limits.increment(self.db, key, self.config.signup_window)
        return await self._new_session(user)

    async def login(self, email, password, address):
        """Check credentials and open a session.

        Failures are counted per account and per address; past the thresholds
        the answer is 429 until the window ends, whether or not the password
        is right, so guessing gains nothing.

        Raises:
            TooManyRequests: a threshold is reached (``retry_after`` set).
            Unauthorized: unknown email or wrong password (the same message).
        """
        account_key = f"login:account:{email}"
        address_key = f"login:address:{address}"
        for key, limit in ((account_key, self.config.login_max_failures),
                           (address_key, self.config.login_address_max_failures)):
            count, expires = await rate_limits.get_counter(self.db, key)
            if count >= limit:
                raise error.TooManyRequests("too many failed logins; try later",
                                            retry_after=_retry_after(expires))
        user = await users.get_user_by_email(self.db, email)
        stored_hash = user["password_hash"] if user else None
        if not await self.passwords.verify(stored_hash, password):
            for key in (account_key, address_key):
                await rate_limits.increment(self.db, key, self.config.login_window)
            raise error.Unauthorized(INVALID_CREDENTIALS)
        await rate_limits.reset(self.db, account_key)
        if self.passwords.needs_rehash(stored_hash):
            new_hash = await self.passwords.hash(password)
            await users.update_user(self.db, user["_id"], {"password_hash": new_hash})
        return await self._new_session(user)

    async def logout(self, token):
        """Revoke the session of ``token`` at once."""
        key = token_hash(token)
        self.cache.forget(key)
        await sessions.delete_session(self.db, key)

    async def authenticate(self, token):
        """Return the user snapshot of a valid, unexpired, unrevoked ``token``.

        One read: the session carries the user (without the password hash;
        ``_id`` as a string), and is deleted with the user.

        Raises:
            Unauthorized: otherwise.
        """
        key = token_hash(token)
        session = self.cache.get(key)
        if session is None:
            session = await sessions.get_session(self.db, key)
            if not session:
                raise error.Unauthorized("the token is invalid, expired or revoked")
            self.cache.put(key, session)
        return session["user"]
