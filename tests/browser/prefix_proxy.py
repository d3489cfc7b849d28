"""A small reverse proxy that serves a backend under ``/backend/``, as deploy/nginx does.

It strips the prefix, keeps the ``Host`` header (so the backend's origin check
of ``/ws/jobs`` sees the browser's host, as behind nginx), passes every method,
header and body through, and relays ``/backend/ws/jobs`` as a WebSocket. It runs
on its own IOLoop in a thread, so that Playwright's synchronous API keeps the
main thread. For the browser tests only: no streaming, no limits.
"""

import asyncio
import threading

import tornado.httpclient
import tornado.httpserver
import tornado.web
import tornado.websocket

from indico.db.embedded import _free_port as free_port

PREFIX = "/backend"
# Headers the proxy sets itself, or that describe one hop only (RFC 9110 §7.6.1).
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade",
               "proxy-connection", "te", "trailer"}


class Forward(tornado.web.RequestHandler):
    """Any request under the prefix, to the backend without it."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    def initialize(self, backend: str) -> None:
        self.backend = backend

    async def forward(self, path: str) -> None:
        headers = {name: value for name, value in self.request.headers.get_all()
                   if name.lower() not in HOP_HEADERS}
        query = f"?{self.request.query}" if self.request.query else ""
        response = await tornado.httpclient.AsyncHTTPClient().fetch(
            tornado.httpclient.HTTPRequest(
                f"{self.backend}/{path}{query}", method=self.request.method, headers=headers,
                body=self.request.body if self.request.method not in ("GET", "HEAD") else None,
                follow_redirects=False, allow_nonstandard_methods=True),
            raise_error=False)
        self.set_status(response.code, response.reason)
        self.clear_header("Content-Type")
        for name, value in response.headers.get_all():
            if name.lower() not in HOP_HEADERS:
                self.add_header(name, value)
        if response.body and self.request.method != "HEAD":
            self.write(response.body)

    get = head = post = put = delete = patch = options = forward


class ForwardSocket(tornado.websocket.WebSocketHandler):
    """``/backend/ws/jobs``: a WebSocket relayed message by message to the backend's."""

    def initialize(self, backend: str) -> None:
        self.backend = backend
        self.upstream = None

    def check_origin(self, origin: str) -> bool:
        return True  # the backend checks it: the Origin and Host headers are passed on

    async def open(self) -> None:
        headers = {"Host": self.request.headers["Host"]}
        if "Origin" in self.request.headers:
            headers["Origin"] = self.request.headers["Origin"]
        self.upstream = await tornado.websocket.websocket_connect(
            tornado.httpclient.HTTPRequest(self.backend.replace("http", "ws", 1) + "/ws/jobs",
                                           headers=headers),
            on_message_callback=self.from_backend)

    def from_backend(self, message: str | bytes | None) -> None:
        if message is None:
            self.close(self.upstream.close_code, self.upstream.close_reason)
        else:
            self.write_message(message)

    async def on_message(self, message: str | bytes) -> None:
        await self.upstream.write_message(message)

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()


class PrefixProxy:
    """The proxy on a free port of 127.0.0.1; ``base`` is its URL with the prefix."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, name="prefix-proxy", daemon=True)

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        app = tornado.web.Application([
            (rf"{PREFIX}/ws/jobs", ForwardSocket, {"backend": self.backend}),
            (rf"{PREFIX}/(.*)", Forward, {"backend": self.backend}),
        ])
        server = tornado.httpserver.HTTPServer(app)
        server.listen(self.port, "127.0.0.1")
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.ready.set()
        await self.stopping.wait()
        server.stop()

    def start(self) -> "PrefixProxy":
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
