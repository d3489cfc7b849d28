"""The base handlers: the response envelope, errors, CORS, and action dispatch.

``BaseHandler`` is the one place that turns exceptions into responses
(:meth:`BaseHandler.write_error`): an :class:`~indico.error.IndicoError`
becomes its status and public message, anything else a generic 500 whose
traceback goes to the log only.

``ActionHandler`` serves ``POST /<resource>/<action>``. Actions are the
methods decorated with :func:`action`; they are collected into a per-class
registry when the class is defined, and dispatch looks the requested name up in
that registry only. Tornado's own methods (``finish``, ``redirect``,
``render``, ...) and private names are never reachable, whatever the request
says.
"""

import dataclasses
import json
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
JSON_WHITESPACE = b" \t\r\n"
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


class EmptyRequest(pydantic.BaseModel):
    """The body of an action that takes no arguments: ``{}``."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclasses.dataclass(frozen=True)
class Action:
    """One registered action: what the dispatcher and the OpenAPI document need."""

    name: str
    function: object
    request: type
    response: type | None
    auth: bool
    status: int
    errors: tuple
    summary: str
    description: str


def action(name=None, *, request=EmptyRequest, response=None, auth=True, status=200,
           errors=()):
    """Register a handler method as an action reachable at ``/<resource>/<name>``.

    The method is called as ``await method(self, body)`` with ``body`` a
    validated ``request`` model instance, after authentication when ``auth``
    is true (``self.user`` then holds the caller). It returns the payload of
    the ``data`` field (a dict or a pydantic model), which is checked against
    ``response`` when given.

    Args:
        name: the action's URL name; the method's name if None.
        request: the pydantic model of the body.
        response: the pydantic model of the payload (documentation and checking).
        auth: whether a valid bearer token is required.
        status: the HTTP status of a success.
        errors: the statuses of the action's own errors (409, 422, ...), for the
            OpenAPI document; the common ones are documented for every action.
    """
    def register(function):
        doc = (function.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        function.indico_action = Action(
            name or function.__name__, function, request, response, auth, status,
            tuple(errors), summary.strip(), description.strip(),
        )
        return function
    return register


class BaseHandler(tornado.web.RequestHandler):
    """Shared behaviour of every indico handler.

    Dependencies arrive through :meth:`initialize` from the route table:
    ``config`` (the Config), ``db`` (the database handle) and ``services``
    (the service objects built by ``make_app``).
    """

    def initialize(self, config, db, services, **_):
        """Run for each request with the route's keyword arguments."""
        self.config = config
        self.db = db
        self.services = services
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
        self.application.settings["in_flight"].add(self)
        self.set_cors_headers()
        size = head_size(self.request)
        if size > self.config.header_limit:
            raise error.RequestHeaderFieldsTooLarge(
                f"the request line and headers are {size} bytes; the limit is "
                f"{self.config.header_limit}"
            )

    def on_finish(self):
        """Run after the response is sent: the request no longer counts as in flight."""
        self.application.settings["in_flight"].discard(self)

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
            self.application.settings["in_flight"].discard(self)

    # Tornado reads the whole body before prepare() runs, except for handlers
    # that stream it (ActionHandler), which say when it is complete.
    body_complete = True

    def set_default_headers(self):
        """Headers of every response, errors included."""
        self.clear_header("Server")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")

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


def _iter_actions(namespace):
    for value in namespace.values():
        spec = getattr(value, "indico_action", None)
        if isinstance(spec, Action):
            yield spec


@tornado.web.stream_request_body
class ActionHandler(BaseHandler):
    """Serves ``POST /<resource>/<action>`` for the actions registered on a subclass.

    Subclasses set ``resource`` (the first path segment) and decorate methods
    with :func:`action`. The body is streamed so that an oversized one is
    refused early with a JSON 413 instead of a dropped connection.
    """

    resource = None
    actions = {}
    allow_header = "POST, OPTIONS"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method in cls.SUPPORTED_METHODS:
            if hasattr(vars(cls).get(method.lower()), "indico_action"):
                raise TypeError(
                    f"{cls.__name__}.{method.lower()} would shadow tornado's HTTP method; "
                    "name the function otherwise and pass the action name to @action"
                )
        registry = {}
        for klass in reversed(cls.__mro__):
            registry.update({spec.name: spec for spec in _iter_actions(vars(klass))})
        cls.actions = registry

    def prepare(self):
        """Run when the headers arrive: refuse an announced oversized body early."""
        super().prepare()
        self.chunks = []
        self.received = 0
        self.too_large = False
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.config.body_limit:
            raise error.PayloadTooLarge(
                f"request body is {int(length)} bytes; the limit is {self.config.body_limit}"
            )

    body_complete = False

    def data_received(self, chunk):
        """Collect body chunks up to the limit; past it, keep only the count."""
        self.received += len(chunk)
        if self.received > self.config.body_limit:
            self.too_large = True
            self.chunks = []
        else:
            self.chunks.append(chunk)

    def lookup(self, name):
        """Return the registered Action called ``name``, or raise NotFound."""
        spec = self.actions.get(name)
        if spec is None:
            raise error.NotFound(f"no action {self.resource}/{name}")
        return spec

    def wrong_method(self, name, *args):
        """Unknown action: 404; known action with a method other than POST: 405."""
        self.body_complete = True
        self.lookup(name)
        raise tornado.web.HTTPError(405)

    get = put = patch = delete = head = wrong_method

    async def post(self, name):
        self.body_complete = True
        spec = self.lookup(name)
        if self.too_large:
            raise error.PayloadTooLarge(
                f"request body is over the limit of {self.config.body_limit} bytes"
            )
        if spec.auth:
            self.user = await self.services.auth.authenticate(self.bearer_token())
        body = self.parse_body(spec.request)
        result = await spec.function(self, body)
        if spec.response is not None and not isinstance(result, pydantic.BaseModel):
            result = spec.response.model_validate(result)
        status = getattr(self, "status_override", None) or spec.status
        self.write_json(status, result)

    def parse_body(self, model):
        """Decode, parse and validate the JSON body with ``model``.

        Raises:
            UnsupportedMediaType: a body that is not sent as application/json.
            BadRequest: invalid UTF-8 or JSON, too deep, or not an object.
            ValidationError: the object does not fit ``model``; names the field.
        """
        raw = b"".join(self.chunks)
        # Only JSON's own white space (RFC 8259 section 2) makes a body empty;
        # bytes.strip() would also drop a form feed or a vertical tab.
        if raw.strip(JSON_WHITESPACE):
            content_type = self.request.headers.get("Content-Type", "")
            media_type = content_type.split(";")[0].strip().lower()
            if media_type != "application/json":
                raise error.UnsupportedMediaType(
                    f"send the body as Content-Type: application/json, not {media_type or 'nothing'!r}"
                )
            document = parse_json(raw, self.config.json_max_depth)
        else:
            document = {}
        if not isinstance(document, dict):
            raise error.BadRequest(
                f"the body must be a JSON object, not {type(document).__name__}"
            )
        return validate(model, document, context={"config": self.config})


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw, max_depth):
    """Parse JSON bytes strictly: UTF-8 only, no NaN/Infinity, bounded nesting.

    Raises:
        BadRequest: with a message that says what is wrong and where.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error.BadRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
    depth = deepest = 0
    in_string = escaped = False
    # A linear scan before parsing: json.loads would recurse on deep input.
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > max_depth:
                raise error.BadRequest(f"JSON nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        message = getattr(exc, "msg", None) or str(exc)
        where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
        raise error.BadRequest(f"the body is not valid JSON: {message}{where}") from None


def _field_name(location):
    return ".".join(str(part) for part in location) or "body"


def validate(model, document, context=None):
    """Validate ``document`` with ``model``; on failure name every bad field.

    Args:
        context: pydantic's validation context (the request models read
            their limits from ``context["config"]``).

    Raises:
        ValidationError: message of the first problem, ``field`` and ``errors``.
    """
    try:
        return model.model_validate(document, context=context)
    except pydantic.ValidationError as exc:
        problems = [
            {"field": _field_name(item["loc"]), "message": _problem(item)}
            for item in exc.errors(include_url=False, include_input=False)
        ]
        first = problems[0]
        raise error.ValidationError(
            f"{first['field']}: {first['message']}", field=first["field"], errors=problems
        ) from None


def _problem(item):
    if item["type"] == "extra_forbidden":
        return "unknown field; it is not accepted here"
    if item["type"] == "missing":
        return "required field is missing"
    return item["msg"]
