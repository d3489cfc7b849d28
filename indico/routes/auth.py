"""``/auth/<action>``: sign-up, login, logout, token check."""

from typing import Annotated

from pydantic import StringConstraints

from indico import error
from indico.routes.actions import ActionHandler, action, naming
from indico.routes.models import (
    Email,
    Empty,
    LoginEmail,
    Name,
    Password,
    Request,
    SessionResponse,
    UserPublic,
    UserResponse,
)


class SignupRequest(Request):
    email: Email
    password: Password
    name: Name | None = None


class LoginRequest(Request):
    email: LoginEmail
    # Any non-empty string up to the maximum: old passwords may predate today's rules.
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class AuthHandler(ActionHandler):
    """Accounts and sessions."""

    resource = "auth"

    @action(request=SignupRequest, response=SessionResponse, auth=False, status=201,
            errors=(409, 429))
    async def signup(self, body):
        """Create an account and return its first session token."""
        with naming("email", error.Conflict):
            session = await self.services.auth.signup(
                body.email, body.password, body.name, self.client_address())
        return SessionResponse.from_session(session)

    @action(request=LoginRequest, response=SessionResponse, auth=False, errors=(401, 429))
    async def login(self, body):
        """Exchange email and password for a bearer token.

        Unknown email and wrong password give the same 401; repeated failures
        give 429 with Retry-After.
        """
        session = await self.services.auth.login(body.email, body.password,
                                                 self.client_address())
        return SessionResponse.from_session(session)

    @action(response=Empty)
    async def logout(self, body):
        """Revoke the token used for this request at once."""
        await self.services.auth.logout(self.bearer_token(), self.user.id)
        return {}

    @action(response=UserResponse)
    async def check(self, body):
        """Answer 200 with the user when the token is valid."""
        return UserResponse(user=UserPublic.from_record(self.user))
