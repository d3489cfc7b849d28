"""``/ws/jobs``: a WebSocket that pushes the caller's job events as they happen.

Authenticate with an ``Authorization: Bearer <token>`` header (the scheme in
any case), or (browsers cannot set headers on a WebSocket) with a first
message ``{"token": "..."}`` within a few seconds. Each event is a JSON
object: ``{"event": "queued" | "running" | "progress" | "done" | "failed",
"id": ..., "kind": "optimize" | "backtest", "at": ...}``, with ``summary`` for
done, ``error`` for failed (``"cancelled"`` after ``portfolio/cancel``), and
``done`` and ``total`` (rebalances computed, of) for a backtest's progress.
Browser origins must be in ``INDICO_CORS_ORIGINS`` or the server's own.

Until the connection is upgraded this is an indico handler like any other
(:class:`~indico.routes.base.BaseHandler` comes first in its bases): a bad
handshake, another method or an oversized head gets the JSON error envelope.
"""

import asyncio
import json
import logging
import urllib.parse

import tornado.websocket

from indico import error
from indico.routes.base import BEARER_PATTERN, BaseHandler

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0
CLOSE_UNAUTHORIZED = 4401


# The handshake refusals that tornado's WebSocketHandler.get answers itself, in
# plain text, by status: the indico error each becomes, and its message (None:
# tornado's text, which says which header is wrong).
HANDSHAKE_ERRORS = {
    400: (error.BadRequest, None),
    403: (error.Forbidden, "this origin is not allowed (INDICO_CORS_ORIGINS)"),
    426: (error.UpgradeRequired,
          "only WebSocket version 13 is supported (Sec-WebSocket-Version: 13)"),
}


class JobEventsHandler(BaseHandler, tornado.websocket.WebSocketHandler):
    """One client's stream of job events."""

    def initialize(self, **dependencies) -> None:
        """Run for each request with the route's dependencies."""
        super().initialize(**dependencies)
        self.owner = None
        self.auth_timer = None

    def finish(self, chunk=None):
        """Send the response; a handshake refused by tornado becomes an indico error.

        Tornado answers a bad handshake from ``get`` with a status and a plain
        text (or empty) body; raising here instead sends it through
        :meth:`BaseHandler.write_error`, which finishes with a dict.

        Raises:
            BadRequest, Forbidden, UpgradeRequired: as the status tornado set.
        """
        status = self.get_status()
        if status in HANDSHAKE_ERRORS and not isinstance(chunk, dict):
            kind, message = HANDSHAKE_ERRORS[status]
            raise kind(message or f"GET /ws/jobs takes a WebSocket handshake: {chunk}")
        return super().finish(chunk)

    def check_origin(self, origin):
        """Allow configured origins and the server's own host; refuse the rest."""
        if origin in self.config.cors_origins:
            return True
        return urllib.parse.urlparse(origin).netloc == self.request.headers.get("Host")

    async def open(self):
        header = self.request.headers.get("Authorization")
        if header:
            match = BEARER_PATTERN.match(header)
            await self.authenticate(match.group(1) if match else "")
        else:
            self.auth_timer = asyncio.get_running_loop().call_later(
                AUTH_TIMEOUT, self.close, CLOSE_UNAUTHORIZED, "no token sent")

    async def authenticate(self, token):
        try:
            user = await self.services.auth.authenticate(token)
        except error.Unauthorized as exc:
            self.write_message({"event": "error", "error": exc.to_dict()})
            self.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        if self.auth_timer:
            self.auth_timer.cancel()
        self.owner = user.id
        self.services.events.subscribe(self.owner, self.send_event)
        self.write_message({"event": "subscribed", "user": self.owner})

    async def on_message(self, message):
        if self.owner is not None:
            return  # nothing to say after authentication
        try:
            token = json.loads(message).get("token", "")
        except (ValueError, AttributeError):
            token = ""
        await self.authenticate(token if isinstance(token, str) else "")

    def send_event(self, message):
        try:
            self.write_message(message)
        except tornado.websocket.WebSocketClosedError:
            self.on_close()

    def on_close(self):
        if self.auth_timer:
            self.auth_timer.cancel()
        if self.owner is not None:
            self.services.events.unsubscribe(self.owner, self.send_event)
            self.owner = None
