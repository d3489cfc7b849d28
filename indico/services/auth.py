"""Accounts: sign-up, login, logout, token checks and brute-force limits.

Plain arguments in, records out (:mod:`indico.db.records`); no tornado. Tokens are 256-bit
random strings given to the client once; only their SHA-256 is stored. Sessions
and users are read and written through the
:class:`~indico.services.sessions.SessionStore`, which keeps its cache exact.
"""

import dataclasses
import datetime
import secrets

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from config import Config
from indico import error
from indico.db import rate_limits
from indico.db.records import Account, User
from indico.db.util import SYSTEM_CLOCK, Clock
from indico.services.passwords import Passwords
from indico.services.sessions import SessionStore, token_hash

INVALID_CREDENTIALS = "email or password is wrong"


def _retry_after(expires: datetime.datetime, moment: datetime.datetime) -> int:
    return max(1, int((expires - moment).total_seconds()) + 1)


def account_key(email: str) -> str:
    """The key of an account's counter of wrong passwords, shared by login and the token actions."""
    return f"login:account:{email}"


@dataclasses.dataclass(frozen=True)
class NewSession:
    """A session just opened: its user, its bearer token (given to the client once), its expiry."""

    user: User
    token: str
    expires: datetime.datetime


def user_key(user_id: str) -> str:
    """The key of a user's counter of wrong passwords given with a token.

    Kept by user id, so that changing the account's email (which needs no
    password) does not give a token's holder a fresh count.
    """
    return f"password:user:{user_id}"


class AuthService:
    """Sign-up, login, logout and token checks.

    Args:
        db: the database handle (rate-limit counters).
        config: the Config.
        passwords: a :class:`indico.services.passwords.Passwords`.
        store: the :class:`~indico.services.sessions.SessionStore`.
        clock: the time of the rate-limit windows (the store's, in practice).
    """

    def __init__(self, db: AsyncDatabase, config: Config, passwords: Passwords,
                 store: SessionStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self.db = db
        self.config = config
        self.passwords = passwords
        self.store = store
        self.clock = clock

    async def _new_session(self, user: User) -> NewSession:
        token = secrets.token_urlsafe(32)
        expires = await self.store.open_session(user, token)
        return NewSession(user, token, expires)

    async def _count(self, key: str, limit: int, window: float,
                     message: str) -> datetime.datetime:
        """Count one attempt under ``key`` before doing what it guards.

        Returns:
            the end of the window the attempt was counted in.

        Raises:
            TooManyRequests: the attempt is past ``limit`` in the window.
        """
        counted = await rate_limits.increment(self.db, key, window, self.clock.now)
        if counted.count > limit:
            raise error.TooManyRequests(
                message, retry_after=_retry_after(counted.expires, self.clock.now()))
        return counted.expires

    async def signup(self, email: str, password: str, name: str | None,
                     address: str) -> NewSession:
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
        if await self.store.get_account_by_email(email):
            raise error.Conflict("an account with this email exists")
        password_hash = await self.passwords.hash(password)
        try:
            user = await self.store.create_account(email, password_hash, name)
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists") from None
        return await self._new_session(user)

    async def login(self, email: str, password: str, address: str) -> NewSession:
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
        user = await self.store.get_account_by_email(email)
        stored_hash = user.password_hash if user else None
        # verify runs for an unknown email too (against a dummy hash; always False).
        if not await self.passwords.verify(stored_hash, password) or user is None:
            raise error.Unauthorized(INVALID_CREDENTIALS)
        await self._forgive(user)
        await rate_limits.give_back(self.db, address_key, counted_until)
        if self.passwords.needs_rehash(user.password_hash):
            new_hash = await self.passwords.hash(password)
            await self.store.rehash_password(user.id, new_hash)
        opened = await self._new_session(user)
        # A password change (or a deletion) that landed after the check above
        # has already revoked the other sessions: this one must not outlive it.
        now_stored = await self.store.get_account(user.id)
        if now_stored is None or now_stored.password_version != user.password_version:
            await self.store.revoke_session(opened.token, user.id)
            raise error.Unauthorized(INVALID_CREDENTIALS)
        return opened

    async def _forgive(self, user: User) -> None:
        """Reset the counters of wrong passwords of ``user``, who just gave the right one."""
        await rate_limits.reset(self.db, account_key(user.email))
        await rate_limits.reset(self.db, user_key(user.id))

    async def confirm_password(self, user: Account, password: str) -> bool:
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
        await self._count(account_key(user.email), limit, window, message)
        await self._count(user_key(user.id), limit, window, message)
        if not await self.passwords.verify(user.password_hash, password):
            return False
        await self._forgive(user)
        return True

    async def logout(self, token: str, user_id: str) -> None:
        """Revoke the session of ``token`` (a session of ``user_id``) at once."""
        await self.store.revoke_session(token, user_id)

    async def authenticate(self, token: str) -> User:
        """Return the user (no password hash) of a valid, unexpired, unrevoked ``token``.

        Raises:
            Unauthorized: otherwise, or when the user no longer exists.
        """
        session = await self.store.get_session(token_hash(token))
        if not session:
            raise error.Unauthorized("the token is invalid, expired or revoked",
                                     bearer_error="invalid_token")
        user = await self.store.get_user(session.user_id)
        if not user:
            raise error.Unauthorized("the account no longer exists",
                                     bearer_error="invalid_token")
        return user
