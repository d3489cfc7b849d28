"""``/user/<action>``: the caller's own account."""

from pydantic import ConfigDict, model_validator

from indico import error
from indico.routes.actions import ActionHandler, action, naming
from indico.routes.models import (
    Email,
    Empty,
    GivenPassword,
    Name,
    Password,
    Preferences,
    Request,
    UserPublic,
    UserResponse,
)


class UserFields(Request):
    """The fields a user may change; any other key is refused with 400."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"minProperties": 1})

    # Defaults of None that the types refuse as input: null is not a value here.
    name: Name = None
    email: Email = None
    preferences: Preferences = None

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.model_fields_set:
            raise ValueError("give at least one of: name, email, preferences")
        return self


class UpdateRequest(Request):
    update_user: UserFields


class PasswordRequest(Request):
    current_password: GivenPassword
    new_password: Password


class DeleteRequest(Request):
    password: GivenPassword


class UserHandler(ActionHandler):
    """The caller's profile, password and account."""

    resource = "user"

    @action("get", response=UserResponse)
    async def get_user(self, body):
        """Return the caller's public profile."""
        return UserResponse(user=UserPublic.from_record(self.user))

    @action(request=UpdateRequest, response=UserResponse, errors=(409,))
    async def update(self, body):
        """Change name, email (must stay unique: 409) or preferences.

        ``preferences`` is updated key by key: the keys given are set, the
        others kept, and a key given as null is cleared.
        """
        # Only the keys given, nulls included: a null clears its key.
        fields = body.update_user.model_dump(exclude_unset=True)
        with naming("email", error.Conflict):
            updated = await self.services.users.update(self.user, fields)
        return UserResponse(user=UserPublic.from_record(updated))

    @action(request=PasswordRequest, response=Empty, errors=(403, 429))
    async def password(self, body):
        """Change the password; every other session of the user is revoked."""
        with naming("current_password", error.Forbidden):
            await self.services.users.change_password(
                self.user, body.current_password, body.new_password, self.bearer_token())
        return {}

    @action("delete", request=DeleteRequest, response=Empty, errors=(403, 429))
    async def delete_user(self, body):
        """Delete the account, its sessions and its saved results (password required)."""
        with naming("password", error.Forbidden):
            await self.services.users.delete(self.user, body.password)
        return {}
