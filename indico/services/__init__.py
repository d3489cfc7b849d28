"""The services: business rules, ownership and quotas, with no tornado imports.

``Services`` bundles the service objects of one application.
:func:`open_services` is how the server and the tests get them: it creates
the executor that hashes passwords and the optimization worker pool, builds
the services (:func:`build_services`) and starts the job runner; when its
block ends it stops all of that in reverse order. ``make_app`` receives the
built services and hands them to every handler through the route table.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator

from pymongo.asynchronous.database import AsyncDatabase

from config import Config
from indico.db.util import SYSTEM_CLOCK, Clock
from indico.services.auth import AuthService
from indico.services.events import JobEvents
from indico.services.jobs import JobRunner, JobService
from indico.services.passwords import Passwords
from indico.services.pool import Work, WorkerPool, create_pool, run_frontier, run_optimization
from indico.services.portfolio import PortfolioService
from indico.services.price_catalog import PriceCatalog
from indico.services.sessions import SessionStore
from indico.services.users import UsersService
from indico.utils.marks import ChangeMarks


@dataclasses.dataclass
class Services:
    """The service objects of one application.

    Attributes:
        runner: the running :class:`~indico.services.jobs.JobRunner`, None when
            :func:`open_services` was told not to run one (tests claim jobs themselves).
    """

    auth: AuthService
    users: UsersService
    prices: PriceCatalog
    portfolio: PortfolioService
    jobs: JobService
    events: JobEvents
    runner: JobRunner | None = None


def build_services(config: Config, db: AsyncDatabase, cpu_executor: concurrent.futures.Executor,
                   pool: WorkerPool, passwords: Passwords | None = None, *,
                   clock: Clock | None = None, sessions: SessionStore | None = None,
                   work: Work = run_optimization,
                   frontier_work: Work = run_frontier) -> Services:
    """Create the service objects of one application; nothing is started.

    Args:
        config: the Config.
        db: the database handle (indexes created).
        cpu_executor: the executor that hashes passwords.
        pool: the optimization worker pool.
        passwords: the :class:`~indico.services.passwords.Passwords` to use;
            one on ``cpu_executor`` if None (tests give a subclass).
        clock: the :class:`~indico.db.util.Clock` of the session store and the
            rate limits; the session store's, else the system's, if None
            (tests give one they move).
        sessions: the :class:`~indico.services.sessions.SessionStore`; one on
            the host's change marks if None (tests give a subclass).
        work: the function the pool's workers run for a job (tests give another).
        frontier_work: the function they run for ``portfolio/frontier`` (the same).

    Returns:
        the :class:`Services`.
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
        jobs=JobService(db, config, prices, events, pool, work=work,
                        frontier_work=frontier_work),
        events=events,
    )


@contextlib.asynccontextmanager
async def open_services(config: Config, db: AsyncDatabase, *,
                        cpu_executor: concurrent.futures.Executor | None = None,
                        pool: WorkerPool | None = None, run_jobs: bool = True,
                        passwords: Passwords | None = None, clock: Clock | None = None,
                        sessions: SessionStore | None = None,
                        work: Work = run_optimization,
                        frontier_work: Work = run_frontier) -> AsyncIterator[Services]:
    """The services of one application for the block; stopped, with what they run on, after it.

    In order: the password-hashing executor (a thread pool of the machine's
    cores: argon2 releases the GIL), the optimization worker pool
    (``INDICO_WORKERS`` processes), the services, and the job runner that
    claims queued jobs and jobs whose lease expired. At the end of the block,
    or when a step fails, in reverse order: the runner stops, the event
    poller stops, background jobs get a moment to finish (the others keep
    their lease for another process), the pool's workers exit (this returns
    once they have), the executor shuts down. An executor or a pool given by
    the caller is the caller's to shut down.

    Args:
        config: the Config.
        db: the database handle (from :func:`indico.db.open_database`).
        cpu_executor: the executor that hashes passwords; a new one if None.
        pool: the optimization worker pool; a new one if None.
        run_jobs: start a :class:`~indico.services.jobs.JobRunner` (tests
            that claim jobs themselves say False).
        passwords, clock, sessions, work, frontier_work: as :func:`build_services`
            (tests).

    Yields:
        the :class:`Services`.
    """
    async with contextlib.AsyncExitStack() as stack:
        if cpu_executor is None:
            cpu_executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=os.cpu_count() or 2, thread_name_prefix="indico-cpu")
            stack.callback(cpu_executor.shutdown, wait=False, cancel_futures=True)
        if pool is None:
            pool = create_pool(config.workers)
            stack.push_async_callback(asyncio.to_thread, pool.shutdown, True)
        services = build_services(config, db, cpu_executor, pool, passwords, clock=clock,
                                  sessions=sessions, work=work,
                                  frontier_work=frontier_work)
        stack.push_async_callback(services.jobs.stop)
        stack.push_async_callback(services.events.stop)
        if run_jobs:
            services.runner = JobRunner(services.jobs)
            stack.push_async_callback(services.runner.stop)
            services.runner.start()
        yield services
