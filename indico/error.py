"""The error classes of indico.

Every error a client may see is an :class:`IndicoError`: an HTTP status and a
public message, plus optional extra fields that the base handler copies into
the ``error`` object of the response envelope. Any other exception is a bug and
becomes a generic 500 whose details stay in the log.

These classes hold data only; turning them into responses happens in one
place, ``indico.routes.base.BaseHandler.write_error``. Every layer may import
this module.
"""


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


class BadRequest(IndicoError):
    """The request could not be parsed (not JSON, wrong type, bad encoding)."""

    status = 400


class ValidationError(IndicoError):
    """The body parsed but a field is missing or has a wrong value."""

    status = 400


class Unauthorized(IndicoError):
    """No valid, unexpired, unrevoked bearer token, or wrong credentials."""

    status = 401


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
