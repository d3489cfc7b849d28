"""``make_app``: the one place where handlers, services and dependencies are wired."""

import concurrent.futures
import os

import tornado.web

from indico import __version__
from indico.routes import root
from indico.routes.auth import AuthHandler
from indico.routes.base import NotFoundHandler
from indico.routes.openapi import build_openapi
from indico.routes.user import UserHandler
from indico.services import Services
from indico.services.auth import AuthService
from indico.services.passwords import Passwords
from indico.services.users import UsersService
from indico.utils.logs import log_request

ACTION_HANDLERS = (AuthHandler, UserHandler)


def build_services(config, db, cpu_executor):
    """Create the service objects of one application."""
    passwords = Passwords(config, cpu_executor)
    return Services(
        auth=AuthService(db, config, passwords),
        users=UsersService(db, passwords),
    )


def make_app(config, db, *, cpu_executor=None, services=None):
    """Build the Tornado application.

    Args:
        config: the Config.
        db: an ``AsyncDatabase`` handle (indexes already created).
        cpu_executor: executor for password hashing; a thread pool of the
            machine's cores if None (argon2 releases the GIL).
        services: prebuilt Services (tests); built from the others if None.

    Returns:
        a ``tornado.web.Application``; ``settings["in_flight"]`` holds the
        handlers of requests being served, for a graceful shutdown.
    """
    if cpu_executor is None:
        cpu_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="indico-cpu")
    if services is None:
        services = build_services(config, db, cpu_executor)
    dependencies = {"config": config, "db": db, "services": services}
    routes = [(pattern, handler, dependencies) for pattern, handler in root.ROUTES]
    routes += root.STATIC_ROUTES
    routes += [(rf"/{handler.resource}/([^/]*)", handler, dependencies)
               for handler in ACTION_HANDLERS]
    openapi = build_openapi(ACTION_HANDLERS, __version__)
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args=dependencies,
        log_function=log_request,
        debug=config.debug,
        serve_traceback=False,
        in_flight=set(),
        openapi=openapi,
        services=services,
        cpu_executor=cpu_executor,
    )
