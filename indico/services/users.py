"""Users: profile updates, password changes, account deletion."""

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db import jobs, sessions, users
from indico.services.auth import token_hash


class UsersService:
    """Rules for changing and deleting accounts.

    Args:
        db: the database handle.
        passwords: a :class:`indico.services.passwords.Passwords`.
        cache: the :class:`indico.services.auth.SessionCache` of this process.
    """

    def __init__(self, db, passwords, cache):
        self.db = db
        self.passwords = passwords
        self.cache = cache

    async def update(self, user, fields):
        """Apply already-validated ``fields`` (name, email, preferences) to ``user``.

        Args:
            user: the caller (a session's user snapshot).

        Returns:
            the caller's new snapshot (built here, not read back: one command less).

        Raises:
            Conflict: the new email belongs to another account.
        """
        try:
            found = await users.update_user(self.db, ObjectId(user["_id"]), fields)
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists", field="email") from None
        if not found:
            raise error.Unauthorized("the account no longer exists")
        updated = {**user, **fields}
        self.cache.forget_user(user["_id"])
        await sessions.update_user_sessions(self.db, updated)
        return updated

    async def _check_password(self, user, password, field):
        """Return the stored user when ``password`` is theirs; raise Forbidden otherwise."""
        stored = await users.get_user(self.db, user["_id"])
        if stored is None:
            raise error.Unauthorized("the account no longer exists")
        if not await self.passwords.verify(stored["password_hash"], password):
            raise error.Forbidden("the password is wrong", field=field)
        return stored

    async def change_password(self, user, current_password, new_password, token):
        """Set a new password and revoke every session but the caller's."""
        stored = await self._check_password(user, current_password, "current_password")
        new_hash = await self.passwords.hash(new_password)
        await users.update_user(self.db, stored["_id"], {"password_hash": new_hash})
        self.cache.forget_user(str(user["_id"]), keep=token_hash(token))
        await sessions.delete_user_sessions(self.db, str(user["_id"]), keep=token_hash(token))

    async def delete(self, user, password):
        """Delete the user, their sessions and their results."""
        stored = await self._check_password(user, password, "password")
        self.cache.forget_user(str(stored["_id"]))
        await jobs.delete_owner_jobs(self.db, str(stored["_id"]))
        await sessions.delete_user_sessions(self.db, str(stored["_id"]))
        await users.delete_user(self.db, stored["_id"])
