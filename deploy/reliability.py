"""``make deploy-test``: load, scaling and fault scenarios against real stacks.

Starts stacks with ``make deploy-up`` (free ports, a temporary directory),
drives them through nginx with an asyncio HTTP/1.1 keep-alive client, and
stops them with ``make deploy-down``, also when a check fails. Prints one
table (recorded in docs/RELIABILITY.md) and exits 1 if any check failed.

Scenarios (each a row of the table):

- load: 30 s of mixed traffic (auth/check, user/update, portfolio/optimize on
  the sample prices, portfolio/result, portfolio/list) from 50 connections,
  one signed-up user each, through nginx; 0 errors.
- scaling: the same load with 1 and 4 backends, with each process's CPU time
  (from /proc/<pid>/stat) as the profile.
- backend crash: ``kill -9`` of one backend under load. Supervisor starts a
  new one within 5 s; the only failures are requests that were in flight on
  that backend at that instant (counted from nginx's log), each a JSON 502.
- rolling restart: ``supervisorctl restart`` of each backend in turn
  (``deploy/stack.py restart``) under load; 0 failures.
- database crash: ``kill -9`` of nx-27017 under writes. Meanwhile indico answers
  503 (JSON) within INDICO_DB_TIMEOUT + 0.5 s; after supervisor restarts it the
  API answers again within 10 s, with no backend restarted; every acknowledged
  write is in the database (read with pymongo).
- job crash: ``kill -9`` of the backend holding a job's lease
  (INDICO_JOB_LEASE=3 on this stack): the job still finishes, and WebSocket
  clients connected through nginx receive its ``done`` event.
- proxy: nginx's own answers (413, 431, 404, 429, the banner) are indico's
  JSON envelope; a browser's WebSocket handshake (its Origin the host it
  loaded the page from) is accepted through nginx.

Run ``python deploy/reliability.py --help`` for the options (shorter runs).
"""

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pymongo
import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack  # deploy/stack.py, beside this file

REPO = stack.REPO
USERS = 50
CONNECTIONS = 50
DB_TIMEOUT = 2.0  # INDICO_DB_TIMEOUT's default, which the stacks keep
JOB_LEASE = 3.0
# Seconds the database crash keeps the database down before supervisor may restart it.
DATABASE_DOWN = 4.0
# Jobs queued by the job crash (and the per-user limit of the fault stack).
CRASH_JOBS = 20
WARM_JOBS = 4
# How long after a backend's crash nginx may still pass a request to one of its
# kept-alive connections (it has not handled the connection's close yet).
NGINX_LAG = 0.25
MIX = (("check", 30), ("update", 20), ("optimize", 20), ("result", 15), ("list", 15))
WRITE_MIX = (("update", 60), ("optimize", 40))
EXPECTED = {"check": 200, "update": 200, "optimize": 200, "result": 200, "list": 200,
            "signup": 201}


def sample_symbols() -> list[str]:
    with gzip.open(os.path.join(REPO, "indico", "data", "sp500_prices.csv.gz"), "rt") as handle:
        return handle.readline().strip().split(",")[1:]


SYMBOLS = sample_symbols()


# -- a small HTTP/1.1 keep-alive client ------------------------------------------

class HTTPConnection:
    """One kept-alive HTTP/1.1 connection; reconnects after the server closes it."""

    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.port = port
        self.source = source
        self.reader = self.writer = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body=None, token: str | None = None,
                      headers: dict | None = None, timeout: float = 30.0):
        """Send one request; return ``(status, headers, body bytes)``.

        Raises:
            OSError, asyncio.IncompleteReadError, TimeoutError: the connection
                failed (it is closed then).
        """
        try:
            return await asyncio.wait_for(self._request(method, path, body, token, headers),
                                          timeout)
        except BaseException:
            await self.close()
            raise

    async def _request(self, method, path, body, token, headers):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", self.port, local_addr=(self.source, 0))
        payload = b"" if body is None else (body if isinstance(body, bytes)
                                            else json.dumps(body).encode())
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}",
                 f"Content-Length: {len(payload)}"]
        if payload:
            lines.append("Content-Type: application/json")
        if token:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        response_headers = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                response_headers[key.strip().lower()] = value.strip()
        if response_headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.readexactly(int(response_headers.get("content-length", 0)))
        if response_headers.get("connection", "").lower() == "close":
            await self.close()
        return status, response_headers, data


# -- outcomes ----------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """One request as the client saw it."""

    op: str
    started: float  # wall clock (time.time()), comparable with nginx's log
    seconds: float
    status: int | None  # None: the connection failed
    error_type: str | None
    ok: bool
    detail: str = ""
    request_id: str = ""


def check_envelope(status: int, headers: dict, data: bytes, expected: int):
    """``(ok, error type, detail)``: the answer is the JSON envelope with ``expected``."""
    if not headers.get("content-type", "").startswith("application/json"):
        return False, None, f"Content-Type {headers.get('content-type')!r}"
    try:
        document = json.loads(data)
    except ValueError:
        return False, None, f"not JSON: {data[:80]!r}"
    if not isinstance(document, dict) or document.get("status") != status:
        return False, None, f"envelope status {document.get('status')!r} != {status}"
    if status >= 400:
        problem = document.get("error") or {}
        kind = problem.get("type")
        if not kind or not problem.get("message"):
            return False, kind, "error without type or message"
        return status == expected, kind, problem.get("message", "")[:100]
    return status == expected and "data" in document, None, ""


class Recorder:
    """Collects outcomes and the client-side log of acknowledged writes."""

    def __init__(self):
        self.outcomes: list[Outcome] = []
        self.sent_names = collections.defaultdict(list)  # user -> names sent, in order
        self.acked_names = {}  # user -> index in sent_names of the last acknowledged name
        self.acked_jobs = set()  # answered 200: done
        self.accepted_jobs = set()  # answered 202: stored, may still run

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


def summarize(outcomes: list[Outcome], seconds: float) -> dict:
    latencies = sorted(o.seconds for o in outcomes if o.ok)

    def quantile(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 \
            if latencies else float("nan")
    return {"requests": len(outcomes), "rps": len(outcomes) / seconds, "p50": quantile(0.5),
            "p99": quantile(0.99), "errors": sum(not o.ok for o in outcomes),
            "by_op": collections.Counter(o.op for o in outcomes)}


# -- users and traffic -------------------------------------------------------------

async def sign_up(port: int, count: int, run_id: str) -> list[dict]:
    """Sign up ``count`` users through nginx, each from its own loopback address.

    Distinct source addresses (127.0.0.10, 127.0.0.11, ...) stay under nginx's
    and indico's per-address sign-up limits, which they can only do if indico
    believes nginx's X-Real-IP.
    """
    users = []

    async def one(number):
        connection = HTTPConnection(port, f"127.0.0.{10 + number}")
        email = f"load-{run_id}-{number}@example.com"
        status, _, data = await connection.request(
            "POST", "/backend/auth/signup", {"email": email, "password": "load-password-1"})
        await connection.close()
        if status != 201:
            raise RuntimeError(f"sign-up {email}: {status} {data[:200]!r}")
        body = json.loads(data)["data"]
        users.append({"email": email, "token": body["token"], "id": body["user"]["id"],
                      "number": number})
    for offset in range(0, count, 10):
        await asyncio.gather(*(one(n) for n in range(offset, min(count, offset + 10))))
    return sorted(users, key=lambda user: user["number"])


def optimize_body(rng: random.Random) -> dict:
    """A seed-style optimization on the sample prices that always has a solution.

    UNH rose over every window of 2010-2019, so max_sharpe always finds a
    portfolio beating the risk-free rate of 0 (others might all have fallen).
    """
    start = rng.randrange(2010, 2017)
    others = [symbol for symbol in SYMBOLS if symbol != "UNH"]
    return {"symbols": ["UNH", *rng.sample(others, rng.randrange(2, 5))],
            "startDate": f"{start}-01-04", "endDate": f"{start + rng.randrange(2, 4)}-12-28",
            "initialInvestment": 10000,
            "objective": rng.choice(["max_sharpe", "max_sharpe", "min_volatility"])}


async def user_loop(port: int, user: dict, deadline: float, recorder: Recorder,
                    mix=MIX, seed: int = 0) -> None:
    """One connection's traffic until ``deadline`` (monotonic)."""
    rng = random.Random(seed)
    names, weights = zip(*mix, strict=True)
    connection = HTTPConnection(port)
    last_job = None
    sequence = 0
    while time.monotonic() < deadline:
        op = rng.choices(names, weights)[0]
        if op == "result" and last_job is None:
            op = "check"
        body = {}
        if op == "update":
            sequence += 1
            name = f"n-{user['number']}-{sequence}"
            recorder.sent_names[user["id"]].append(name)
            body = {"update_user": {"name": name}}
        elif op == "optimize":
            body = optimize_body(rng)
        elif op == "result":
            body = {"id": last_job}
        elif op == "list":
            body = {"limit": 10}
        path = {"check": "auth/check", "update": "user/update", "optimize": "portfolio/optimize",
                "result": "portfolio/result", "list": "portfolio/list"}[op]
        started, clock = time.time(), time.monotonic()
        # Our own request id (nginx passes it on and logs it), so a request
        # that got no answer can be found in nginx's and the backends' logs.
        request_id = uuid.uuid4().hex
        try:
            status, headers, data = await connection.request(
                "POST", f"/backend/{path}", body, token=user["token"],
                headers={"X-Request-ID": request_id})
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            recorder.add(Outcome(op, started, time.monotonic() - clock, None, None, False,
                                 f"{type(exc).__name__}: {exc}"[:100], request_id))
            await asyncio.sleep(0.05)
            continue
        seconds = time.monotonic() - clock
        ok, kind, detail = check_envelope(status, headers, data, EXPECTED[op])
        if op == "optimize" and status == 202:
            ok, kind, detail = True, None, "202"
        recorder.add(Outcome(op, started, seconds, status, kind, ok, detail,
                             headers.get("x-request-id", "")))
        if ok and op == "update":
            recorder.acked_names[user["id"]] = len(recorder.sent_names[user["id"]]) - 1
        if ok and op == "optimize":
            last_job = json.loads(data)["data"]["id"]
            if status == 200:
                recorder.acked_jobs.add(last_job)
            else:
                recorder.accepted_jobs.add(last_job)
        if not ok:
            await asyncio.sleep(0.05)  # a failing stack is not hammered
    await connection.close()


async def run_load(port: int, users: list[dict], seconds: float, recorder: Recorder,
                   mix=MIX, connections: int = CONNECTIONS, seed: int = 1) -> float:
    """Run ``connections`` user loops for ``seconds``; return the wall time taken."""
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(user_loop(port, users[i % len(users)], deadline, recorder, mix,
                                     seed * 1000 + i) for i in range(connections)))
    return time.monotonic() - started


# -- the stack's processes ----------------------------------------------------------

def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def cpu_by_role(directory: str, roles: dict) -> dict:
    """CPU seconds used so far per role: each supervised program with its descendants.

    Args:
        roles: ``{pid: role}`` of the supervised programs.
    """
    totals = collections.defaultdict(float)
    for pid in stack.marked_processes(directory):
        ancestor = pid
        while ancestor and ancestor not in roles:
            ancestor = parent_of(ancestor)
        role = roles.get(ancestor, "supervisord") if ancestor else "supervisord"
        totals[role] += cpu_seconds(pid) or 0.0
    return totals


def program_roles(directory: str) -> dict:
    roles = {}
    for name, pid in stack.program_pids(directory).items():
        roles[pid] = {"indico-db": "database", "nginx": "nginx"}.get(
            name, name.split(":")[-1])
    return roles


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


class Stack:
    """A stack started with ``make deploy-up`` and stopped with ``make deploy-down``."""

    def __init__(self, directory: str, backends: int, settings: dict):
        self.directory = directory
        self.backends = backends
        self.settings = settings
        self.port = stack.free_port()
        self.state = None

    def __enter__(self):
        command = ["make", "--no-print-directory", "-C", REPO, "deploy-up",
                   f"PORT={self.port}", f"DIR={self.directory}", f"BACKENDS={self.backends}"]
        if self.settings:
            command.append("SETTINGS=" + " ".join(f"{k}={v}" for k, v in self.settings.items()))
        try:
            subprocess.run(command, check=True, timeout=240)
        except BaseException:
            self.down()
            raise
        self.state = stack.load_state(self.directory)
        return self

    def down(self) -> str:
        result = subprocess.run(["make", "--no-print-directory", "-C", REPO, "deploy-down",
                                 f"DIR={self.directory}"], capture_output=True, text=True,
                                timeout=240, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"make deploy-down failed: {result.stdout}{result.stderr}")
        return result.stdout.strip().splitlines()[-1]

    def __exit__(self, *exc_info):
        self.last_down = self.down()

    def pids(self) -> dict:
        return stack.program_pids(self.directory)

    def spawned_after(self, process: str, old_pid: int) -> float | None:
        """When supervisord spawned ``process`` again after ``old_pid`` (its log's clock)."""
        seen_old = False
        with open(os.path.join(self.directory, "log", "supervisord.log")) as handle:
            for line in handle:
                if f"spawned: '{process}' with pid" not in line:
                    continue
                pid = int(line.rsplit(" ", 1)[1])
                if pid == old_pid:
                    seen_old = True
                elif seen_old:
                    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    return stamp.timestamp()
        return None

    def nginx_log(self) -> list[dict]:
        entries = []
        with open(os.path.join(self.directory, "log", "nginx-access.log")) as handle:
            for line in handle:
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries


# -- the report ------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.rows = []
        self.checks = []
        self.notes = []

    def row(self, scenario: str, backends: int, stats: dict | None, note: str) -> None:
        self.rows.append((scenario, backends, stats, note))

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append((name, passed, detail))
        print(f"  [{'ok' if passed else 'FAILED'}] {name}{': ' + detail if detail else ''}",
              flush=True)
        return passed

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  {text}", flush=True)

    def print(self) -> None:
        print("\n| scenario | backends | requests | req/s | p50 ms | p99 ms | errors | notes |")
        print("|---|---|---|---|---|---|---|---|")
        for scenario, backends, stats, note in self.rows:
            if stats:
                print(f"| {scenario} | {backends} | {stats['requests']} | {stats['rps']:.0f} | "
                      f"{stats['p50']:.1f} | {stats['p99']:.1f} | {stats['errors']} | {note} |")
            else:
                print(f"| {scenario} | {backends} | - | - | - | - | - | {note} |")
        failed = [name for name, passed, _ in self.checks if not passed]
        print(f"\nchecks: {len(self.checks) - len(failed)} passed, {len(failed)} failed"
              + (f" ({'; '.join(failed)})" if failed else ""))

    @property
    def failed(self) -> bool:
        return any(not passed for _, passed, _ in self.checks)


# -- scenarios ----------------------------------------------------------------------

async def measure_load(report: Report, st: Stack, users: list[dict], seconds: float,
                       scenario: str) -> dict:
    """Warm up, then run the mixed load for ``seconds`` and record a row with the profile."""
    # Warm-up, not counted: price caches filled, every backend's pool started
    # (its first optimization waits for the forkserver and the workers' imports).
    await run_load(st.port, users, 6.0, Recorder(), seed=7)
    roles = program_roles(st.directory)
    before, self_before = cpu_by_role(st.directory, roles), self_cpu()
    recorder = Recorder()
    wall = await run_load(st.port, users, seconds, recorder, seed=11)
    after, self_after = cpu_by_role(st.directory, roles), self_cpu()
    stats = summarize(recorder.outcomes, wall)
    usage = {role: (after[role] - before.get(role, 0.0)) / wall for role in after}
    usage["load generator"] = (self_after - self_before) / wall
    backends = sum(v for k, v in usage.items() if k.startswith("indico-"))
    profile = ", ".join(f"{role} {share * 100:.0f}%" for role, share in sorted(
        usage.items(), key=lambda item: -item[1]) if share >= 0.005)
    total = sum(usage.values())
    report.row(scenario, st.backends, stats,
               f"CPU (% of one core): {profile}; all {total * 100:.0f}% of 200%")
    report.check(f"{scenario}: 0 errors", stats["errors"] == 0, describe_errors(recorder))
    stats["usage"], stats["backend_cpu"] = usage, backends
    return stats


def describe_errors(recorder: Recorder, limit: int = 3) -> str:
    bad = [o for o in recorder.outcomes if not o.ok]
    if not bad:
        return ""
    kinds = collections.Counter((o.op, o.status, o.error_type) for o in bad)
    return "; ".join(f"{op} {status} {kind} x{count}" for (op, status, kind), count
                     in kinds.most_common(limit)) + f"; first: {bad[0].detail}"


def trace_failures(st: "Stack", recorder: Recorder, limit: int = 3) -> str:
    """Where the first failed requests went: nginx's log line and the backends' lines."""
    bad = [o for o in recorder.outcomes if not o.ok and o.request_id][:limit]
    if not bad:
        return ""
    wanted = {o.request_id for o in bad}
    found = {rid: [] for rid in wanted}
    for entry in st.nginx_log():
        if entry.get("request_id") in wanted:
            found[entry["request_id"]].append(
                f"nginx {entry['status']} {entry['request_time']} s via {entry['upstream']} "
                f"({entry['upstream_status']}, {entry['upstream_time']} s)")
    log_dir = os.path.join(st.directory, "log")
    for name in sorted(os.listdir(log_dir)):
        if name.startswith("indico-") and name.endswith(".log"):
            with open(os.path.join(log_dir, name), errors="replace") as handle:
                for line in handle:
                    for rid in wanted:
                        if rid in line:
                            found[rid].append(f"{name}: {line.strip()[:200]}")
    return "; traced: " + " | ".join(
        f"{o.op} {o.request_id[:8]} at {o.started:.3f}: {found[o.request_id] or 'in no log'}"
        for o in bad)


async def wait_until(check, timeout: float, interval: float = 0.05):
    """Poll ``check()`` (sync) until truthy; return its value, or None at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(interval)
    return None


async def backend_crash(report: Report, st: Stack, users: list[dict]) -> None:
    name, number = "indico:indico-1", 0
    backend_port = st.state["ports"][number]
    recorder = Recorder()
    load = asyncio.ensure_future(run_load(st.port, users, 14.0, recorder, seed=21))
    await asyncio.sleep(4.0)
    victim = st.pids()[name]
    kill_called = time.time()
    os.kill(victim, signal.SIGKILL)
    # The crash happens when the kernel has torn the process down and closed
    # its sockets (milliseconds after kill()), not when kill() was called.
    killed_at = wait_dead(victim)
    clock = time.monotonic()
    spawned = await wait_until(lambda: st.spawned_after(name.split(":")[1], victim), 10, 0.02)
    started_in = spawned - killed_at if spawned else None
    serving = await wait_until(
        lambda: stack.http_status(f"http://127.0.0.1:{backend_port}/healthCheck", 0.5) == 200,
        20, 0.05)
    serving_in = time.monotonic() - clock if serving else None
    wall = await load
    stats = summarize(recorder.outcomes, wall)
    # In flight on that backend at the crash: nginx's log, start = end - request_time.
    address = f"127.0.0.1:{backend_port}"
    log = st.nginx_log()
    in_flight = [e for e in log if e["upstream"].split(", ")[0] == address
                 and e["time"] - e["request_time"] <= killed_at and e["time"] >= kill_called]
    by_id = {e["request_id"]: e for e in log}
    failures = [o for o in recorder.outcomes if not o.ok]
    json_502 = [o for o in failures if o.status == 502 and o.error_type == "BadGateway"]
    # nginx learns of the crash when it handles the closed connections' events:
    # on this loaded machine it may pass a request to a kept-alive connection
    # of the dead backend a moment after the crash; how long, is measured.
    on_victim = [by_id.get(o.request_id) for o in failures]
    lags = [e["time"] - e["request_time"] - killed_at for e in on_victim if e]
    late = [lag for lag in lags if lag > NGINX_LAG]
    after = [o for o in failures if o.started > killed_at + 1.0]
    report.row("backend crash (kill -9)", st.backends, stats,
               f"supervisor spawned a new process {fmt(started_in)} s after the crash, serving "
               f"{fmt(serving_in)} s after; {len(failures)} failed, all JSON 502: "
               f"{len(json_502) == len(failures)}; in flight on it at the crash (nginx log): "
               f"{len(in_flight)}; {len(failures) - len(in_flight)} more sent by nginx to its "
               f"dead connections up to {max([0, *lags]) * 1000:.0f} ms after the crash")
    report.check("backend crash: supervisor starts a new process within 5 s",
                 started_in is not None and started_in <= 5.0, f"{fmt(started_in)} s")
    report.check("backend crash: the new process serves", serving_in is not None,
                 f"{fmt(serving_in)} s after the kill")
    report.check("backend crash: every failure is a JSON 502 from nginx",
                 len(json_502) == len(failures), describe_errors(recorder))
    report.check("backend crash: every failure was on the killed backend (nginx log)",
                 all(e and e["upstream"].split(", ")[0] == address for e in on_victim),
                 f"{sum(1 for e in on_victim if not e)} not found")
    report.check(f"backend crash: failures are requests in flight at the crash or passed by "
                 f"nginx within {NGINX_LAG * 1000:.0f} ms of it", not late,
                 f"{len(late)} later, latest {max(late, default=0) * 1000:.0f} ms")
    report.check("backend crash: no failure among requests sent later", not after,
                 f"{len(after)} after")


def wait_dead(pid: int, timeout: float = 2.0) -> float:
    """Spin until ``pid`` is gone or a zombie; return that moment (wall clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and stack._alive(pid):
        pass
    return time.time()


def fmt(value):
    return "-" if value is None else f"{value:.2f}"


async def rolling_restart(report: Report, st: Stack, users: list[dict]) -> None:
    recorder = Recorder()
    stop = asyncio.Event()
    before = st.pids()

    async def load_until_stopped():
        while not stop.is_set():
            await run_load(st.port, users, 2.0, recorder, seed=31)
    load = asyncio.ensure_future(load_until_stopped())
    await asyncio.sleep(2.0)
    started = time.monotonic()
    timings = await asyncio.get_running_loop().run_in_executor(
        None, stack.rolling_restart, st.directory)
    await asyncio.sleep(1.0)
    stop.set()
    await load
    wall = time.monotonic() - started + 3.0
    stats = summarize(recorder.outcomes, wall)
    after = st.pids()
    restarted = [n for n in stack.backend_names(st.state) if before.get(n) != after.get(n)]
    report.row("rolling restart", st.backends, stats,
               "supervisorctl restart of each backend in turn: "
               + ", ".join(f"{t['name'].split(':')[1]} {t['seconds']:.1f} s" for t in timings))
    report.check("rolling restart: every backend restarted",
                 len(restarted) == st.backends, f"{restarted}")
    report.check("rolling restart: 0 failed requests", stats["errors"] == 0,
                 describe_errors(recorder) + trace_failures(st, recorder))


def database_documents(st: Stack):
    client = pymongo.MongoClient(st.state["mongodb_uri"], serverSelectionTimeoutMS=10000)
    return client, client["indico"]


async def database_crash(report: Report, st: Stack, users: list[dict]) -> None:
    recorder = Recorder()
    backends_before = {n: p for n, p in st.pids().items() if n.startswith("indico:")}
    load = asyncio.ensure_future(run_load(st.port, users, 16.0, recorder, mix=WRITE_MIX,
                                          seed=41))
    await asyncio.sleep(4.0)
    victim = st.pids()["indico-db"]
    # supervisord restarts a dead database within a second, often before any
    # request has waited INDICO_DB_TIMEOUT for it, and then the "503 while it
    # is down" checks judge nothing. So supervisord is paused (SIGSTOP) over
    # the kill and DATABASE_DOWN seconds: it handles the death and restarts
    # the database once let go (SIGCONT). No supervisorctl call in between:
    # it would wait for the paused supervisord.
    with open(os.path.join(st.directory, "run", "supervisord.pid")) as handle:
        supervisord = int(handle.read().strip())
    os.kill(supervisord, signal.SIGSTOP)
    try:
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(DATABASE_DOWN)
    finally:
        os.kill(supervisord, signal.SIGCONT)
    released_at = time.time()
    clock = time.monotonic()
    back = await wait_until(lambda: stack.http_status(
        f"http://127.0.0.1:{st.port}/backend/healthCheck", 3) == 200
        and st.pids().get("indico-db", victim) != victim, 30, 0.1)
    recovered_in = time.monotonic() - clock if back else None
    wall = await load
    stats = summarize(recorder.outcomes, wall)
    # Requests that failed: what they answered, and how long they took.
    failures = [o for o in recorder.outcomes if not o.ok]
    json_503 = [o for o in failures if o.status == 503 and o.error_type == "ServiceUnavailable"]
    slow = [o for o in json_503 if o.seconds > DB_TIMEOUT + 0.5]
    # Requests sent while the database was certainly down, and answered before
    # supervisord was let go: each one must be such a 503.
    while_down = [o for o in recorder.outcomes if o.started >= killed_at
                  and o.started + o.seconds <= released_at]
    last_failure = max((o.started + o.seconds for o in failures), default=killed_at)
    # Every acknowledged write is there: names (per user, in order) and jobs.
    client, db = database_documents(st)
    try:
        stored = {str(doc["_id"]): doc.get("name") for doc in db.users.find({}, {"name": 1})}
        missing_names = []
        for user_id, index in recorder.acked_names.items():
            sent = recorder.sent_names[user_id]
            # The last acknowledged name, or one sent after it whose answer was lost.
            if stored.get(user_id) not in sent[index:]:
                missing_names.append((user_id, sent[index], stored.get(user_id)))
        jobs = {doc["_id"]: doc["status"] for doc in
                db.jobs.find({"_id": {"$in": sorted(recorder.acked_jobs)}}, {"status": 1})}
        missing_jobs = [j for j in recorder.acked_jobs if jobs.get(j) != "done"]
        stored_accepted = {doc["_id"] for doc in
                           db.jobs.find({"_id": {"$in": sorted(recorder.accepted_jobs)}},
                                        {"_id": 1})}
        missing_jobs += sorted(recorder.accepted_jobs - stored_accepted)
    finally:
        client.close()
    backends_after = {n: p for n, p in st.pids().items() if n.startswith("indico:")}
    report.row("database crash (kill -9)", st.backends, stats,
               f"writes only; supervisord paused for the kill and {DATABASE_DOWN:g} s after it; "
               f"recovered (health 200 through nginx) {fmt(recovered_in)} s after supervisord "
               f"was let go; {len(while_down)} answered while it was down; {len(failures)} "
               f"failed ({len(json_503)} JSON 503, slowest "
               f"{max((o.seconds for o in json_503), default=0):.2f} s), last failure "
               f"{last_failure - killed_at:.2f} s after the kill; acknowledged: "
               f"{len(recorder.acked_names)} users' names, {len(recorder.acked_jobs)} jobs done "
               f"(200) and {len(recorder.accepted_jobs)} accepted (202)")
    report.check("database crash: failures are JSON 503 from indico",
                 len(json_503) == len(failures), describe_errors(recorder))
    report.check("database crash: every request answered while it was down is a JSON 503",
                 bool(while_down) and all(o in json_503 for o in while_down),
                 f"{sum(o in json_503 for o in while_down)} of {len(while_down)}")
    report.check(f"database crash: each 503 within INDICO_DB_TIMEOUT + 0.5 s "
                 f"({DB_TIMEOUT + 0.5:g} s)", not slow,
                 f"{len(slow)} slower, slowest {max((o.seconds for o in slow), default=0):.2f} s"
                 + (f" (by operation and whether sent before the kill: "
                    f"{dict(collections.Counter((o.op, o.started < killed_at) for o in slow))})"
                    if slow else ""))
    report.check("database crash: the API recovers within 10 s of supervisor restarting it",
                 recovered_in is not None and recovered_in <= 10.0, f"{fmt(recovered_in)} s")
    report.check("database crash: no failure once recovered",
                 not [o for o in failures
                      if o.started > released_at + (recovered_in or 0) + 0.5], "")
    report.check("database crash: no backend was restarted", backends_before == backends_after,
                 f"{backends_before} -> {backends_after}")
    report.check("database crash: every acknowledged user/update is stored",
                 not missing_names, f"{len(missing_names)} missing {missing_names[:2]}")
    report.check("database crash: every acknowledged portfolio/optimize is stored",
                 not missing_jobs, f"{len(missing_jobs)} of "
                 f"{len(recorder.acked_jobs) + len(recorder.accepted_jobs)} missing")


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, their children, ... (from /proc)."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[parent].append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def job_crash(report: Report, st: Stack, user: dict, jobs_count: int = CRASH_JOBS) -> None:
    """Kill -9 the backend holding a job's lease; its jobs end done, and WS clients hear it.

    ``jobs_count`` optimizations (the per-user limit on this stack) are
    submitted without waiting, after the worker processes of one backend (the
    victim) were frozen with SIGSTOP: every job the victim accepts stays
    running under its lease until it is killed, however fast the machine is.
    The other backend must then claim them again once their leases expire.
    """
    url = f"ws://127.0.0.1:{st.port}/backend/ws/jobs"
    events = [[] for _ in range(2)]
    reconnects = [0, 0]
    closes = [[], []]
    ids = []
    stop = asyncio.Event()

    def heard(index):
        return {e.get("id") for e in events[index] if e.get("event") == "done"}

    async def listen(index):
        while not stop.is_set():
            try:
                async with websockets.connect(
                        url, additional_headers={"Authorization": f"Bearer {user['token']}"},
                        open_timeout=10) as socket_:
                    # No early return once the ids so far are heard: ``ids``
                    # grows while the jobs are submitted, and the first job can
                    # end before the second is accepted, which closed this
                    # client after one job's events. It listens until stopped.
                    async for message in socket_:
                        events[index].append(json.loads(message))
            except Exception as exc:  # whatever ended it, connect again
                closes[index].append(type(exc).__name__)
            # Closed (its backend died) or failed: connect again. Events of
            # the time in between are not replayed; the client reads results.
            reconnects[index] += 1
            await asyncio.sleep(0.2)

    listeners = [asyncio.ensure_future(listen(i)) for i in range(2)]
    await wait_until(lambda: all(any(e.get("event") == "subscribed" for e in ev)
                                 for ev in events), 15)
    backend_pids = {p: n for n, p in st.pids().items() if n.startswith("indico:")}
    body = {"symbols": SYMBOLS, "startDate": "1990-01-02", "endDate": "2022-12-28",
            "initialInvestment": 10000, "objective": "buy_and_hold_sharpe", "wait": False}

    async def submit():
        connection = HTTPConnection(st.port)
        try:
            status, _, data = await connection.request(
                "POST", "/backend/portfolio/optimize", body, token=user["token"])
        finally:
            await connection.close()
        if status == 202:
            ids.append(json.loads(data)["data"]["id"])
        else:
            refused.append(f"{status} {data[:200]!r}")

    refused = []
    client, db = database_documents(st)
    try:
        # A few one after the other first: they load the 33-year price frame
        # into each backend's cache (20 cold loads at once keep nx-27017 busy
        # past INDICO_DB_TIMEOUT: 503s), and start each backend's worker.
        for _ in range(WARM_JOBS):
            await submit()
        await wait_until(lambda: all(d.get("status") == "done"
                                     for d in db.jobs.find({"_id": {"$in": ids}})), 60, 0.05)
        # The victim's worker processes are frozen (SIGSTOP): every job it
        # accepts from now on stays running under its lease, however fast
        # the machine is, until the kill. Waiting for a job to be seen running
        # raced with fast machines, where all 20 could end first.
        victim = min(backend_pids, key=backend_pids.get)
        frozen = descendants(victim)
        for child in frozen:
            os.kill(child, signal.SIGSTOP)
        report.check("job crash: the victim's worker processes are frozen", bool(frozen),
                     f"{backend_pids[victim]}: {len(frozen)} child processes")
        # The rest with one connection each, all at once: nginx's round robin
        # gives the victim about half of them.
        await asyncio.gather(*(submit() for _ in range(jobs_count - WARM_JOBS)))
        report.check(f"job crash: {jobs_count} slow jobs accepted (202)", len(ids) == jobs_count,
                     f"{len(ids)}" + (f"; first refusal: {refused[0]}" if refused else ""))

        def held_by(pid):
            return [d["_id"] for d in db.jobs.find({"_id": {"$in": ids}})
                    if d.get("status") == "running"
                    and (d.get("lease_owner") or "").split(":")[1:2] == [str(pid)]]

        held = await wait_until(lambda: held_by(victim), 20, 0.05) or []
        os.kill(victim, signal.SIGKILL)
        # Let its workers go: each sees its lifeline pipe closed and exits
        # (the check that no process is left covers it).
        for child in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        pid = victim
        report.check("job crash: the backend holding a running job's lease is killed",
                     bool(held),
                     f"{backend_pids.get(pid)} held {len(held)} running jobs at the kill")
        clock = time.monotonic()
        finished = await wait_until(lambda: all(
            d.get("status") in ("done", "failed") for d in db.jobs.find({"_id": {"$in": ids}}))
            and len(ids), 60, 0.1)
        finished_in = time.monotonic() - clock
        documents = {d["_id"]: d for d in db.jobs.find({"_id": {"$in": ids}})}
    finally:
        client.close()
    # A client that stayed connected hears every done; one cut off by the
    # kill hears those after it reconnected and reads the others' results.
    kept = [i for i in range(2) if reconnects[i] == 0]
    all_heard = await wait_until(lambda: all(set(ids) <= heard(i) for i in kept), 15)
    results_read = await read_results(st.port, user, ids) if len(kept) < 2 else True
    crashed_heard = await wait_until(lambda: all(set(held) <= heard(i) for i in range(2)), 5)
    stop.set()
    for task in listeners:
        task.cancel()
    await asyncio.gather(*listeners, return_exceptions=True)
    statuses = collections.Counter(d.get("status") for d in documents.values())
    retried = [d["attempts"] for i, d in documents.items() if i in held]
    report.row("job crash (kill -9 of a lease holder)", st.backends, None,
               f"INDICO_JOB_LEASE={JOB_LEASE:g}; {len(held)} running jobs on the killed backend; "
               f"all {len(ids)} jobs {dict(statuses)} {fmt(finished_in if finished else None)} s "
               f"after the kill (attempts of the killed ones: {retried}); 2 WebSocket clients "
               f"through nginx: {len(kept)} stayed connected and heard every done: "
               f"{bool(all_heard)}; every client heard the killed jobs' done: "
               f"{bool(crashed_heard)}")
    report.check("job crash: every job finishes done", statuses == {"done": len(ids)},
                 f"{dict(statuses)}")
    report.check("job crash: the killed backend's jobs were claimed again", bool(retried) and
                 all(attempts >= 2 for attempts in retried), f"attempts {retried}")
    report.check("job crash: every WebSocket client receives the done event of the killed "
                 "backend's jobs", bool(crashed_heard) and bool(held), f"{len(held)} jobs")
    report.check("job crash: a cut-off client reconnects and reads every result",
                 bool(results_read), f"{len(kept)} of 2 stayed connected")
    report.check("job crash: every WebSocket client that stayed connected receives every "
                 "done event", bool(all_heard),
                 f"heard {[len(heard(i)) for i in range(2)]} of {len(ids)}; events "
                 f"{[[(e.get('event'), str(e.get('id'))[-4:]) for e in ev] for ev in events]}")


async def read_results(port: int, user: dict, ids: list[str]) -> bool:
    """True when ``portfolio/result`` says every job of ``ids`` is done."""
    connection = HTTPConnection(port)
    try:
        for job_id in ids:
            status, _, data = await connection.request("POST", "/backend/portfolio/result",
                                                       {"id": job_id}, token=user["token"])
            if status != 200 or json.loads(data)["data"]["status"] != "done":
                return False
        return True
    finally:
        await connection.close()


async def proxy_answers(report: Report, st: Stack, user: dict) -> None:
    """nginx's own answers are indico's JSON envelope; the prefix is stripped."""
    connection = HTTPConnection(st.port, "127.0.0.200")
    checks = []

    async def expect(name, method, path, expected, body=None, headers=None, kind=None):
        status, response_headers, data = await connection.request(method, path, body,
                                                                  headers=headers)
        ok, error_type, detail = check_envelope(status, response_headers, data, expected)
        ok = ok and (kind is None or error_type == kind)
        checks.append(ok)
        report.check(f"proxy: {name} -> {expected}", ok, "" if ok else f"{status} {detail}")
        return data

    banner = await expect("GET /backend/ (the banner)", "GET", "/backend/", 200)
    report.check("proxy: the banner says Success!",
                 json.loads(banner)["data"]["message"] == "Success!")
    await expect("GET /backend/healthCheck", "GET", "/backend/healthCheck", 200)
    await expect("a body over INDICO_BODY_LIMIT", "POST", "/backend/auth/check",
                 413, body=b"{" + b" " * 70000 + b"}", kind="PayloadTooLarge")
    await expect("a 20 KB header", "GET", "/backend/", 431,
                 headers={"X-Padding": "a" * 20000}, kind="RequestHeaderFieldsTooLarge")
    await expect("a path outside /backend/", "GET", "/elsewhere", 404, kind="NotFound")
    statuses = collections.Counter()
    for _ in range(30):
        status, headers, data = await connection.request(
            "POST", "/backend/auth/login", {"email": "nobody@example.com", "password": "x" * 8})
        statuses[status] += 1
        if status == 429 and headers.get("server") == "nginx" and "retry-after" in headers:
            ok, kind, _ = check_envelope(status, headers, data, 429)
            report.check("proxy: limit_req on auth/login answers a JSON 429", ok and
                         kind == "TooManyRequests", f"after {sum(statuses.values())} attempts")
            break
    else:
        report.check("proxy: limit_req on auth/login answers a JSON 429", False, f"{statuses}")
    await connection.close()
    # A browser's handshake: its Origin is the host it loaded the page from,
    # which indico compares with the Host nginx passes on.
    origin = f"http://127.0.0.1:{st.port}"
    try:
        async with websockets.connect(
                f"ws://127.0.0.1:{st.port}/backend/ws/jobs", origin=origin,
                additional_headers={"Authorization": f"Bearer {user['token']}"},
                open_timeout=10) as socket_:
            first = json.loads(await asyncio.wait_for(socket_.recv(), 10))
        detail = f"first message {first}"
        opened = first.get("event") == "subscribed"
    except Exception as exc:  # refused (403) or no answer: the check fails and says why
        detail, opened = f"{type(exc).__name__}: {exc}", False
    report.check(f"proxy: a WebSocket with Origin {origin} (a browser's) subscribes through "
                 f"nginx", opened, "" if opened else detail)


# -- main -------------------------------------------------------------------------------

async def scenarios(report: Report, base: str, args) -> None:
    """Each stack in a directory (and a database) of its own, so runs compare fairly."""
    for backends in dict.fromkeys([2, *args.scaling]):  # once each: one directory per count
        directory = os.path.join(base, f"load-{backends}")
        print(f"== {'load' if backends == 2 else 'scaling'}: {backends} backends "
              f"({directory})", flush=True)
        with Stack(directory, backends, {}) as st:
            users = await sign_up(st.port, USERS, str(backends))
            await measure_load(report, st, users, args.seconds,
                               "load" if backends == 2 else "scaling")
        report.note(f"deploy-down: {st.last_down}")
    if args.load_only:
        return
    # One optimization worker per backend: a backend's jobs then wait in its
    # pool holding their leases, so a kill finds jobs it holds (job crash).
    # 20 active jobs per user (default 5): the job crash queues that many, so that
    # the backend it kills still holds running jobs however fast the machine is.
    settings = {"INDICO_JOB_LEASE": f"{JOB_LEASE:g}", "INDICO_WORKERS": "1",
                "INDICO_MAX_ACTIVE_JOBS": str(CRASH_JOBS)}
    directory = os.path.join(base, "faults")
    print(f"== faults: 2 backends, {settings} ({directory})", flush=True)
    with Stack(directory, 2, settings) as st:
        users = await sign_up(st.port, USERS + 1, "faults")
        report.note(f"signed up {len(users)} users through nginx, from 127.0.0.10..")
        await run_load(st.port, users[:USERS], 6.0, Recorder(), seed=7)  # warm-up
        print("== backend crash", flush=True)
        await backend_crash(report, st, users[:USERS])
        print("== rolling restart", flush=True)
        await rolling_restart(report, st, users[:USERS])
        print("== database crash", flush=True)
        await database_crash(report, st, users[:USERS])
        print("== job crash", flush=True)
        await job_crash(report, st, users[USERS])  # a user with no history of its own
        print("== proxy answers", flush=True)
        await proxy_answers(report, st, users[1])
    report.note(f"deploy-down: {st.last_down}")


def main(argv: list[str] | None = None) -> int:
    """Run every scenario; print the table; exit 1 if a check failed."""
    parser = argparse.ArgumentParser(prog="deploy/reliability.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of each load run")
    parser.add_argument("--scaling", type=int, nargs="*", default=[1, 4],
                        help="backend counts of the scaling runs (2 is the load row)")
    parser.add_argument("--load-only", action="store_true", help="skip the fault scenarios")
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory")
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="indico-deploy-test-")  # one subdirectory per stack
    report = Report()
    started = time.monotonic()
    try:
        asyncio.run(scenarios(report, directory, args))
    except Exception as exc:  # any failure: the table still shows what ran; the run fails
        report.check("the scenarios ran to the end", False, f"{type(exc).__name__}: {exc}")
        import traceback
        traceback.print_exc()
    finally:
        leftovers = []
        for name in os.listdir(directory):
            found = stack.marked_processes(os.path.join(directory, name))
            if found:
                leftovers += found
                stack.down(os.path.join(directory, name), quiet=True)
        report.check("no process of the stacks is left", not leftovers, f"{leftovers}")
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    report.print()
    print(f"deploy-test took {time.monotonic() - started:.0f} s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
