"""``make_app``: the one place where handlers, services and dependencies are wired."""

import concurrent.futures
import os

import tornado.web

from indico import __version__
from indico.db.util import SYSTEM_CLOCK
from indico.routes import root, webapp
from indico.routes.auth import AuthHandler
from indico.routes.base import NotFoundHandler
from indico.routes.openapi import build_openapi
from indico.routes.portfolio import PortfolioHandler
from indico.routes.prices import PricesHandler
from indico.routes.user import UserHandler
from indico.routes.ws import JobEventsHandler
from indico.services import Services
from indico.services.auth import AuthService
from indico.services.events import JobEvents
from indico.services.jobs import JobService
from indico.services.passwords import Passwords
from indico.services.portfolio import PortfolioService
from indico.services.price_catalog import PriceCatalog
from indico.services.sessions import SessionStore
from indico.services.users import UsersService
from indico.utils.logs import log_request
from indico.utils.marks import ChangeMarks

ACTION_HANDLERS = (AuthHandler, UserHandler, PricesHandler, PortfolioHandler)
WEBSOCKET_MAX_MESSAGE = 4096


def build_services(config, db, cpu_executor, pool=None, passwords=None, *, clock=None,
                   sessions=None):
    """Create the service objects of one application.

    Args:
        pool: the optimization process pool; a new one if None.
        passwords: the :class:`~indico.services.passwords.Passwords` to use;
            one on ``cpu_executor`` if None (tests give a subclass).
        clock: the :class:`~indico.db.util.Clock` of the session store and the
            rate limits; the system's if None (tests give one they move).
        sessions: the :class:`~indico.services.sessions.SessionStore`; one on
            the host's change marks if None (tests give a subclass).
    """
    if passwords is None:
        passwords = Passwords(config, cpu_executor)
    prices = PriceCatalog(db, config)
    events = JobEvents(db)
    clock = clock or (sessions.clock if sessions is not None else SYSTEM_CLOCK)
    if sessions is None:
        sessions = SessionStore(db, ChangeMarks(config.marks_path),
                                cache_lifetime=config.session_cache,
                                session_ttl=config.session_ttl, clock=clock,
                                timeout=config.db_timeout)
    auth = AuthService(db, config, passwords, sessions, clock)
    return Services(
        auth=auth,
        users=UsersService(db, passwords, auth, sessions),
        prices=prices,
        portfolio=PortfolioService(db, config),
        jobs=JobService(db, config, prices, events, pool),
        events=events,
    )


def make_app(config, db, *, cpu_executor=None, services=None, pool=None):
    """Build the Tornado application.

    Args:
        config: the Config.
        db: an ``AsyncDatabase`` handle (indexes already created).
        cpu_executor: executor for password hashing; a thread pool of the
            machine's cores if None (argon2 releases the GIL).
        services: prebuilt Services (tests); built from the others if None.
        pool: the optimization process pool; one of ``config.workers``
            processes if None.

    Returns:
        a ``tornado.web.Application``; ``settings["in_flight"]`` holds the
        handlers of requests being served, for a graceful shutdown.
    """
    if cpu_executor is None:
        cpu_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=os.cpu_count() or 2, thread_name_prefix="indico-cpu")
    if services is None:
        services = build_services(config, db, cpu_executor, pool)
    dependencies = {"config": config, "db": db, "services": services}
    routes = [(pattern, handler, dependencies) for pattern, handler in root.ROUTES]
    routes += [(pattern, handler, {**dependencies, **options})
               for pattern, handler, options in root.STATIC_ROUTES + webapp.ROUTES]
    routes += [(rf"/{handler.resource}/([^/]*)", handler, dependencies)
               for handler in ACTION_HANDLERS]
    routes.append((r"/ws/jobs", JobEventsHandler, dependencies))
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
        websocket_max_message_size=WEBSOCKET_MAX_MESSAGE,
        websocket_ping_interval=config.websocket_ping_interval or None,
    )
