"""Render, start and stop an indico stack: supervisord, N backends, nx-27017, nginx.

``make deploy-up`` / ``make deploy-down`` run this file with the virtualenv's
Python::

    python deploy/stack.py up --dir /tmp/x --port 8080 [--backends 2] [--set INDICO_X=Y ...]
    python deploy/stack.py restart --dir /tmp/x     # rolling restart, one backend at a time
    python deploy/stack.py down --dir /tmp/x
    python deploy/stack.py render --dir /srv/indico --out /tmp/conf --listen 80 ...

``up`` starts everything on 127.0.0.1, in this order, and returns once
``GET http://127.0.0.1:PORT/backend/healthCheck`` answers 200: supervisord
with its own configuration and socket in DIR (never the system service),
then the database (nx-27017, unless ``--mongodb-uri`` is given), then the
sample prices imported once with ``indico-prices import`` (several backends
starting at once on an empty store would each import them; the store's
compare-and-set keeps one copy, but every loser writes and removes a whole
staged set first), then the backends (each waited for on its own port), then
nginx. ``down`` stops supervisord (which stops every program), then makes
sure that no process of the stack is left: any process carrying the stack's
marker in its environment (an optimization worker orphaned by a ``kill -9``
of its backend, say) is killed by its pid and reported.

``render`` writes the same files for a server (``--out``), for the system's
supervisor and nginx: see README "Deploying".
"""

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SAMPLE_PRICES = [os.path.join(REPO, "indico", "data", name)
                 for name in ("sp500_prices.csv.gz", "sp500_index.csv.gz")]
# Marks every process of a stack (children inherit it), so that `down` can
# find what a crash left behind. Not INDICO_*: indico refuses unknown settings.
MARKER = "DEPLOY_STACK_DIR"
STATE_FILE = "stack.json"
DEFAULT_SHUTDOWN_GRACE = 8.0
DEFAULT_BODY_LIMIT = 65536
START_TIMEOUT = 90.0


class StackError(RuntimeError):
    """The stack cannot be started or stopped; the message says why."""


def render_template(name: str, values: dict) -> str:
    """Fill the ``{{NAME}}`` placeholders of ``deploy/<name>``.

    Raises:
        StackError: a placeholder has no value.
    """
    with open(os.path.join(HERE, name)) as handle:
        text = handle.read()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if "{{" in text:
        start = text.index("{{")
        raise StackError(f"{name}: no value for {text[start:text.index('}}', start) + 2]}")
    return text


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def backend_ports(prefix: str, backends: int) -> list[int]:
    """The backends' ports: ``<prefix>01``, ``<prefix>02``, ... as supervisor names them."""
    return [int(f"{prefix}{number:02d}") for number in range(1, backends + 1)]


def free_port_prefix(backends: int) -> str:
    """A prefix whose backend ports are all free (``18001..``, ``18101..``, ...)."""
    for prefix in range(180, 600):
        if all(not port_in_use(port) for port in backend_ports(str(prefix), backends)):
            return str(prefix)
    raise StackError("no free range of backend ports found")


def parse_settings(pairs: list[str]) -> dict:
    """``["INDICO_X=1", ...]`` -> ``{"INDICO_X": "1"}``.

    Raises:
        StackError: a pair is not ``INDICO_NAME=value``.
    """
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("INDICO_") or '"' in value:
            raise StackError(f"--set {pair!r}: write INDICO_NAME=value (no double quotes)")
        settings[key] = value
    return settings


def render(directory: str, out: str, *, port: int, backends: int, port_prefix: str,
           db_port: int, mongodb_uri: str, settings: dict, listen: str, server_name: str,
           stack: bool, user: str | None = None) -> dict:
    """Write the supervisor and nginx configuration of a stack into ``out``.

    Args:
        directory: the stack's directory (logs, data, sockets), absolute.
        out: where the configuration files go (``directory`` for a local stack).
        port: nginx's port (shown in comments and the state).
        backends: the number of indico processes.
        port_prefix: their ports are ``<prefix>01``, ``<prefix>02``, ...
        db_port: nx-27017's port, when ``mongodb_uri`` is empty.
        mongodb_uri: a MongoDB URI; empty: nx-27017 as a supervised program.
        settings: more ``INDICO_*`` variables for the backends.
        listen: nginx's ``listen`` argument.
        server_name: nginx's ``server_name``.
        stack: a local stack (supervisord of its own, nginx under it, backends
            started by :func:`up` in order) rather than files for a server.
        user: the user supervisor runs the programs as (servers); none if None.

    Returns:
        the stack's state: ports, URI, paths.
    """
    shutdown_grace = float(settings.get("INDICO_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE))
    body_limit = int(settings.get("INDICO_BODY_LIMIT", DEFAULT_BODY_LIMIT))
    uri = mongodb_uri or f"mongodb://127.0.0.1:{db_port}/"
    extra = {key: value for key, value in settings.items()
             if key not in ("INDICO_SHUTDOWN_GRACE", "INDICO_BODY_LIMIT")}
    session_cache = extra.pop("INDICO_SESSION_CACHE", "5")
    ports = backend_ports(port_prefix, backends)
    values = {
        "DIR": directory, "PORT": port, "BACKENDS": backends, "PORT_PREFIX": port_prefix,
        "PYTHON": sys.executable, "NGINX": shutil.which("nginx") or "/usr/sbin/nginx",
        "DB_PORT": db_port, "DB_DIR": os.path.join(directory, "nx-27017"),
        "MONGODB_URI": uri, "SESSION_CACHE": session_cache,
        "SHUTDOWN_GRACE": f"{shutdown_grace:g}", "STOP_WAIT": int(shutdown_grace + 7),
        "BODY_LIMIT": body_limit, "AUTOSTART": "false" if stack else "true",
        "EXTRA_ENV": "".join(f',{key}="{value}"' for key, value in sorted(extra.items())),
        "USER_LINE": f"user={user}" if user else "",
        "LISTEN": listen, "SERVER_NAME": server_name, "SERVER_EXTRA": "",
        "UPSTREAM_SERVERS": "\n".join(
            f"    server 127.0.0.1:{p} max_fails=0;"
            for p in ports),
        "ACCESS_LOG": os.path.join(directory, "log", "nginx-access.log") if stack
        else "/var/log/nginx/indico-access.log",
        "NGINX_INDICO_LOCATIONS": os.path.join(out, "nginx-indico-locations.conf") if stack
        else "/etc/nginx/indico-locations.conf",
        # nginx started as root switches its workers to `user`; root keeps
        # them able to use the stack's private temporary directories.
        "NGINX_USER": "user root;" if os.geteuid() == 0 else "",
        "NGINX_WORKERS": "auto",
    }
    os.makedirs(out, exist_ok=True)
    programs = "" if mongodb_uri else render_template("supervisor/indico-db.conf.in", values)
    programs += render_template("supervisor/indico.conf.in", values)
    files = {"indico.supervisor.conf": programs,
             "nginx-indico.conf": render_template("nginx/indico.conf.in", values),
             "nginx-indico-locations.conf": render_template("nginx/locations.conf.in", values)}
    if stack:
        files["indico.supervisor.conf"] += render_template("supervisor/nginx.conf.in", values)
        files["supervisord.conf"] = render_template("supervisor/supervisord.conf.in", values)
        files["nginx.conf"] = render_template("nginx/nginx.conf.in", values)
    for name, text in files.items():
        with open(os.path.join(out, name), "w") as handle:
            handle.write(text)
    return {"dir": directory, "port": port, "backends": backends, "ports": ports,
            "port_prefix": port_prefix, "db_port": None if mongodb_uri else db_port,
            "mongodb_uri": uri, "settings": settings}


# -- packages ------------------------------------------------------------------

def ensure_packages() -> None:
    """Install nginx and supervisor with apt when they are missing.

    The packages' own system services are kept from starting (a temporary
    ``policy-rc.d``, Debian's mechanism for that, when none exists): the
    stack runs its own supervisord and nginx.

    Raises:
        StackError: they are missing and cannot be installed.
    """
    if shutil.which("nginx") and shutil.which("supervisord") and shutil.which("supervisorctl"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError("nginx and supervisor are missing: "
                         "sudo apt-get install -y nginx supervisor")
    policy = "/usr/sbin/policy-rc.d"
    created = not os.path.exists(policy)
    if created:
        with open(policy, "w") as handle:
            handle.write("#!/bin/sh\n# written by indico deploy/stack.py during apt-get\n"
                         "exit 101\n")
        os.chmod(policy, 0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        print("installing nginx and supervisor with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx", "supervisor"], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        raise StackError(f"apt-get failed: {exc}") from None
    finally:
        if created:
            os.remove(policy)


# -- running -------------------------------------------------------------------

def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def wait_for(check, what: str, timeout: float = START_TIMEOUT, interval: float = 0.1) -> float:
    """Call ``check()`` until it is true; return the seconds it took.

    Raises:
        StackError: ``timeout`` passed first.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(interval)
    raise StackError(f"{what} did not happen within {timeout:g} s")


def supervisorctl(directory: str, *arguments: str, check: bool = True) -> str:
    """Run ``supervisorctl -c DIR/supervisord.conf ARGS``; return its output.

    Raises:
        StackError: it failed and ``check`` is true.
    """
    result = subprocess.run(["supervisorctl", "-c", os.path.join(directory, "supervisord.conf"),
                             *arguments], capture_output=True, text=True, timeout=120,
                            check=False)
    if check and result.returncode != 0:
        raise StackError(f"supervisorctl {' '.join(arguments)}: "
                         f"{(result.stdout + result.stderr).strip()}")
    return result.stdout


def program_pids(directory: str) -> dict:
    """``{"indico:indico-1": pid, ...}`` for the running programs of the stack."""
    pids = {}
    for line in supervisorctl(directory, "status", check=False).splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "RUNNING" and parts[2] == "pid":
            pids[parts[0]] = int(parts[3].rstrip(","))
    return pids


def backend_names(state: dict) -> list[str]:
    return [f"indico:indico-{number}" for number in range(1, state["backends"] + 1)]


def load_state(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, STATE_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def stack_environ(state: dict) -> dict:
    """The environment of indico tools run against the stack (the price importer)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update({"INDICO_MONGODB_URI": state["mongodb_uri"],
                "INDICO_DATA_DIR": os.path.join(state["dir"], "data")})
    return env


def up(directory: str, port: int, backends: int, settings: dict, mongodb_uri: str = "",
       port_prefix: str | None = None) -> dict:
    """Start the stack in ``directory``; return once nginx's health check answers 200.

    Raises:
        StackError: a port is taken, a program does not start, or the health
            check never answers 200 (the stack is stopped again then).
    """
    directory = os.path.abspath(directory)
    ensure_packages()
    if os.path.exists(os.path.join(directory, "run", "supervisord.pid")) and \
            program_pids(directory):
        raise StackError(f"a stack is already running in {directory}: make deploy-down first")
    if port_in_use(port):
        raise StackError(f"port {port} is already in use")
    previous = load_state(directory) or {}
    port_prefix = port_prefix or free_port_prefix(backends)
    busy = [p for p in backend_ports(port_prefix, backends) if port_in_use(p)]
    if busy:
        raise StackError(f"backend ports in use: {busy}")
    db_port = previous.get("db_port") or free_port()
    for name in ("run", "log", "data", "nginx", "nx-27017"):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    state = render(directory, directory, port=port, backends=backends, port_prefix=port_prefix,
                   db_port=db_port, mongodb_uri=mongodb_uri, settings=settings,
                   listen=f"127.0.0.1:{port}", server_name="localhost", stack=True)
    with open(os.path.join(directory, STATE_FILE), "w") as handle:
        json.dump(state, handle, indent=1)
    started = time.monotonic()
    try:
        subprocess.run(["supervisord", "-c", os.path.join(directory, "supervisord.conf")],
                       check=True, timeout=30)
        if not mongodb_uri:
            wait_for(lambda: "indico-db" in program_pids(directory), "the database program")
        env = stack_environ(state)
        # Once, before any backend: see the module docstring.
        subprocess.run([sys.executable, "-m", "indico.prices", "import", "--quiet",
                        *SAMPLE_PRICES], check=True, env=env, cwd=directory, timeout=300,
                       stdout=subprocess.DEVNULL)
        supervisorctl(directory, "start", "indico:*")
        for backend_port in state["ports"]:
            url = f"http://127.0.0.1:{backend_port}/healthCheck"
            wait_for(lambda url=url: http_status(url) == 200,
                     f"the backend on port {backend_port} answering its health check")
        supervisorctl(directory, "start", "nginx")
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/backend/healthCheck") == 200,
                 f"GET http://127.0.0.1:{port}/backend/healthCheck answering 200")
    except (StackError, subprocess.SubprocessError, OSError) as exc:
        down(directory, quiet=True)
        raise StackError(f"the stack did not start: {exc}; logs in {directory}/log") from None
    print(f"indico: {backends} backends on ports {state['ports'][0]}..{state['ports'][-1]}, "
          f"database {state['mongodb_uri']}, nginx on http://127.0.0.1:{port}/backend/ "
          f"({time.monotonic() - started:.1f} s); logs in {directory}/log", flush=True)
    return state


def marked_processes(directory: str) -> list[int]:
    """Pids of the processes whose environment carries this stack's marker."""
    needle = f"{MARKER}={os.path.abspath(directory)}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read() + b"\0":
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def down(directory: str, quiet: bool = False) -> list[int]:
    """Stop the stack in ``directory`` and make sure none of its processes is left.

    Returns:
        the pids of processes that outlived supervisord and were killed.

    Raises:
        StackError: a process of the stack is still alive at the end.
    """
    directory = os.path.abspath(directory)
    pid_path = os.path.join(directory, "run", "supervisord.pid")
    try:
        with open(pid_path) as handle:
            supervisord = int(handle.read().strip())
    except (OSError, ValueError):
        supervisord = None
    if supervisord and os.path.exists(os.path.join(directory, "run", "supervisor.sock")):
        supervisorctl(directory, "shutdown", check=False)
        try:
            wait_for(lambda: not _alive(supervisord), "supervisord exiting", timeout=90)
        except StackError:
            pass
    leftovers = marked_processes(directory)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(_alive(pid) for pid in leftovers), "leftover processes exiting",
             timeout=10)
    remaining = marked_processes(directory)
    if remaining:
        raise StackError(f"processes of the stack are still running: {remaining}")
    if not quiet:
        left = f"; killed {len(leftovers)} left-over processes {leftovers}" if leftovers else ""
        print(f"indico: the stack in {directory} is stopped, no process left{left}", flush=True)
    return leftovers


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def rolling_restart(directory: str) -> list[dict]:
    """Restart the backends one at a time, each back and seen by nginx before the next.

    Returns:
        one ``{"name", "seconds"}`` per backend: how long its restart took.
    """
    state = load_state(directory)
    if state is None:
        raise StackError(f"no stack in {directory}")
    timings = []
    for name, backend_port in zip(backend_names(state), state["ports"], strict=True):
        started = time.monotonic()
        supervisorctl(directory, "restart", name)
        url = f"http://127.0.0.1:{backend_port}/healthCheck"
        wait_for(lambda url=url: http_status(url) == 200, f"{name} answering its health check")
        time.sleep(1.0)  # settle (its pool starts with its first job) before the next
        timings.append({"name": name, "seconds": time.monotonic() - started})
    return timings


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="deploy/stack.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "restart", "render"):
        command = commands.add_parser(name)
        command.add_argument("--dir", required=True, help="the stack's directory")
        if name in ("up", "render"):
            command.add_argument("--port", type=int, default=8080, help="nginx's port")
            command.add_argument("--backends", type=int, default=2)
            command.add_argument("--mongodb-uri", default="",
                                 help="a MongoDB URI; none: nx-27017 under supervisor")
            command.add_argument("--set", action="append", default=[], metavar="INDICO_X=V",
                                 help="a setting for the backends (repeatable)")
        if name == "up":
            command.add_argument("--port-prefix", help="backend ports <prefix>01..; free if unset")
        if name == "render":
            command.add_argument("--out", required=True, help="where to write the files")
            command.add_argument("--port-prefix", default="80")
            command.add_argument("--db-port", type=int, default=27017)
            command.add_argument("--listen", default="80")
            command.add_argument("--server-name", default="_")
            command.add_argument("--user", default=None,
                                 help="run the programs as this user (system supervisor)")
    args = parser.parse_args(argv)
    try:
        if args.command in ("up", "render") and not 1 <= args.backends <= 99:
            raise StackError("--backends: between 1 and 99")
        if args.command == "up":
            up(args.dir, args.port, args.backends, parse_settings(args.set), args.mongodb_uri,
               args.port_prefix)
        elif args.command == "down":
            ensure_packages()  # as for up: down stops the stack with supervisorctl
            down(args.dir)
        elif args.command == "restart":
            for timing in rolling_restart(os.path.abspath(args.dir)):
                print(f"{timing['name']}: restarted in {timing['seconds']:.1f} s", flush=True)
        else:
            if args.user:
                pwd.getpwnam(args.user)  # KeyError: no such user
            render(os.path.abspath(args.dir), os.path.abspath(args.out), port=args.port,
                   backends=args.backends, port_prefix=args.port_prefix, db_port=args.db_port,
                   mongodb_uri=args.mongodb_uri, settings=parse_settings(args.set),
                   listen=args.listen, server_name=args.server_name, stack=False,
                   user=args.user)
            print(f"wrote indico.supervisor.conf, nginx-indico.conf and "
                  f"nginx-indico-locations.conf in {args.out}")
    except StackError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
