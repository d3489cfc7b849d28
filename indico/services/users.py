"""Users: profile updates, password changes, account deletion."""

from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db import jobs, sessions, users
from indico.services.auth import token_hash


class UsersService:
    """Rules for changing and deleting accounts.

    Args:
        db: the database handle.
        passwords: a :class:`indico.services.passwords.Passwords`.
    """

    def __init__(self, db, passwords):
        self.db = db
        self.passwords = passwords

    async def update(self, user, fields):
        """Apply already-validated ``fields`` (name, email, preferences) to ``user``.

        Raises:
            Conflict: the new email belongs to another account.
        """
        try:
            updated = await users.update_user(self.db, user["_id"], fields)
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists", field="email") from None
        if updated is None:
            raise error.Unauthorized("the account no longer exists")
        return updated

    async def _check_password(self, user, password, field):
        if not await self.passwords.verify(user["password_hash"], password):
            raise error.Forbidden("the password is wrong", field=field)

    async def change_password(self, user, current_password, new_password, token):
        """Set a new password and revoke every session but the caller's."""
        await self._check_password(user, current_password, "current_password")
        new_hash = await self.passwords.hash(new_password)
        await users.update_user(self.db, user["_id"], {"password_hash": new_hash})
        await sessions.delete_user_sessions(self.db, str(user["_id"]), keep=token_hash(token))

    async def delete(self, user, password):
        """Delete the user, their sessions and their results."""
        await self._check_password(user, password, "password")
        await jobs.delete_owner_jobs(self.db, str(user["_id"]))
        await sessions.delete_user_sessions(self.db, str(user["_id"]))
        await users.delete_user(self.db, user["_id"])
