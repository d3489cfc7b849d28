"""The plain GET routes: the banner, the health check, the OpenAPI document, the docs page."""

import asyncio
import os

import swagger_ui
import tornado.web
from pymongo.errors import PyMongoError

from indico import __version__, error
from indico.db.util import ensure_reachable
from indico.routes.base import DATABASE_RETRY_AFTER, BaseHandler

SWAGGER_STATIC = os.path.join(os.path.dirname(swagger_ui.__file__), "static")

# Relative URLs only, so that the page also works behind a proxy's prefix
# (deploy/nginx serves indico under /backend/): {assets} and {spec} depend on
# whether the page was asked for as .../docs or .../docs/.
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>indico API</title>
<link rel="stylesheet" href="{assets}swagger-ui.css">
</head>
<body>
<div id="docs" data-spec="{spec}openapi.json"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script src="{assets}docs-init.js"></script>
</body>
</html>
"""

DOCS_INIT = (
    "const docs = document.getElementById('docs');\n"
    "window.ui = SwaggerUIBundle({url: docs.dataset.spec, dom_id: '#docs'});\n"
)


class RootHandler(BaseHandler):
    """``GET /``: the service banner (the seed's "Success!" check)."""

    def get(self):
        self.write_json(200, {"service": "indico", "version": __version__,
                              "message": "Success!"})


class HealthHandler(BaseHandler):
    """``GET /healthCheck``: 200 when the database answers a ping, else 503."""

    async def get(self):
        try:
            await ensure_reachable(self.db)
            await asyncio.wait_for(self.db.command("ping"), self.config.db_timeout)
        except (PyMongoError, TimeoutError, OSError) as exc:
            raise error.ServiceUnavailable(
                f"the database does not answer ({type(exc).__name__})",
                retry_after=DATABASE_RETRY_AFTER) from exc
        self.write_json(200, {"database": "ok"})


class OpenAPIHandler(BaseHandler):
    """``GET /openapi.json``: the OpenAPI 3.1 document built by ``make_app``."""

    def initialize(self, document: dict, **dependencies) -> None:
        """Take the route's ``document`` and the usual dependencies."""
        super().initialize(**dependencies)
        self.document = document

    def get(self):
        self.finish(self.document)


class DocsHandler(BaseHandler):
    """``GET /docs``: Swagger UI (shipped by the swagger-ui-py package) for /openapi.json."""

    def get(self):
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
        )
        below = self.request.path.endswith("/")
        self.finish(DOCS_PAGE.format(assets="static/" if below else "docs/static/",
                                     spec="../" if below else ""))


class DocsInitHandler(BaseHandler):
    """The script that starts Swagger UI; a file of ours, so the CSP can forbid inline code."""

    def get(self):
        self.set_header("Content-Type", "application/javascript; charset=UTF-8")
        self.finish(DOCS_INIT)


class DocsStaticHandler(BaseHandler, tornado.web.StaticFileHandler):
    """Swagger UI's assets from the installed package.

    An indico handler first (for its errors: a missing file is a JSON 404),
    a tornado static file handler for the rest.
    """

    allow_header = "GET, HEAD, OPTIONS"

    def initialize(self, path: str, **dependencies) -> None:
        """Take the route's ``path`` and the usual dependencies."""
        BaseHandler.initialize(self, **dependencies)
        tornado.web.StaticFileHandler.initialize(self, path)

    def set_extra_headers(self, path: str) -> None:
        """A file is cached as tornado would (by its ETag), not ``no-store`` as API answers."""
        self.clear_header("Cache-Control")

    def finish(self, chunk=None):
        """Send the response; tornado's own answer to a bad ``Range`` becomes a JSON 416.

        ``StaticFileHandler.get`` answers an unsatisfiable range by setting the
        status and returning, with an empty text/plain body; raising here sends
        it through :meth:`BaseHandler.write_error` instead.

        Raises:
            RangeNotSatisfiable: the status tornado set is 416.
        """
        if self.get_status() == 416 and chunk is None:
            raise error.RangeNotSatisfiable("the requested range is not within the file",
                                            size=self.get_content_size())
        return super().finish(chunk)


ROUTES = [
    (r"/", RootHandler),
    (r"/healthCheck", HealthHandler),
    (r"/docs/?", DocsHandler),
    (r"/docs/static/docs-init\.js", DocsInitHandler),
]
STATIC_ROUTES = [
    (r"/docs/static/(.*)", DocsStaticHandler, {"path": SWAGGER_STATIC}),
]
