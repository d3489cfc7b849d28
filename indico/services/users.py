"""Users: profile updates, password changes, account deletion."""

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from indico import error
from indico.db import jobs, sessions, users
from indico.db.batch import Batcher
from indico.services.auth import profile_mark, sessions_mark, token_hash


class UsersService:
    """Rules for changing and deleting accounts.

    Args:
        db: the database handle.
        passwords: a :class:`indico.services.passwords.Passwords`.
        auth: the :class:`indico.services.auth.AuthService` (it reads users).
        marks: the host's :class:`indico.utils.marks.ChangeMarks`, bumped after
            every change to a user's sessions or profile, even one that failed
            half-way (a needless bump only costs a re-read).
    """

    def __init__(self, db, passwords, auth, marks):
        self.db = db
        self.passwords = passwords
        self.auth = auth
        self.marks = marks
        # Profile changes of concurrent requests share one journaled command.
        self.updater = Batcher(lambda changes: users.update_users(db, changes))

    async def update(self, user, fields):
        """Apply already-validated ``fields`` (name, email, preferences) to ``user``.

        ``preferences`` holds only the keys to change; a None value clears its
        key (:func:`indico.db.users.profile_update`).

        Args:
            user: the caller (a user document).

        Returns:
            the user as stored after the change.

        Raises:
            Conflict: the new email belongs to another account.
            Unauthorized: the account was deleted meanwhile.
        """
        try:
            await self.updater.submit((ObjectId(user["_id"]), fields))
        except DuplicateKeyError:
            raise error.Conflict("an account with this email exists", field="email") from None
        finally:
            self.marks.bump(profile_mark(user["_id"]))
        updated = await self.auth.get_user(user["_id"])
        if updated is None:
            raise error.Unauthorized("the account no longer exists",
                                     bearer_error="invalid_token")
        return updated

    async def _check_password(self, user, password, field):
        """Return the stored user when ``password`` is theirs.

        Wrong passwords count against the account's login limit
        (:meth:`indico.services.auth.AuthService.confirm_password`).

        Raises:
            Unauthorized: the account is gone.
            TooManyRequests: too many wrong passwords for the account.
            Forbidden: the password is wrong.
        """
        stored = await users.get_user(self.db, user["_id"])
        if stored is None:
            raise error.Unauthorized("the account no longer exists",
                                     bearer_error="invalid_token")
        if not await self.auth.confirm_password(stored, password):
            raise error.Forbidden("the password is wrong", field=field)
        return stored

    async def change_password(self, user, current_password, new_password, token):
        """Set a new password and revoke every session but the caller's."""
        stored = await self._check_password(user, current_password, "current_password")
        new_hash = await self.passwords.hash(new_password)
        try:
            # The new password first: a login that checked the old one and
            # opens its session after this sees it changed and gives it up.
            await users.set_password(self.db, stored["_id"], new_hash)
            await sessions.delete_user_sessions(self.db, str(user["_id"]),
                                                keep=token_hash(token))
        finally:
            self.marks.bump(sessions_mark(user["_id"]))

    async def delete(self, user, password):
        """Delete the user, their sessions and their results."""
        stored = await self._check_password(user, password, "password")
        try:
            await jobs.delete_owner_jobs(self.db, str(stored["_id"]))
            await sessions.delete_user_sessions(self.db, str(stored["_id"]))
            await users.delete_user(self.db, stored["_id"])
        finally:
            self.marks.bump(sessions_mark(stored["_id"]))
            self.marks.bump(profile_mark(stored["_id"]))
