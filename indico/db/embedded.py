"""The embedded MongoDB-compatible server (nx-27017) that indico runs itself.

When no ``INDICO_MONGODB_URI`` is configured, :class:`EmbeddedServer` starts
``nx-27017`` as a child process bound to 127.0.0.1 on a free port, with its
SQLite files under ``<data dir>/db`` (one file per logical database, via
``--data-dir``) and its pid, port and log files beside them.

A second indico process on the same data directory (the price importer in
another terminal, say) finds the running server through ``server.json`` and
attaches to it instead of starting another; only the process that started the
server stops it. A pid or state file left by a crash is detected (the process
is gone or does not answer) and removed, so it never blocks a restart.

Run as ``python -m indico.db.embedded ARGS`` this module is the child process:
nx-27017's own entry point with its per-command INFO logging turned down.
"""

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from indico.db.util import Sleep
from indico.error import StartupError

log = logging.getLogger(__name__)

STATE_FILE = "server.json"



def _free_port(address: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int, address: str = "127.0.0.1") -> bool:
    """True when something already listens on ``address:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def _pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A server whose parent was killed may stay a zombie for as long as its new
    # parent does not reap it: it answers nothing, so it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _answers(uri: str, timeout: float) -> bool:
    """True when a MongoDB server at ``uri`` answers a ping within ``timeout`` s."""
    client: MongoClient[dict[str, object]] = MongoClient(
        uri, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000))
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


class EmbeddedServer:
    """Start, find, watch and stop the nx-27017 server for one data directory.

    Args:
        data_dir: indico's data directory; the server's files go under ``db/``.
        start_timeout: seconds to wait for the server to answer a ping.
        port: the port to listen on; a free one if None. Once started (or
            attached), the server's port is kept: a restart listens there again.
    """

    def __init__(self, data_dir: str, start_timeout: float = 20.0,
                 port: int | None = None) -> None:
        self.directory = os.path.join(os.path.abspath(data_dir), "db")
        self.start_timeout = start_timeout
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.uri: str | None = None
        self.owned = False

    @property
    def state_path(self) -> str:
        """The file that names the running server's pid and URI."""
        return os.path.join(self.directory, STATE_FILE)

    @property
    def pid_path(self) -> str:
        """The server's pid file."""
        return os.path.join(self.directory, "nx-27017.pid")

    def _running(self) -> tuple[int, str] | None:
        """Return ``(pid, uri)`` of a live server for this directory, or None.

        Removes state and pid files that a crashed server left behind.
        """
        try:
            with open(self.state_path) as handle:
                state = json.load(handle)
            pid, uri = int(state["pid"]), str(state["uri"])
        except (OSError, ValueError, KeyError, TypeError):
            state = None
        if state and _pid_alive(pid) and _answers(uri, 2.0):
            return pid, uri
        for path in (self.state_path, self.pid_path):
            try:
                os.remove(path)
                log.warning("removed stale file %s", path)
            except FileNotFoundError:
                pass
        return None

    def start(self) -> str:
        """Attach to this directory's running server, or start one.

        Returns:
            the ``mongodb://`` URI of the server.

        Raises:
            StartupError: the port is taken by something else, or the server
                exited or did not answer within ``start_timeout``.
        """
        os.makedirs(self.directory, exist_ok=True)
        with self._lock():
            return self._start_locked()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold ``db/start.lock`` exclusively (blocking until it is free).

        Held from the look for a live server to the state file written, so two
        processes (or a restart racing a take-over) start one server; and by
        :meth:`stop`, so a stop waits for a start in progress and stops its server.
        """
        with open(os.path.join(self.directory, "start.lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _start_locked(self) -> str:
        running = self._running()
        if running:
            self.pid, self.uri = running
            self.process, self.owned = None, False
            self.port = int(self.uri.rstrip("/").rsplit(":", 1)[1])
            log.info("attached to the embedded database at %s", self.uri)
            return self.uri
        port = self.port or _free_port()
        if _port_in_use(port):
            # A ping would be answered by whatever listens there, not by our server.
            raise StartupError(f"port {port} is already in use; the embedded database "
                               "cannot listen there")
        uri = f"mongodb://127.0.0.1:{port}/"
        command = [
            sys.executable, "-m", "indico.db.embedded",
            "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", self.directory,
            "--pid-file", self.pid_path,
            "--log-file", os.path.join(self.directory, "nx-27017.log"),
        ]
        # A session of its own: Ctrl-C in a terminal reaches indico, which then
        # stops the server in order, instead of killing both at once; and a
        # SIGKILL of indico leaves it running for the next start to attach to.
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.port, self.pid, self.owned = port, self.process.pid, True
        deadline = time.monotonic() + self.start_timeout
        while not _answers(uri, 0.5):
            if self.process.poll() is not None:
                self.owned = False
                raise StartupError(
                    f"the embedded database exited with code {self.process.returncode}; "
                    f"see {os.path.join(self.directory, 'nx-27017.log')}"
                )
            if time.monotonic() > deadline:
                self._stop_locked()
                raise StartupError(
                    f"the embedded database did not answer within {self.start_timeout} s "
                    "(INDICO_EMBEDDED_START_TIMEOUT)"
                )
            time.sleep(0.05)
        with open(self.state_path, "w") as handle:
            json.dump({"pid": self.process.pid, "uri": uri}, handle)
        self.uri = uri
        log.info("started the embedded database at %s (pid %d)", uri, self.process.pid)
        return uri

    def alive(self) -> bool:
        """True while the server this object started or attached to runs.

        Returns:
            False once that process has exited (for a server started here,
            its exit status is collected, so it leaves no zombie).
        """
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    async def recover(self, sleep: Sleep = asyncio.sleep, first_delay: float = 0.5,
                      max_delay: float = 10.0) -> int:
        """Start the dead server again on the same port, retrying with a back-off.

        Each attempt logs one line. A server started meanwhile by another
        process on this directory is attached to instead (see :meth:`start`).

        Args:
            sleep: ``await sleep(seconds)`` between attempts (injectable for tests).
            first_delay: seconds before the second attempt; doubled after each
                failure up to ``max_delay``.

        Returns:
            how many attempts it took.
        """
        loop = asyncio.get_running_loop()
        delay, attempt = first_delay, 1
        while True:
            try:
                await loop.run_in_executor(None, self.start)
            except (StartupError, OSError) as exc:
                log.warning("embedded database: restart attempt %d failed (%s); next in %g s",
                            attempt, exc, delay)
                await sleep(delay)
                delay, attempt = min(delay * 2, max_delay), attempt + 1
                continue
            log.warning("embedded database: restart attempt %d succeeded, %s at %s (pid %d)",
                        attempt, "started" if self.owned else "attached", self.uri, self.pid)
            return attempt

    async def watch(self, sleep: Sleep = asyncio.sleep, interval: float = 0.5,
                    **backoff: float) -> None:
        """Restart the server whenever it dies, until cancelled.

        Args:
            sleep: ``await sleep(seconds)``, injectable for tests.
            interval: seconds between looks at the process.
            **backoff: ``first_delay`` and ``max_delay`` of :meth:`recover`.
        """
        while True:
            await sleep(interval)
            if self.alive():
                continue
            code = self.process.returncode if self.process is not None else None
            log.warning("embedded database: the server at %s (pid %s) exited%s; restarting it "
                        "on the same port", self.uri, self.pid,
                        "" if code is None else f" with code {code}")
            await self.recover(sleep, **backoff)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server if this object started it; a no-op otherwise."""
        if self.pid is None:  # never started nor attached
            return
        with self._lock():
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 10.0) -> None:
        if not self.owned or self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.remove(self.state_path)
        except FileNotFoundError:
            pass
        self.owned = False
        log.info("stopped the embedded database")


def _serve() -> None:  # pragma: no cover - runs in the child process
    """Child-process entry point: nx-27017 with quiet logging."""
    from nx_27017.nx_27017 import main

    # nx-27017 logs every command at INFO, and its storage layer a warning for
    # every query it evaluates in Python: keep errors only.
    logging.getLogger("nx_27017").setLevel(logging.ERROR)
    logging.getLogger("neosqlite").setLevel(logging.ERROR)
    sys.argv = ["nx-27017", *sys.argv[1:]]
    main()


if __name__ == "__main__":
    _serve()
