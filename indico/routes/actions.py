"""Actions: the registry of what ``POST /<resource>/<action>`` may reach, and the dispatch.

Actions are the methods decorated with :func:`action`; they are collected into
a per-class registry when an :class:`ActionHandler` subclass is defined, and
dispatch looks the requested name up in that registry only. Tornado's own
methods (``finish``, ``redirect``, ``render``, ...) and private names are never
reachable, whatever the request says. The OpenAPI document
(:mod:`indico.routes.openapi`) is built from the same registry.

An action gets its validated request model and returns its payload, or a
:class:`Reply` when the status of its success depends on the outcome.
"""

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pydantic
import tornado.web

from indico import error
from indico.db.util import ensure_reachable
from indico.routes.base import BaseHandler
from indico.routes.body import parse_body, validate


@contextlib.contextmanager
def naming(field: str, *kinds: type[error.IndicoError]) -> Iterator[None]:
    """Name the request field ``field`` in the errors of ``kinds`` raised in the block.

    The services speak no wire names: the action that called them knows which
    field of its request an error is about (the email of a sign-up, the current
    password of a change), and says so in the error's ``field``.
    """
    try:
        yield
    except kinds as exc:
        exc.details.setdefault("field", field)
        raise


class EmptyRequest(pydantic.BaseModel):
    """The body of an action that takes no arguments: ``{}``."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclasses.dataclass(frozen=True)
class Action:
    """One registered action: what the dispatcher and the OpenAPI document need."""

    name: str
    function: Callable[..., Awaitable[Any]]
    request: type[pydantic.BaseModel]
    response: type[pydantic.BaseModel] | None
    auth: bool
    status: int
    errors: tuple[int, ...]
    summary: str
    description: str


@dataclasses.dataclass(frozen=True)
class Reply:
    """What an action returns when its success status is not always the same.

    Attributes:
        status: the HTTP status of this success (202 for a job that still runs, say).
        data: the payload, as an action returns it otherwise.
    """

    status: int
    data: Any


def action(name: str | None = None, *, request: type[pydantic.BaseModel] = EmptyRequest,
           response: type[pydantic.BaseModel] | None = None, auth: bool = True,
           status: int = 200, errors: tuple[int, ...] = ()) -> Callable[[Callable], Callable]:
    """Register a handler method as an action reachable at ``/<resource>/<name>``.

    The method is called as ``await method(self, body)`` with ``body`` a
    validated ``request`` model instance, after authentication when ``auth``
    is true (``self.user`` then holds the caller). It returns the payload of
    the ``data`` field (a dict or a pydantic model), which is checked against
    ``response`` when given, and answered with ``status``; or a
    :class:`Reply` ``(status, payload)`` when this success has another status
    (``portfolio/optimize``: 200 with the result, or 202 while the job runs).

    Args:
        name: the action's URL name; the method's name if None.
        request: the pydantic model of the body.
        response: the pydantic model of the payload (documentation and checking).
        auth: whether a valid bearer token is required.
        status: the HTTP status of a success (of a :class:`Reply`, its own).
        errors: the statuses of the action's own errors (409, 422, ...), for the
            OpenAPI document; the common ones are documented for every action.

    Returns:
        the decorator, which returns the method itself with its
        :class:`Action` in ``indico_action``.
    """
    def register(function: Callable) -> Callable:
        doc = (function.__doc__ or "").strip()
        summary, _, description = doc.partition("\n")
        function.indico_action = Action(
            name or function.__name__, function, request, response, auth, status,
            tuple(errors), summary.strip(), description.strip(),
        )
        return function
    return register


def _iter_actions(namespace: Mapping[str, Any]) -> Iterator[Action]:
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
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

    def prepare(self) -> None:
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

    def data_received(self, chunk: bytes) -> None:
        """Collect body chunks up to the limit; past it, keep only the count."""
        self.received += len(chunk)
        if self.received > self.config.body_limit:
            self.too_large = True
            self.chunks = []
        else:
            self.chunks.append(chunk)

    def lookup(self, name: str) -> Action:
        """Return the registered Action called ``name``, or raise NotFound."""
        spec = self.actions.get(name)
        if spec is None:
            raise error.NotFound(f"no action {self.resource}/{name}")
        return spec

    def wrong_method(self, name: str, *args: str) -> None:
        """Unknown action: 404; known action with a method other than POST: 405."""
        self.body_complete = True
        self.lookup(name)
        raise tornado.web.HTTPError(405)

    get = put = patch = delete = head = wrong_method

    async def post(self, name: str) -> None:
        """Authenticate if the action needs it, validate the body, run it, write its answer."""
        self.body_complete = True
        spec = self.lookup(name)
        if self.too_large:
            raise error.PayloadTooLarge(
                f"request body is over the limit of {self.config.body_limit} bytes"
            )
        await ensure_reachable(self.db)
        if spec.auth:
            self.user = await self.services.auth.authenticate(self.bearer_token())
        document = parse_body(b"".join(self.chunks), self.request.headers.get("Content-Type", ""),
                              self.config.json_max_depth)
        # The request models read their limits (INDICO_MAX_SYMBOLS, ...) from the context.
        body = validate(spec.request, document, context={"config": self.config})
        result = await spec.function(self, body)
        status = spec.status
        if isinstance(result, Reply):
            status, result = result.status, result.data
        if spec.response is not None and not isinstance(result, pydantic.BaseModel):
            result = spec.response.model_validate(result)
        self.write_json(status, result)
