"""HTTP throughput and latency of the indico API (issues 3 and 6), loopback only.

Run from the repository root with the project's environment (needs ``wrk``,
``apt-get install wrk``; the profile needs ``py-spy``, ``pip install py-spy``)::

    .venv/bin/python benchmarks/api_bench.py [--duration 10] [--portfolio-duration 5] [--no-profile]

It starts, in a temporary INDICO_DATA_DIR, one indico server (``python -m
indico.server``, embedded nx-27017 database, sample prices loaded, log level
WARNING, sign-up and login limits raised to 1,000,000) and one bare Tornado
process (benchmarks/bare_server.py: parse the JSON body, answer a small JSON
object), drives them with wrk (1 thread; the load generator shares the
machine's cores with the servers), stops both with SIGTERM and prints a
Markdown table with the targets of the issues. Figures are from one run.

Issue 3 (accounts), 50 connections, ``--duration`` seconds each:
  * auth/check and user/update (``{"update_user": {"name": "x"}}``) requests/s
    as a % of the bare handler's with the same body, and their p99, in
    ``--rounds`` alternating rounds (bare, then indico), judged on the median;
  * auth/login (default Argon2id, m=19 MiB, t=2, p=1) sustained rate, with a
    concurrent GET /healthCheck loop (1 connection) and its p99.
Issue 6 (portfolio jobs): portfolio/optimize, 20 symbols (every sample symbol
but SP500), 2017-01-01..2021-12-31, 10,000, max_sharpe, after warm-up:
  * 1 connection: p50 and p99;
  * 8 connections (8 users, round robin): requests/s, next to the engine's own
    rate (the server's process-pool function on the same aligned frame, pool of
    2 workers with configure_worker, 8 in flight);
  * a py-spy profile of the server process under the 8-connection load.
"""

import argparse
import asyncio
import collections
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASSWORD = "correct horse battery staple"
START, END = "2017-01-01", "2021-12-31"
LUA = r"""
local tokens = {%(tokens)s}
local body = [==[%(body)s]==]
local method = "%(method)s"
local i = 0
bad = 0
request = function()
  i = i + 1
  local headers = {}
  if method == "POST" then headers["Content-Type"] = "application/json" end
  if #tokens > 0 then headers["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1] end
  if method == "POST" then return wrk.format(method, nil, headers, body) end
  return wrk.format(method, nil, headers)
end
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
"""
# The end of every wrk script here: each thread's count of answers other than
# 200, and one JSONRESULT line that Wrk.run parses (also benchmarks/optimize_bench.py).
LUA_DONE = r"""
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local nb = 0
  for _, t in ipairs(threads) do nb = nb + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format(
    'JSONRESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "not_200": %%d, "socket_errors": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, nb, e.connect + e.read + e.write + e.timeout))
end
"""
LUA += LUA_DONE


def cpu_ticks():
    """The machine's CPU time so far from /proc/stat: (all ticks, ticks stolen by the host)."""
    fields = [int(value) for value in pathlib.Path("/proc/stat").read_text().split("\n")[0]
              .split()[1:9]]
    return sum(fields), fields[7]


# A virtual machine's host may run other guests on its cores; the time they
# take from this one ("steal") slows every figure of a run alike.
STARTED_TICKS = cpu_ticks()


def loopback_round_trips(spaced=300, back_to_back=1000, size=1000):
    """Median microseconds of a 1 KB message's round trip between two processes over
    loopback TCP: ``(spaced, back_to_back)``, one message a millisecond and one after
    the other.

    Every request to indico crosses processes several times (client, server,
    database, worker), so this price of the machine's wakeups bounds its latency:
    about 20-30 µs on an idle bare-metal Linux host; 90-300 µs were measured on
    the Firecracker guest of docs/PERFORMANCE.md.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    child = os.fork()
    if child == 0:  # the echo: one byte back for every message
        try:
            with socket.create_connection(listener.getsockname()) as echo:
                echo.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while echo.recv(65536):
                    echo.sendall(b"k")
        finally:
            os._exit(0)
    connection, _ = listener.accept()
    listener.close()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * size
    medians = []
    try:
        for count, pause in ((spaced, 0.001), (back_to_back, 0.0)):
            times = []
            for _ in range(count):
                began = time.perf_counter()
                connection.sendall(payload)
                connection.recv(16)
                times.append(time.perf_counter() - began)
                if pause:
                    time.sleep(pause)
            medians.append(1e6 * sorted(times)[len(times) // 2])
    finally:
        connection.close()
        os.waitpid(child, 0)
    return tuple(medians)


def print_results(rows, note):
    """Print the machine line (CPUs, model, Python, ``note``, the host's steal since
    this module was imported, the loopback round trip) and the Markdown table of
    ``rows``."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    total, stolen = (now - then for now, then in zip(cpu_ticks(), STARTED_TICKS, strict=True))
    steal = f"; the host took {100 * stolen / max(total, 1):.0f} % of the CPU time (steal)"
    spaced, back_to_back = loopback_round_trips()
    print(f"\nmachine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; "
          f"{note}{steal}; loopback TCP round trip between two processes (1 KB, median): "
          f"{spaced:.0f} µs one a millisecond, {back_to_back:.0f} µs back to back")
    print("\n| measurement | result | target | verdict |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port, path, body=None, token=None, method="POST", timeout=30):
    """One request; returns (status, parsed JSON)."""
    data = None if method == "GET" else json.dumps(body or {}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(port, path, deadline, method="GET"):
    while time.monotonic() < deadline:
        try:
            status, _ = call(port, path, method=method, timeout=2)
            if status == 200:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"port {port}: {path} did not answer 200 in time")


class Wrk:
    """Runs wrk with a generated Lua script; returns the figures of the run."""

    def __init__(self, workdir):
        self.workdir = pathlib.Path(workdir)
        self.count = 0

    def start(self, port, path, seconds, connections, body=None, tokens=(), method="POST"):
        self.count += 1
        script = self.workdir / f"wrk{self.count}.lua"
        script.write_text(LUA % {
            "tokens": ", ".join(json.dumps(token) for token in tokens),
            "body": json.dumps(body) if body is not None else "", "method": method})
        return subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
             "-s", str(script), f"http://127.0.0.1:{port}{path}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def result(process):
        output, _ = process.communicate()
        for line in output.splitlines():
            if line.startswith("JSONRESULT "):
                figures = json.loads(line[len("JSONRESULT "):])
                figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
                return figures
        raise RuntimeError(f"wrk failed:\n{output}")

    def run(self, *args, **kwargs):
        return self.result(self.start(*args, **kwargs))


def engine_rate(frame, benchmark, params, seconds, workers=2, in_flight=8):
    """Optimizations/s of the server's pool function, pool of ``workers``, ``in_flight`` queued."""
    from indico.optimization import configure_worker
    from indico.services.pool import WorkerFrame, run_optimization
    frame = WorkerFrame(frame, benchmark)  # a new one each task: its moments made each time
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, initializer=configure_worker,
            mp_context=multiprocessing.get_context("forkserver")) as pool:
        for future in [pool.submit(run_optimization, frame, params)
                       for _ in range(2 * workers)]:
            future.result()
        began = time.perf_counter()
        deadline = began + seconds
        pending = {pool.submit(run_optimization, frame, params)
                   for _ in range(in_flight)}
        done_count = 0
        while True:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                future.result()
                done_count += 1
            if time.perf_counter() >= deadline:
                break
            pending |= {pool.submit(run_optimization, frame, params)
                        for _ in range(len(done))}
        elapsed = time.perf_counter() - began
        concurrent.futures.wait(pending)
    return done_count / elapsed


async def load_frame(env, symbols):
    """The aligned frame and benchmark the server uses, read from its embedded database."""
    from config import Config
    from indico.db import create_client
    from indico.db.embedded import EmbeddedServer
    from indico.services.price_catalog import PriceCatalog
    config = Config.from_environ(environ=env)
    uri = EmbeddedServer(config.data_path, config.embedded_start_timeout).start()  # attaches
    client = create_client(uri, config.db_timeout)
    try:
        prices = PriceCatalog(client[config.database], config)
        frame = await prices.get_frame(symbols, START, END)
        benchmark = await prices.get_benchmark(START, END, frame.index)
    finally:
        await client.close()
    return frame, benchmark


def summarize_profile(path, top=15):
    """Self and inclusive shares of the frames of a py-spy raw (folded) profile."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    processes = collections.Counter()
    for line in pathlib.Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        count = int(count)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        if frames[0].startswith("process "):
            processes[frames[0][:90]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "by process:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in processes.most_common()]
    lines.append("self:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top + 25)]
    return "\n".join(lines)


def verdict(met):
    return "met" if met else "MISSED"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per accounts run")
    parser.add_argument("--portfolio-duration", type=int, default=5,
                        help="seconds per portfolio run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating bare/indico rounds per accounts measurement")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-out", default="/tmp/profile.txt")
    parser.add_argument("--only", choices=("accounts", "login", "portfolio"), action="append",
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args()
    parts = set(args.only or ("accounts", "login", "portfolio"))
    if not shutil.which("wrk"):
        sys.exit("api_bench: wrk is needed (apt-get install wrk)")

    workdir = tempfile.mkdtemp(prefix="indico-bench-")
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update({
        "INDICO_DATA_DIR": workdir, "INDICO_LOG_LEVEL": "WARNING",
        "INDICO_SIGNUP_MAX_PER_ADDRESS": "1000000", "INDICO_LOGIN_MAX_FAILURES": "1000000",
        "INDICO_LOGIN_ADDRESS_MAX_FAILURES": "1000000", "INDICO_LOAD_SAMPLE_PRICES": "true",
    })
    indico_port, bare_port = free_port(), free_port()
    logs = [open(os.path.join(workdir, name), "w") for name in ("indico.log", "bare.log")]
    indico = subprocess.Popen([sys.executable, "-m", "indico.server", f"--port={indico_port}"],
                              cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    bare = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bare_server.py"),
                             str(bare_port)], cwd=ROOT, env=env,
                            stdout=logs[1], stderr=subprocess.STDOUT)
    wrk = Wrk(workdir)
    rows, figures = [], {}
    try:
        wait_for(indico_port, "/healthCheck", time.monotonic() + 120)
        wait_for(bare_port, "/", time.monotonic() + 30, method="POST")
        print(f"servers up: indico pid {indico.pid} :{indico_port}, "
              f"bare pid {bare.pid} :{bare_port}", flush=True)

        # Users: one session each.
        tokens = []
        for number in range(args.connections):
            status, answer = call(indico_port, "/auth/signup", {
                "email": f"bench{number}@example.com", "password": PASSWORD, "name": "Bench"})
            assert status == 201, (status, answer)
            tokens.append(answer["data"]["token"])

        seconds, conns = args.duration, args.connections
        if "accounts" in parts:
            measure_accounts(indico_port, bare_port, wrk, args, tokens, figures, rows)
        if "login" in parts:
            measure_logins(indico_port, wrk, seconds, conns, figures, rows)
        if "portfolio" in parts:
            measure_portfolio(indico_port, wrk, args, env, tokens, indico, figures, rows)
    finally:
        codes = {}
        for _name, process in (("indico", indico), ("bare", bare)):
            process.send_signal(signal.SIGTERM)
        for name, process in (("indico", indico), ("bare", bare)):
            try:
                codes[name] = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "killed after 20 s"
        for log in logs:
            log.close()
        print(f"\nstopped: {codes}")
        if codes.get("indico") == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (logs)")

    print_results(rows, "load generator: wrk, 1 thread, on the same machine")


def measure_accounts(indico_port, bare_port, wrk, args, tokens, figures, rows):
    """auth/check and user/update against the bare handler, in alternating rounds (issue 3).

    Each round runs the bare handler, then indico, for ``--duration`` seconds
    each; the shared machine's speed drifts between runs, so the ratio of each
    round is taken from two neighbouring runs, and the verdict from the median
    round.
    """
    seconds, conns = args.duration, args.connections
    update = {"update_user": {"name": "x"}}
    for name, path, body, rps_target in (("auth/check", "/auth/check", {}, 60),
                                         ("user/update", "/user/update", update, 35)):
        assert call(indico_port, path, body, tokens[0])[0] == 200
        rounds = []
        for _ in range(args.rounds):
            base = wrk.run(bare_port, path, seconds, conns, body=body)
            ours = wrk.run(indico_port, path, seconds, conns, body=body, tokens=tokens)
            share = 100 * ours["rps"] / base["rps"]
            print(f"{name}: bare {base}\n{name}: indico {ours}\n{name}: {share:.0f} % of bare",
                  flush=True)
            rounds.append({"bare": base, "indico": ours, "share": share})
            for run in (base, ours):
                if run["not_200"] or run["socket_errors"]:
                    rows.append((f"{name}: errors", f"{run['not_200']} not 200, "
                                 f"{run['socket_errors']} socket errors", "0", "MISSED"))
        figures[name] = rounds
        middle = sorted(rounds, key=lambda entry: entry["share"])[len(rounds) // 2]
        shares = ", ".join(f"{entry['share']:.0f}" for entry in rounds)
        rows.append((f"{name}: req/s, {conns} conn (median of {len(rounds)} rounds)",
                     f"{middle['indico']['rps']:,.0f} (bare {middle['bare']['rps']:,.0f}) = "
                     f"{middle['share']:.0f} % of bare (rounds: {shares} %)",
                     f">= {rps_target} % of bare", verdict(middle["share"] >= rps_target)))
        p99s = sorted(entry["indico"]["p99_us"] / 1000 for entry in rounds)
        p99 = p99s[len(p99s) // 2]
        rows.append((f"{name}: p99, {conns} conn (median of {len(rounds)} rounds)",
                     f"{p99:.1f} ms (rounds: {', '.join(f'{value:.1f}' for value in p99s)}; "
                     f"p50 {middle['indico']['p50_us'] / 1000:.1f}; bare p99 "
                     f"{middle['bare']['p99_us'] / 1000:.1f})", "< 50 ms", verdict(p99 < 50)))


def measure_logins(indico_port, wrk, seconds, conns, figures, rows):
    """Sustained logins with a GET /healthCheck loop beside them (issue 3)."""
    login_body = {"email": "bench0@example.com", "password": PASSWORD}
    assert call(indico_port, "/auth/login", login_body)[0] == 200
    logins = wrk.start(indico_port, "/auth/login", seconds, conns, body=login_body)
    time.sleep(0.5)
    health = wrk.start(indico_port, "/healthCheck", seconds - 1, 1, method="GET")
    logins, health = wrk.result(logins), wrk.result(health)
    print(f"login: {logins}\nhealth: {health}", flush=True)
    figures["login"], figures["health"] = logins, health
    rows.append((f"auth/login: sustained, {conns} conn, Argon2id m=19 MiB t=2 p=1, "
                 f"{os.cpu_count()} cores", f"{logins['rps']:.1f} logins/s "
                 f"(p50 {logins['p50_us'] / 1000:.0f} ms, {logins['not_200']} not 200)",
                 "(stated)", "-"))
    p99 = health["p99_us"] / 1000
    rows.append(("GET /healthCheck loop during logins: p99",
                 f"{p99:.1f} ms (p50 {health['p50_us'] / 1000:.1f}, max "
                 f"{health['max_us'] / 1000:.1f}, {health['rps']:.0f} req/s)",
                 "< 20 ms", verdict(p99 < 20)))


def measure_portfolio(indico_port, wrk, args, env, tokens, indico, figures, rows):
    """portfolio/optimize at 1 and 8 connections, the engine alone, a profile (issue 6)."""
    status, answer = call(indico_port, "/prices/symbols", {}, tokens[0])
    listed = [entry["symbol"] for entry in answer["data"]["symbols"]]
    assert status == 200 and len(listed) == 21, (status, listed)
    symbols = [symbol for symbol in listed if symbol != "SP500"]
    body = {"symbols": symbols, "startDate": START, "endDate": END,
            "initialInvestment": 10000, "objective": "max_sharpe"}
    for token in tokens[:8]:
        status, answer = call(indico_port, "/portfolio/optimize", body, token)
        assert status == 200, (status, answer)
    pseconds = args.portfolio_duration
    one = wrk.run(indico_port, "/portfolio/optimize", pseconds, 1, body=body,
                  tokens=tokens[:1])
    print(f"optimize 1 conn: {one}", flush=True)
    eight = wrk.run(indico_port, "/portfolio/optimize", pseconds, 8, body=body,
                    tokens=tokens[:8])
    print(f"optimize 8 conn: {eight}", flush=True)
    figures["optimize1"], figures["optimize8"] = one, eight
    p50, p99 = one["p50_us"] / 1000, one["p99_us"] / 1000
    rows.append(("portfolio/optimize, 1 conn: p50", f"{p50:.1f} ms ({one['rps']:.1f} req/s)",
                 "< 20 ms", verdict(p50 < 20)))
    rows.append(("portfolio/optimize, 1 conn: p99", f"{p99:.1f} ms", "< 60 ms",
                 verdict(p99 < 60)))

    params = {"symbols": symbols, "start_date": START, "end_date": END,
              "initial_investment": 10000.0, "objective": "max_sharpe",
              "risk_free_rate": 0.0, "weight_bounds": [0.0, 1.0],
              "target_return": None, "target_volatility": None}
    frame, benchmark = asyncio.run(load_frame(env, symbols))
    engine = engine_rate(frame, benchmark, params, pseconds)
    figures["engine"] = engine
    rows.append(("portfolio/optimize, 8 conn: req/s",
                 f"{eight['rps']:.1f} req/s (p50 {eight['p50_us'] / 1000:.1f} ms, p99 "
                 f"{eight['p99_us'] / 1000:.1f} ms, {eight['not_200']} not 200)",
                 "(next row)", "-"))
    rows.append((f"engine alone, pool of 2, 8 in flight, frame {frame.shape[0]}x"
                 f"{frame.shape[1]}", f"{engine:.1f} optimizations/s; server = "
                 f"{100 * eight['rps'] / engine:.0f} % of it", "-", "-"))
    for name, run in (("1 conn", one), ("8 conn", eight)):
        if run["not_200"] or run["socket_errors"]:
            rows.append((f"portfolio/optimize {name}: errors", f"{run['not_200']} not 200, "
                         f"{run['socket_errors']} socket errors", "0", "MISSED"))

    pyspy = shutil.which("py-spy") or shutil.which(
        "py-spy", path=os.path.dirname(sys.executable))
    if args.no_profile or not pyspy:
        print("no profile (--no-profile, or py-spy not found)")
    else:
        load = wrk.start(indico_port, "/portfolio/optimize", pseconds + 3, 8, body=body,
                         tokens=tokens[:8])
        time.sleep(1)
        spy = subprocess.run([pyspy, "record", "-d", str(pseconds), "-o",
                              args.profile_out, "--format", "raw", "--subprocesses",
                              "-p", str(indico.pid)],
                             capture_output=True, text=True)
        loaded = wrk.result(load)
        if spy.returncode == 0:
            print(f"\nprofile of the server (pid {indico.pid} and its children) under 8 conn "
                  f"({loaded['rps']:.1f} req/s while sampled), {args.profile_out}:")
            print(summarize_profile(args.profile_out))
        else:
            print(f"py-spy failed: {spy.stderr.strip()[-500:]}")


if __name__ == "__main__":
    main()
