"""Users: profile updates, password changes, account deletion.

The rules live here; the writes, and the cache they must keep exact, are the
:class:`~indico.services.sessions.SessionStore`'s.
"""

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db import jobs
from indico.db.records import Account, User
from indico.db.users import Fields
from indico.services.auth import AuthService
from indico.services.passwords import Passwords
from indico.services.sessions import SessionStore


class UsersService:
    """Rules for changing and deleting accounts.

    Args:
        db: the database handle (the deleted account's jobs).
        passwords: a :class:`indico.services.passwords.Passwords`.
        auth: the :class:`indico.services.auth.AuthService` (it confirms passwords
            against the login limits).
        store: the :class:`~indico.services.sessions.SessionStore`.
    """

    def __init__(self, db: AsyncDatabase, passwords: Passwords, auth: AuthService,
                 store: SessionStore) -> None:
        self.db = db
        self.passwords = passwords
        self.auth = auth
        self.store = store

    async def update(self, user: User, fields: Fields) -> User:
        """Apply already-validated ``fields`` (name, email, preferences) to ``user``.

        ``preferences`` holds only the keys to change; a None value clears its
        key (:func:`indico.db.users.profile_update`).

        Args:
            user: the caller.
            fields: the fields to change.

        Returns:
            the user as stored after the change.

        Raises:
            Conflict: the new email belongs to another account.
            Unauthorized: the account was deleted meanwhile.
        """
        try:
            await self.store.update_profile(user.id, fields)
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists") from None
        updated = await self.store.get_user(user.id)
        if updated is None:
            raise error.Unauthorized("the account no longer exists",
                                     bearer_error="invalid_token")
        return updated

    async def _check_password(self, user: User, password: str) -> Account:
        """Return the stored user when ``password`` is theirs.

        Wrong passwords count against the account's login limit
        (:meth:`indico.services.auth.AuthService.confirm_password`).

        Raises:
            Unauthorized: the account is gone.
            TooManyRequests: too many wrong passwords for the account.
            Forbidden: the password is wrong.
        """
        stored = await self.store.get_account(user.id)
        if stored is None:
            raise error.Unauthorized("the account no longer exists",
                                     bearer_error="invalid_token")
        if not await self.auth.confirm_password(stored, password):
            raise error.Forbidden("the password is wrong")
        return stored

    async def change_password(self, user: User, current_password: str, new_password: str,
                              token: str) -> None:
        """Set a new password and revoke every session but the caller's (``token``'s)."""
        stored = await self._check_password(user, current_password)
        new_hash = await self.passwords.hash(new_password)
        await self.store.change_password(stored.id, new_hash, keep_token=token)

    async def delete(self, user: User, password: str) -> None:
        """Delete the user, their sessions and their results."""
        stored = await self._check_password(user, password)
        await jobs.delete_owner_jobs(self.db, stored.id)
        await self.store.delete_account(stored.id)
