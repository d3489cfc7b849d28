"""The handler base: the response envelope, errors, CORS, request ids, requests in flight.

``BaseHandler`` is the one place that turns exceptions into responses
(:meth:`BaseHandler.write_error`): an :class:`~indico.error.IndicoError`
becomes its status and public message, a database that cannot serve now a
503 (:func:`database_unavailable`), anything else a generic 500 whose
traceback goes to the log only. Every handler derives from it: the plain GET
routes (:mod:`indico.routes.root`), the WebSocket (:mod:`indico.routes.ws`) and
the actions (:mod:`indico.routes.actions`, with the bodies parsed by
:mod:`indico.routes.body`).
"""

import logging
import os
import re
import time

import pydantic
import pymongo.errors
import tornado.web

from indico import error
from indico.utils.logs import describe_database_error, request_id_var

log = logging.getLogger(__name__)

HTTP_ERROR_TYPES = {
    400: error.BadRequest,
    401: error.Unauthorized,
    403: error.Forbidden,
    404: error.NotFound,
    405: error.MethodNotAllowed,
    413: error.PayloadTooLarge,
    415: error.UnsupportedMediaType,
}
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Seconds a client is asked to wait when the database does not answer.
DATABASE_RETRY_AFTER = 5
# RFC 7235 §2.1: the auth-scheme is case-insensitive, and one or more spaces
# separate it from the credentials. Our tokens are base64url without padding.
BEARER_PATTERN = re.compile(r"^(?i:bearer) +([A-Za-z0-9_-]{16,128})$")
BEARER_SCHEME = re.compile(r"^(?i:bearer)(?: |$)")


def _http_error_message(exception: BaseException | None) -> str | None:
    """The message of a tornado ``HTTPError`` raised without arguments, else None.

    Tornado's own errors format their message from arguments (a static file's
    path, say) meant for the log: the client gets the reason phrase instead.
    """
    if isinstance(exception, tornado.web.HTTPError) and not exception.args:
        return exception.get_message()
    return None


def head_size(request) -> int:
    """Return the size in bytes of ``request``'s head as Tornado received it.

    The request line, each header line (``name: value`` and CRLF) and the
    blank line; Tornado decodes the head as Latin-1, so characters are bytes.
    Whitespace around values and obsolete line folding are not counted.

    Args:
        request: a ``tornado.httputil.HTTPServerRequest``.
    """
    size = len(request.method) + len(request.uri) + len(request.version) + 4
    for name, value in request.headers.get_all():
        size += len(name) + len(value) + 4
    return size + 2


class InFlight:
    """The requests being served, and whether the server is draining.

    One per application: ``make_app`` gives it to every handler, and the
    server's shutdown (``indico.server``) sets :attr:`draining` and waits
    until :attr:`handlers` is empty.

    Attributes:
        handlers: the handlers of the requests being served.
        draining: the server is stopping; every answer ends its connection.
    """

    def __init__(self) -> None:
        self.handlers: set[tornado.web.RequestHandler] = set()
        self.draining = False


class BaseHandler(tornado.web.RequestHandler):
    """Shared behaviour of every indico handler.

    Dependencies arrive through :meth:`initialize` from the route table:
    ``config`` (the Config), ``db`` (the database handle), ``services``
    (the service objects given to ``make_app``) and ``in_flight`` (the
    application's :class:`InFlight`).
    """

    # None until initialize(): tornado's constructor sets the default headers first.
    in_flight: InFlight | None = None

    def initialize(self, config, db, services, in_flight: InFlight, **_) -> None:
        """Run for each request with the route's keyword arguments."""
        self.config = config
        self.db = db
        self.services = services
        self.in_flight = in_flight
        self.set_default_headers()  # again, now that draining is known
        self.user = None
        self.started = time.monotonic()

    def prepare(self):
        """Run before the method: request id, CORS and security headers, the head's size.

        Raises:
            RequestHeaderFieldsTooLarge: the request head is over
                ``INDICO_HEADER_LIMIT`` (the server reads heads up to
                ``indico.server.SERVER_MAX_HEADER``, so that this answer can be
                sent; past that Tornado closes the connection).
        """
        supplied = self.request.headers.get("X-Request-ID", "")
        self.request_id = supplied if REQUEST_ID_PATTERN.match(supplied) else os.urandom(16).hex()
        request_id_var.set(self.request_id)
        self.set_header("X-Request-ID", self.request_id)
        self.in_flight.handlers.add(self)
        self.set_cors_headers()
        size = head_size(self.request)
        if size > self.config.header_limit:
            raise error.RequestHeaderFieldsTooLarge(
                f"the request line and headers are {size} bytes; the limit is "
                f"{self.config.header_limit}"
            )

    def on_finish(self):
        """Run after the response is sent: the request no longer counts as in flight."""
        self.in_flight.handlers.discard(self)

    def on_connection_close(self):
        """Run when the client goes away before the answer.

        Tornado's own hook ends a request still waiting for its body (it would
        wait forever otherwise). A request whose method already runs stays in
        flight until it finishes, so a shutdown does not close the database
        under it; one still waiting for its body will never run, so it stops
        counting. (A request whose body arrived but whose method has not been
        called yet, one IOLoop step, counts as waiting.)
        """
        super().on_connection_close()
        if not self.body_complete:
            self.in_flight.handlers.discard(self)

    # Tornado reads the whole body before prepare() runs, except for handlers
    # that stream it (ActionHandler), which say when it is complete.
    body_complete = True

    def set_default_headers(self):
        """Headers of every response, errors included.

        Tornado's constructor calls this before :meth:`initialize`, which
        calls it again at once (then ``send_error``, through ``clear``): the
        first call is skipped, as nothing is sent in between.
        """
        if self.in_flight is None:
            return
        self.clear_header("Server")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        if self.in_flight.draining:
            # The server is stopping: the client (nginx) must not reuse this
            # connection (see indico.server.start_draining).
            self.set_header("Connection", "close")

    @property
    def allowed_origin(self):
        """The request's Origin when it is a configured CORS origin, else None."""
        origin = self.request.headers.get("Origin")
        return origin if origin in self.config.cors_origins else None

    def set_cors_headers(self):
        if self.config.cors_origins:
            self.set_header("Vary", "Origin")
        origin = self.allowed_origin
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Expose-Headers",
                            "X-Request-ID, Retry-After, WWW-Authenticate")

    def options(self, *args):
        """Answer a CORS preflight for a configured origin; 403 for another."""
        if self.request.headers.get("Origin") is None:
            self.set_header("Allow", self.allow_header)
            self.set_status(204)
            return
        if not self.allowed_origin:
            raise error.Forbidden("this origin is not allowed (INDICO_CORS_ORIGINS)")
        self.set_header("Access-Control-Allow-Methods", self.allow_header)
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-ID")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)

    allow_header = "GET, OPTIONS"

    def client_address(self):
        """The client's IP address; ``X-Real-IP`` only from a trusted proxy."""
        peer = self.request.remote_ip
        if peer in self.config.trusted_proxies:
            forwarded = self.request.headers.get("X-Real-IP", "").strip()
            if forwarded:
                return forwarded
        return peer

    def bearer_token(self):
        """Return the bearer token of the request (the scheme in any case).

        Raises:
            Unauthorized: no ``Authorization`` header, another scheme, or a
                malformed bearer token (then with ``error="invalid_token"``
                in the challenge, RFC 6750 §3.1).
        """
        header = self.request.headers.get("Authorization")
        if not header:
            raise error.Unauthorized("missing Authorization: Bearer <token> header")
        match = BEARER_PATTERN.match(header)
        if not match:
            raise error.Unauthorized(
                "malformed Authorization header; expected 'Bearer <token>'",
                bearer_error="invalid_token" if BEARER_SCHEME.match(header) else None)
        return match.group(1)

    def write_json(self, status, data):
        """Write the success envelope around ``data`` (a dict, or a pydantic model).

        A model is serialized by pydantic itself, in one pass, not dumped to a
        dict and encoded again.
        """
        self.set_status(status)
        if isinstance(data, pydantic.BaseModel):
            self.finish(b'{"status": %d, "data": %b}' % (status, data.model_dump_json().encode()))
        else:
            self.finish({"status": status, "data": data})

    def write_error(self, status_code, **kwargs):
        """Turn the exception being handled into the error envelope.

        Runs from ``send_error`` when a method raised. IndicoError: its status,
        public message and headers (:meth:`~indico.error.IndicoError.headers`:
        ``Retry-After``, ``WWW-Authenticate``, ...); tornado's HTTPError: its
        status; anything else: a generic 500 (the traceback was logged by
        :meth:`log_exception`).
        """
        exception = _public(kwargs.get("exc_info", (None, None, None))[1])
        # send_error() cleared the headers set in prepare(); set them again.
        if self.request_id != "-":
            self.set_header("X-Request-ID", self.request_id)
        self.set_cors_headers()
        if isinstance(exception, error.IndicoError):
            body = exception.to_dict()
            status_code = exception.status
            for name, value in exception.headers().items():
                self.set_header(name, value)
        elif status_code < 500:
            kind = HTTP_ERROR_TYPES.get(status_code, error.BadRequest)
            reason = _http_error_message(exception) or self._reason
            if status_code == 405:
                reason = f"method {self.request.method} is not allowed here"
            body = {"type": kind.__name__, "message": reason}
        else:
            body = {
                "type": "InternalError",
                "message": f"internal server error (request id {self.request_id})",
            }
        if status_code == 405:
            self.set_header("Allow", self.allow_header)
        self.set_status(status_code)
        self.finish({"status": status_code, "error": body})

    def log_exception(self, typ, value, tb):
        """Log unexpected exceptions with their traceback; client errors briefly."""
        reason = database_unavailable(value)
        if reason is not None:
            # Expected while a database is down or failing over: one line, no traceback.
            log.warning("%s %s -> 503, %s: %s", self.request.method, self.request.path,
                        reason, describe_database_error(value))
        elif isinstance(value, error.IndicoError):
            log.info("%s %s -> %d %s", self.request.method, self.request.path,
                     value.status, value.message)
        elif isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            log.info("%s %s -> %d", self.request.method, self.request.path, value.status_code)
        else:
            log.error("unhandled error in %s %s", self.request.method, self.request.path,
                      exc_info=(typ, value, tb))

    # request_id exists before prepare() runs, for errors raised earlier (405).
    request_id = "-"


def database_unavailable(exception: BaseException | None) -> str | None:
    """Why ``exception`` means the database cannot serve now (for people), or None.

    These pass with time (a server restarting, a replica set electing a new
    primary, a majority not reachable), so a client is told to retry:

    - ``ConnectionFailure`` (no server, a lost connection, ``NetworkTimeout``);
    - any PyMongo error whose ``timeout`` is true: the operation timeout
      (CSOT) expired, whichever step it was in (server selection, the
      network, ``ExecutionTimeout`` on the server, ``WTimeoutError``,
      a bulk write's; https://pymongo.readthedocs.io/en/stable/examples/timeouts.html);
    - ``WriteConcernError``, and a ``BulkWriteError`` with write-concern
      errors: the write is applied on the primary but not known to be on a
      majority, so it may be rolled back after a failover
      (https://www.mongodb.com/docs/manual/reference/write-concern/);
    - an error labelled ``RetryableWriteError`` that survived the driver's
      retry (the primary stepped down and no new one answered yet;
      https://www.mongodb.com/docs/manual/core/retryable-writes/).

    A ``BulkWriteError`` of write errors only (a duplicate key, say) is not
    one: it is the request's own problem.
    """
    if not isinstance(exception, pymongo.errors.PyMongoError):
        return None
    if isinstance(exception, pymongo.errors.WriteConcernError) or (
            isinstance(exception, pymongo.errors.BulkWriteError)
            and exception.details.get("writeConcernErrors")):
        return "the database did not confirm the write (it may still be applied)"
    if isinstance(exception, pymongo.errors.ConnectionFailure) or exception.timeout:
        return "the database does not answer"
    if exception.has_error_label("RetryableWriteError"):
        return "the database is electing a new primary"
    return None


def _public(exception):
    """The error a client sees for ``exception``: a database that cannot serve is a 503."""
    reason = database_unavailable(exception)
    if reason is None:
        return exception
    return error.ServiceUnavailable(f"{reason}; try again shortly",
                                    retry_after=DATABASE_RETRY_AFTER)


class NotFoundHandler(BaseHandler):
    """Any path no route matches: a JSON 404 for every method."""

    def prepare(self):
        super().prepare()
        if self.request.method != "OPTIONS":
            raise error.NotFound(f"no route {self.request.path}")
