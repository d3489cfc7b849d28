"""``GET /app/``: the web page for people, static files under ``indico/static/app/``.

The page is plain HTML, CSS and JavaScript with no build step; it talks to
the JSON API and ``/ws/jobs`` through relative URLs, so it works at ``/app/``
and behind a proxy's prefix (``/backend/app/`` with deploy/nginx).

Every answer of these routes, errors included, carries a strict
Content-Security-Policy: only this server's own scripts, styles, images and
connections (``ws:``/``wss:`` to the same host are ``'self'`` in CSP level 3),
no inline script or style, no ``eval``, no framing. The page inserts every
value from the API as text, so an HTML injection has nothing to run either.
"""

import os

from indico.routes.root import DocsStaticHandler

APP_STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "static", "app")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class AppStaticHandler(DocsStaticHandler):
    """The page's files: tornado's static file handler, indico's errors, a strict CSP."""

    def initialize(self, path: str, default_filename: str | None = None,
                   **dependencies) -> None:
        """Take the route's ``path`` and ``default_filename`` and the usual dependencies."""
        super().initialize(path, **dependencies)
        self.default_filename = default_filename

    def set_default_headers(self) -> None:
        """Headers of every response, errors included: the CSP and no framing or referrer."""
        super().set_default_headers()
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")

    def get_content_type(self) -> str:
        """The file's type, with ``charset=UTF-8`` for text (the page's files are UTF-8)."""
        kind = super().get_content_type()
        if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
            return kind + "; charset=UTF-8"
        return kind

    def set_extra_headers(self, path: str) -> None:
        """A file may be kept, but is checked (by its ETag) before each use: a new
        version of the page reaches a browser at its next load."""
        self.set_header("Cache-Control", "no-cache")


class AppRedirectHandler(AppStaticHandler):
    """``GET /app``: to ``app/``, relative, so that a proxy's prefix is kept."""

    def get(self, *args: str) -> None:
        """Redirect to the page's folder (a relative ``Location``, RFC 9110 §10.2.2)."""
        self.redirect("app/")

    def head(self, *args: str) -> None:
        """As :meth:`get`."""
        self.redirect("app/")


ROUTES = [
    (r"/app", AppRedirectHandler, {"path": APP_STATIC}),
    (r"/app/(.*)", AppStaticHandler, {"path": APP_STATIC, "default_filename": "index.html"}),
]
