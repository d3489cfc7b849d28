"""``make_app``: the one place where handlers are wired to the services they use.

``make_app`` receives what it wires, built and opened elsewhere (the database
by :func:`indico.db.open_database`, the services by
:func:`indico.services.open_services`), and builds only the route table: every
handler gets the same dependencies through its ``initialize``, and nothing is
read back out of ``Application.settings``.
"""

import tornado.web
from pymongo.asynchronous.database import AsyncDatabase

from config import Config
from indico import __version__
from indico.routes import root, webapp
from indico.routes.auth import AuthHandler
from indico.routes.base import InFlight, NotFoundHandler
from indico.routes.openapi import build_openapi
from indico.routes.portfolio import PortfolioHandler
from indico.routes.prices import PricesHandler
from indico.routes.user import UserHandler
from indico.routes.ws import JobEventsHandler
from indico.services import Services
from indico.utils.logs import log_request

ACTION_HANDLERS = (AuthHandler, UserHandler, PricesHandler, PortfolioHandler)
WEBSOCKET_MAX_MESSAGE = 4096


def make_app(config: Config, db: AsyncDatabase, services: Services,
             in_flight: InFlight) -> tornado.web.Application:
    """Build the Tornado application on open resources.

    Args:
        config: the Config.
        db: the database handle (indexes created), for the health check.
        services: the services (from :func:`indico.services.open_services`).
        in_flight: the tracker of the requests being served, which the
            server's shutdown reads and sets (see ``indico.server``).

    Returns:
        a ``tornado.web.Application``.
    """
    dependencies = {"config": config, "db": db, "services": services, "in_flight": in_flight}
    routes = [(pattern, handler, dependencies) for pattern, handler in root.ROUTES]
    routes.append((r"/openapi\.json", root.OpenAPIHandler,
                   {**dependencies, "document": build_openapi(ACTION_HANDLERS, __version__)}))
    routes += [(pattern, handler, {**dependencies, **options})
               for pattern, handler, options in root.STATIC_ROUTES + webapp.ROUTES]
    routes += [(rf"/{handler.resource}/([^/]*)", handler, dependencies)
               for handler in ACTION_HANDLERS]
    routes.append((r"/ws/jobs", JobEventsHandler, dependencies))
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=dependencies,
        log_function=log_request,
        debug=config.debug,
        serve_traceback=False,
        websocket_max_message_size=WEBSOCKET_MAX_MESSAGE,
        websocket_ping_interval=config.websocket_ping_interval or None,
    )
