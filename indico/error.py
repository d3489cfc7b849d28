"""The error classes of indico.

Every error a client may see is an :class:`IndicoError`: an HTTP status and a
public message, plus optional extra fields that the base handler copies into
the ``error`` object of the response envelope. Any other exception is a bug and
becomes a generic 500 whose details stay in the log.

These classes hold data only; turning them into responses happens in one
place, ``indico.routes.base.BaseHandler.write_error``, which also sends the
headers an error calls for (:meth:`IndicoError.headers`: ``Retry-After``,
``WWW-Authenticate``, ...). Every layer may import this module.
"""

# RFC 6750 §3: the challenge of every 401; the realm names the protection space.
BEARER_CHALLENGE = 'Bearer realm="indico"'


class IndicoError(Exception):
    """An error with an HTTP status and a message safe to show to a client.

    Args:
        message: what went wrong, for humans; never contains secrets.
        **details: extra JSON-serialisable fields for the error object
            (for example ``field`` or ``symbols``).
    """

    status = 500

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self):
        """Return the ``error`` object of the response envelope."""
        return {"type": type(self).__name__, "message": self.message, **self.details}

    def headers(self) -> dict[str, str]:
        """Return the response headers this error calls for (none by default)."""
        return {}


class BadRequest(IndicoError):
    """The request could not be parsed (not JSON, wrong type, bad encoding)."""

    status = 400


class ValidationError(IndicoError):
    """The body parsed but a field is missing or has a wrong value."""

    status = 400


class Unauthorized(IndicoError):
    """No valid, unexpired, unrevoked bearer token, or wrong credentials.

    Args:
        message: what went wrong, for humans.
        bearer_error: the RFC 6750 §3.1 error code of the challenge:
            ``"invalid_token"`` when a bearer token was presented and is
            malformed, unknown, expired or revoked; None when the request
            carried no bearer token (or the failure is not about one).
        **details: extra fields for the error object.
    """

    status = 401

    def __init__(self, message, bearer_error=None, **details):
        super().__init__(message, **details)
        self.bearer_error = bearer_error

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate: Bearer realm="indico"``, with the error code if any."""
        if self.bearer_error is None:
            return {"WWW-Authenticate": BEARER_CHALLENGE}
        return {"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="{self.bearer_error}"'}


class Forbidden(IndicoError):
    """Authenticated, but not allowed (for example a CORS origin not configured)."""

    status = 403


class NotFound(IndicoError):
    """No such route, action or object, or an object owned by someone else."""

    status = 404


class MethodNotAllowed(IndicoError):
    """The route exists but not for this HTTP method."""

    status = 405


class Conflict(IndicoError):
    """The write conflicts with existing data (for example an email in use)."""

    status = 409


class PayloadTooLarge(IndicoError):
    """The body is larger than the configured limit."""

    status = 413


class UnsupportedMediaType(IndicoError):
    """The body is not sent as ``application/json``."""

    status = 415


class RangeNotSatisfiable(IndicoError):
    """A ``Range`` outside the file asked of a static file (RFC 9110 §15.5.17).

    Args:
        message: what went wrong, for humans.
        size: the file's size in bytes, for ``Content-Range: bytes */<size>``.
    """

    status = 416

    def __init__(self, message, size, **details):
        super().__init__(message, **details)
        self.size = size

    def headers(self) -> dict[str, str]:
        """The file's size, as RFC 9110 §14.4 asks of a 416."""
        return {"Content-Range": f"bytes */{self.size}"}


class UpgradeRequired(IndicoError):
    """A WebSocket handshake of a version other than 13 (RFC 6455 §4.4)."""

    status = 426

    def headers(self) -> dict[str, str]:
        """The version the server speaks (RFC 6455 §4.4)."""
        return {"Sec-WebSocket-Version": "13"}


class RequestHeaderFieldsTooLarge(IndicoError):
    """The request head (request line and headers) is over the configured limit (RFC 6585 §5)."""

    status = 431


class Unprocessable(IndicoError):
    """Well-formed, but the request cannot be carried out as asked."""

    status = 422


class UnknownSymbols(Unprocessable):
    """Symbols that are not in the price store."""


class OptimizationError(Unprocessable):
    """The optimization problem has no solution or cannot be solved as posed.

    Raised by ``indico.optimization`` for domain failures (too little data,
    infeasible bounds, unreachable targets, ...); the message says what to try.
    """


class RetryLater(IndicoError):
    """An error that passes with time; ``retry_after`` (seconds) becomes a Retry-After header."""

    def __init__(self, message, retry_after=None, **details):
        super().__init__(message, **details)
        self.retry_after = retry_after
        if retry_after is not None:
            self.details["retry_after"] = retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds, when known."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(int(self.retry_after))}


class TooManyRequests(RetryLater):
    """A rate limit or quota was exceeded."""

    status = 429


class ServiceUnavailable(RetryLater):
    """A dependency (the database) does not answer."""

    status = 503


class StartupError(RuntimeError):
    """The server cannot start (its database cannot run or answer); the message says why."""


class ConfigError(Exception):
    """A setting has a bad value; the message names the environment variable."""
