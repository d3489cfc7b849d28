"""Pydantic models shared by several resources: field types and the public user shape.

Input, output and stored shapes are separate: ``UserPublic`` is built field
by field from a stored user, so a password hash or an internal field can never
reach a response.
"""

import datetime
from typing import Annotated

import email_validator
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from indico.db.records import User
from indico.optimization import Objective
from indico.services.auth import NewSession
from indico.services.price_files import SYMBOL_RULE, normalize_symbol


def _email(value):
    """Check the syntax of an address (no DNS) and normalize it: trimmed, lower-case.

    Reserved domains (``.test``, ``.local``) are accepted: indico sends no mail,
    and private deployments use them.
    """
    try:
        email_validator.validate_email(value.strip(), check_deliverability=False,
                                       globally_deliverable=False, test_environment=True)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return value.strip().lower()


Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(_email),
                  Field(json_schema_extra={"format": "email"})]
# Login only normalizes: whatever was typed, an unknown address is the same 401.
LoginEmail = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True,
                                              min_length=1, max_length=320)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=1024)]
# A password given to prove who one is, not chosen: any non-empty string up to
# the maximum, since an account's password may predate today's rules.
GivenPassword = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
def _name(value):
    value = value.strip()
    if not value:
        raise ValueError("a name cannot be blank")
    return value


# Lengths are checked before trimming, so that the limit is the documented one.
Name = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_name)]


class Request(BaseModel):
    """Base of every request body: unknown fields are refused, and so are values
    of another JSON type (``"1000"`` for a number, ``1`` for a boolean)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Preferences(Request):
    """A user's small settings object."""

    # Every objective portfolio/optimize takes (the engine's enum: a new objective
    # is a valid default at once), given as its name.
    default_objective: Objective | None = Field(None, strict=False)
    risk_free_rate: float | None = Field(None, ge=0, le=1)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None


class UserPublic(BaseModel):
    """What a client may see of a user."""

    id: str
    email: str
    name: str | None
    created: datetime.datetime
    preferences: Preferences

    @classmethod
    def from_record(cls, user: User) -> "UserPublic":
        """Build the public shape from a user record."""
        return cls(id=user.id, email=user.email, name=user.name, created=user.created,
                   preferences=Preferences(**user.preferences))


class UserResponse(BaseModel):
    user: UserPublic


class SessionResponse(BaseModel):
    """A new session: the user, the bearer token (shown once) and its expiry."""

    user: UserPublic
    token: str
    expires: datetime.datetime

    @classmethod
    def from_session(cls, session: NewSession) -> "SessionResponse":
        return cls(user=UserPublic.from_record(session.user), token=session.token,
                   expires=session.expires)


class Empty(BaseModel):
    """An empty payload."""


# The symbol rule lives with the price store; every resource's request models share it.


def _symbol(value):
    try:
        return normalize_symbol(value)
    except ValueError as exc:
        raise PydanticCustomError("symbol", str(exc)) from None


Symbol = Annotated[str, AfterValidator(_symbol), Field(
    description=f"a ticker: {SYMBOL_RULE} (case-insensitive; stored upper-case)",
    examples=["AAPL"])]
