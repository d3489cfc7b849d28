"""``/ws/jobs``: a WebSocket that pushes the caller's job events as they happen.

Authenticate with an ``Authorization: Bearer <token>`` header, or (browsers
cannot set headers on a WebSocket) with a first message ``{"token": "..."}``
within a few seconds. Each event is a JSON object: ``{"event": "queued" |
"running" | "done" | "failed", "id": ..., "at": ...}``, with ``summary`` for
done and ``error`` for failed. Browser origins must be in
``INDICO_CORS_ORIGINS`` or the server's own.
"""

import asyncio
import json
import logging
import urllib.parse

import tornado.websocket

from indico import error
from indico.routes.base import BEARER_PATTERN

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0
CLOSE_UNAUTHORIZED = 4401


class JobEventsHandler(tornado.websocket.WebSocketHandler):
    """One client's stream of job events."""

    def initialize(self, config, db, services, **_):
        self.config = config
        self.services = services
        self.owner = None
        self.auth_timer = None

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
        self.owner = str(user["_id"])
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
