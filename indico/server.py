"""The server process: ``python -m indico.server [--port=8001] [--address=...] [--debug]``.

``main`` reads the configuration and runs :func:`serve`: it opens the database
(:func:`indico.db.open_database`: the embedded nx-27017 when no MongoDB URI is
set, restarted whenever it dies, on the same port and data, so the client
reconnects by itself; the indexes; the expiry purge on nx-27017), loads the
sample prices on a first start, opens the services
(:func:`indico.services.open_services`: the hashing executor, the worker pool,
the job runner), serves HTTP, and on SIGTERM or SIGINT drains: it stops
listening, answers every further request with ``Connection: close``, waits
until in-flight requests have finished and clients (a proxy's kept-alive
connections) have closed their connections (bounded by
``INDICO_SHUTDOWN_GRACE``), then leaves both blocks, which stop the services,
the purge, the client and the embedded database it started, and exits 0.
"""

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time

import tornado.httpserver
import tornado.iostream
import tornado.netutil
from pymongo.errors import ConnectionFailure, PyMongoError

from config import Config
from indico import __version__
from indico.app import make_app
from indico.db import open_database
from indico.error import ConfigError, StartupError
from indico.routes.base import InFlight
from indico.services import open_services
from indico.services.price_import import PriceImporter
from indico.utils.logs import setup_logging

log = logging.getLogger(__name__)

# Announced bodies over the configured limit get a JSON 413 from the handler,
# so the server itself must accept the announcement; streamed bodies are
# discarded past the limit.
SERVER_MAX_BODY = 64 * 1024 * 1024
# Request heads up to this size are read, so that one over INDICO_HEADER_LIMIT
# gets a JSON 431 from the handler; past it Tornado closes the connection.
SERVER_MAX_HEADER = 1024 * 1024


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line: ``--port``, ``--address``, ``--debug`` (None when not given)."""
    parser = argparse.ArgumentParser(prog="indico", description="Serve the indico API.")
    parser.add_argument("--port", type=int, help="port to listen on (INDICO_PORT)")
    parser.add_argument("--address", help="address to bind (INDICO_ADDRESS)")
    parser.add_argument("--debug", action="store_true", default=None,
                        help="tornado debug mode: autoreload (INDICO_DEBUG)")
    return parser.parse_args(argv)


class DrainingHTTPServer(tornado.httpserver.HTTPServer):
    """An HTTPServer that counts its open connections, so a shutdown can wait for them.

    WebSocket connections stop counting once upgraded (Tornado detaches them).
    """

    open_connections = 0

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple) -> None:
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)


def start_draining(in_flight: InFlight) -> None:
    """Make every answer from now on end its connection (``Connection: close``).

    A proxy that keeps connections alive (nginx's upstream ``keepalive``) then
    closes each connection after its answer instead of reusing it. The server
    must not close a kept-alive connection itself: nginx may be sending a
    request on it at that moment, and it does not retry a POST it has sent
    (``proxy_next_upstream`` without ``non_idempotent``), so the client would
    get a 502. Requests already in flight get the header too, or nginx would
    keep their connections and send more requests on them.

    Args:
        in_flight: the application's tracker; BaseHandler reads its ``draining``.
    """
    in_flight.draining = True
    for handler in list(in_flight.handlers):
        handler.set_header("Connection", "close")


def stop_listening(server: tornado.httpserver.HTTPServer,
                   sockets: list[socket.socket]) -> None:
    """Close the listening ``sockets``, first taking over the connections queued on them.

    Closing a listening socket resets the connections the kernel completed but
    the server has not accepted yet; nginx may already have sent a request on
    one, and answers 502 for a POST it sent. They are accepted here, in the
    same IOLoop step as the close, and served like the others; a connection
    attempted after the close is refused, which nginx passes to another backend.

    Args:
        server: the server the sockets were added to.
        sockets: its listening sockets (from ``tornado.netutil.bind_sockets``).
    """
    for sock in sockets:
        while True:
            try:
                connection, address = sock.accept()
            except OSError:  # BlockingIOError: nothing more is queued
                break
            stream = tornado.iostream.IOStream(connection, max_buffer_size=server.max_buffer_size,
                                               read_chunk_size=server.read_chunk_size)
            server.handle_stream(stream, address)
    server.stop()


async def wait_for_requests(in_flight: InFlight, grace: float,
                            server: DrainingHTTPServer | None = None) -> None:
    """Wait until no request is in flight and no client connection is open.

    Args:
        in_flight: the application's tracker of the requests being served.
        grace: the most seconds to wait.
        server: the DrainingHTTPServer whose connections must close first;
            requests only if None.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (
            in_flight.handlers or (server is not None and server.open_connections)):
        await asyncio.sleep(0.02)


async def serve(config: Config) -> None:
    """Run the server until SIGTERM or SIGINT.

    The database and the services are open for the time of the inner block;
    leaving it, normally or by an error, closes them in reverse order
    (:func:`indico.services.open_services`, :func:`indico.db.open_database`).

    Raises:
        ConfigError: INDICO_DATA_DIR cannot be used.
        StartupError: the embedded database cannot start.
        ConnectionFailure: the database does not answer at start.
    """
    try:
        os.makedirs(config.data_path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"INDICO_DATA_DIR: cannot use {config.data_path}: "
                          f"{exc.strerror}") from None
    async with open_database(config) as database:
        if config.load_sample_prices:
            for summary in await PriceImporter(database.db).load_sample_prices_if_empty():
                log.info("loaded sample prices: %s", summary.describe())
        async with open_services(config, database.db) as services:
            in_flight = InFlight()
            app = make_app(config, database.db, services, in_flight)
            # What exists now (modules, the app, the sample prices) lives as long as
            # the process: keep it out of the collector's full passes, which
            # otherwise stall requests for tens of milliseconds (docs/PERFORMANCE.md).
            gc.collect()
            gc.freeze()
            server = DrainingHTTPServer(app, max_body_size=SERVER_MAX_BODY,
                                        max_header_size=SERVER_MAX_HEADER,
                                        idle_connection_timeout=60, body_timeout=30)
            sockets = tornado.netutil.bind_sockets(config.port, config.address)
            server.add_sockets(sockets)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            log.info("indico %s listening on http://%s:%d", __version__, config.address,
                     config.port)
            log.info("session cache: %s s, change marks in %s (shared by this host's processes)",
                     config.session_cache, config.marks_path)
            await stop.wait()
            log.info("shutting down: no new connections, waiting for in-flight requests "
                     "and for %d open connections to close", server.open_connections)
            # Refused connections are safe: a proxy tries another backend, as
            # nothing was sent. Kept-alive ones are closed by their client after
            # the next answer, or by a proxy's idle timeout (deploy/nginx: 4 s).
            start_draining(in_flight)
            stop_listening(server, sockets)
            await wait_for_requests(in_flight, config.shutdown_grace, server)
            await asyncio.wait_for(server.close_all_connections(), 2.0)
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``indico-server``; exits with a message when it cannot start."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = Config.from_environ(port=args.port, address=args.address, debug=args.debug)
    except ConfigError as exc:
        sys.exit(f"indico: configuration error: {exc}")
    setup_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except (ConfigError, StartupError) as exc:
        sys.exit(f"indico: cannot start: {exc}")
    except PyMongoError as exc:
        # A database out of reach, or one that accepts connections but does not
        # answer in time (an operation timeout that is not a ConnectionFailure).
        if not isinstance(exc, ConnectionFailure) and not exc.timeout:
            raise
        where = "INDICO_MONGODB_URI" if config.mongodb_uri else "the embedded database"
        reason = str(exc).split(", Timeout:")[0]  # not the driver's topology dump
        sys.exit(f"indico: cannot start: the database does not answer ({where}): {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
