"""Accounts: sign-up, login, sessions and brute-force limits.

Plain arguments in, stored documents out; no tornado. Tokens are 256-bit
random strings given to the client once; only their SHA-256 is stored.
"""

import datetime
import hashlib
import secrets

from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db import rate_limits, sessions, users
from indico.db.batch import Batcher
from indico.db.util import now, object_id

INVALID_CREDENTIALS = "email or password is wrong"


def token_hash(token):
    """The SHA-256 hex digest under which a token's session is stored."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _retry_after(expires):
    return max(1, int((expires - now()).total_seconds()) + 1)


class AuthService:
    """Sign-up, login, logout and token checks.

    Args:
        db: the database handle.
        config: the Config.
        passwords: a :class:`indico.services.passwords.Passwords`.

    Every authenticated request reads its session and its user, so a change
    or a revocation counts at once, in every process. The reads of concurrent
    requests go to the database together (:class:`indico.db.batch.Batcher`).
    """

    def __init__(self, db, config, passwords):
        self.db = db
        self.config = config
        self.passwords = passwords
        self.session_reader = Batcher(lambda keys: sessions.get_sessions(db, keys))
        self.user_reader = Batcher(lambda ids: users.get_public_users(db, ids))

    async def get_user(self, user_id):
        """Return the user ``user_id`` as it is now, without its password hash, or None."""
        oid = object_id(user_id)
        return None if oid is None else await self.user_reader.submit(oid)

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
        await sessions.delete_session(self.db, token_hash(token))

    async def authenticate(self, token):
        """Return the user (no password hash) of a valid, unexpired, unrevoked ``token``.

        Raises:
            Unauthorized: otherwise, or when the user no longer exists.
        """
        session = await self.session_reader.submit(token_hash(token))
        if not session:
            raise error.Unauthorized("the token is invalid, expired or revoked")
        user = await self.get_user(session["user_id"])
        if not user:
            raise error.Unauthorized("the account no longer exists")
        return user
