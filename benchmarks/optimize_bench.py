"""Issue 11's speed targets, in one run, with the settings ``make run`` uses (loopback only).

Run from the repository root with the project's environment::

    apt-get install -y wrk                              # the load generator (needed)
    .venv/bin/python benchmarks/optimize_bench.py       # about 4 minutes on 2 cores

Options: ``--duration S`` (seconds per optimize run, default 6), ``--accounts-duration
S`` (seconds per accounts run, default 5), ``--rounds N`` (alternating bare/indico
rounds per accounts measurement, default 3), ``--jobs N`` (optimizations for the
memory check, default 10,000), ``--engine-seconds S`` (default 5), ``--no-spans``
(skip the breakdown), ``--only PART`` (repeatable: latency, throughput, accounts,
memory, spans), ``--keep`` (keep the temporary data directory and logs).

What it starts, in a temporary INDICO_DATA_DIR: one indico server (``python -m
indico.server``, the embedded nx-27017 database, sample prices loaded) with the
defaults ``make run`` uses -- log level INFO, so one JSON access-log line per
request, written to a file -- except that the sign-up and login limits are raised
to 1,000,000 (INDICO_SIGNUP_MAX_PER_ADDRESS, INDICO_LOGIN_MAX_FAILURES,
INDICO_LOGIN_ADDRESS_MAX_FAILURES) so that the benchmark's 58 users can sign up
from one address; and the bare Tornado handler (benchmarks/bare_server.py). wrk
(1 thread) drives them on the same machine. Measured, against the named baselines:

* ``portfolio/optimize`` with the 20 sample symbols (all but SP500),
  2017-01-01..2021-12-31, 10,000, ``max_sharpe``: 1 connection, sequential
  keep-alive requests: p50 (target <= 8 ms) and p99 (<= 20 ms);
* the same at 8 connections (8 users): requests/s as a share of the engine-alone
  rate, ``optimize(...).to_dict()`` with shares on the same frame and benchmark
  (read from the server's database) in ``os.cpu_count()`` processes at once,
  measured in the same run while the server is idle (target >= 35 %);
* ``auth/check`` (>= 60 %) and ``user/update`` (>= 35 %) against the bare handler,
  50 connections, in alternating rounds (the verdict is the median round);
* resident memory (VmRSS of /proc/<pid>/status) of the server process and of its
  optimization workers after 1,000 and after ``--jobs`` optimizations counted
  from the server's start (target: within 10 %);
* a breakdown of one ``portfolio/optimize`` (authentication, price frame, job
  insert, pool round trip, engine, completion write, serialization) from timing
  spans: a second server, benchmarks/spans_server.py, which wraps those steps in
  its own process only, on the same database, 1 connection.

It prints a Markdown table with the targets and verdicts. Figures are from one
run; on a shared machine they are noisy (say so when quoting them).
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from api_bench import (  # after the path is set
    LUA_DONE,
    PASSWORD,
    Wrk,
    call,
    free_port,
    load_frame,
    measure_accounts,
    print_results,
    wait_for,
)

START, END = "2017-01-01", "2021-12-31"
SPAN_ORDER = ("authentication", "price frame", "job insert", "pool round trip", "engine",
              "completion write", "serialization")
# wrk stops its thread once LIMIT answers have arrived (0: run for the duration) and
# says so; its main thread sleeps out the duration unless SIGINT ends it, which
# run_limited sends then (wrk still reports the run).
LIMITED_LUA = r"""
local tokens = {%(tokens)s}
local body = [==[%(body)s]==]
local limit = %(limit)d
local i = 0
local seen = 0
bad = 0
request = function()
  i = i + 1
  local headers = {["Content-Type"] = "application/json"}
  headers["Authorization"] = "Bearer " .. tokens[(i %% #tokens) + 1]
  return wrk.format("POST", nil, headers, body)
end
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
  seen = seen + 1
  if limit > 0 and seen == limit then
    io.write("LIMIT REACHED\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""
LIMITED_LUA += LUA_DONE


def verdict(met):
    return "met" if met else "MISSED"


def run_limited(wrk, port, path, body, tokens, connections, limit, seconds=900):
    """wrk until ``limit`` answers (or ``seconds``); the figures of the run."""
    wrk.count += 1
    script = wrk.workdir / f"limited{wrk.count}.lua"
    script.write_text(LIMITED_LUA % {
        "tokens": ", ".join(json.dumps(token) for token in tokens),
        "body": json.dumps(body), "limit": limit})
    process = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s",
         str(script), f"http://127.0.0.1:{port}{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("LIMIT REACHED"):
            process.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + process.stdout.read()
    process.wait()
    for line in output.splitlines():
        if line.startswith("JSONRESULT "):
            figures = json.loads(line[len("JSONRESULT "):])
            figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
            return figures
    raise RuntimeError(f"wrk failed:\n{output}")


# --- the engine alone ------------------------------------------------------------------


def _engine_loop(frame, benchmark, seconds, start_at):
    """One process: ``optimize(...).to_dict()`` with shares until ``seconds`` have passed."""
    from indico.optimization import configure_worker, optimize
    configure_worker()  # as the server's workers: one BLAS thread

    def once():
        return optimize(frame, "max_sharpe", risk_free_rate=0.0, weight_bounds=(0.0, 1.0),
                        initial_investment=10000.0, benchmark=benchmark).to_dict()

    for _ in range(20):
        once()
    while time.time() < start_at:
        time.sleep(0.005)
    began = time.perf_counter()
    count = 0
    while time.perf_counter() - began < seconds:
        once()
        count += 1
    return count, time.perf_counter() - began


def engine_alone_rate(frame, benchmark, seconds):
    """Optimizations/s of the engine in ``os.cpu_count()`` processes at once."""
    processes = os.cpu_count() or 2
    context = multiprocessing.get_context("forkserver")
    start_at = time.time() + 8.0  # every process imported and warmed up by then
    with context.Pool(processes) as pool:
        runs = pool.starmap(_engine_loop, [(frame, benchmark, seconds, start_at)] * processes)
    return sum(count / elapsed for count, elapsed in runs), processes


# --- memory ----------------------------------------------------------------------------


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid):
    """Direct children of ``pid`` with their command lines."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append((int(entry.name),
                              (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return found


def process_snapshot(server_pid, read):
    """``read(pid)`` of the server, of its optimization workers (summed), of the database.

    The workers are the children of the server's forkserver (their command line
    is the forkserver's, as they are forked from it).
    """
    workers, database = 0, 0
    for pid, command in children(server_pid):
        if "indico.db.embedded" in command or "nx_27017" in command:
            database += read(pid)
        elif "forkserver" in command:
            workers += sum(read(worker) for worker, _ in children(pid))
    return {"server": read(server_pid), "workers": workers, "database": database}


def memory_snapshot(server_pid):
    """RSS (KiB) of the server, of its optimization workers (summed), of the database."""
    return process_snapshot(server_pid, rss_kib)


def cpu_seconds(pid):
    """User + system CPU seconds ``pid`` has used so far (0 when it is gone)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pid):
    """CPU seconds used so far by the server, its workers (summed) and the database."""
    return process_snapshot(server_pid, cpu_seconds)


# --- the breakdown ---------------------------------------------------------------------


def measure_spans(env, workdir, body, tokens, seconds, rows, logs):
    """Start benchmarks/spans_server.py on the same database; 1 connection; the breakdown."""
    port = free_port()
    spans_file = os.path.join(workdir, "spans.json")
    spans_env = dict(env, BENCH_SPANS_FILE=spans_file, INDICO_LOAD_SAMPLE_PRICES="false")
    log = open(os.path.join(workdir, "spans-server.log"), "w")
    logs.append(log)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "spans_server.py"), f"--port={port}"],
        cwd=ROOT, env=spans_env, stdout=log, stderr=subprocess.STDOUT)
    wrk = Wrk(workdir)
    try:
        wait_for(port, "/healthCheck", time.monotonic() + 120)
        warm = run_limited(wrk, port, "/portfolio/optimize", body, tokens[:1], 1, 50)
        assert warm["not_200"] == 0, warm
        process.send_signal(signal.SIGUSR1)  # drop the warm-up's spans
        time.sleep(0.5)
        run = wrk.run(port, "/portfolio/optimize", seconds, 1, body=body, tokens=tokens[:1])
        print(f"spans server, optimize 1 conn: {run}", flush=True)
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        records = None
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                records = json.loads(pathlib.Path(spans_file).read_text())
                if records:
                    break
            except (OSError, ValueError):
                pass
        if not records:
            rows.append(("breakdown", "no spans were written", "-", "-"))
            return
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    medians = {name: statistics.median(record.get(name, 0.0) for record in records)
               for name in SPAN_ORDER + ("handler",)}
    means = {name: statistics.fmean(record.get(name, 0.0) for record in records)
             for name in SPAN_ORDER + ("handler",)}
    # The job insert runs while the pool round trip and the engine do: counted once.
    overlap = min(means["job insert"], means["pool round trip"] + means["engine"])
    named = sum(means[name] for name in SPAN_ORDER) - overlap
    parts = "; ".join(f"{name} {medians[name]:.2f}" for name in SPAN_ORDER)
    rows.append((f"breakdown of one optimize, median ms of {len(records)} requests "
                 "(spans server, 1 conn)",
                 f"{parts} (the insert overlaps the pool round trip and the engine); "
                 f"handler {medians['handler']:.2f}; the rest of the handler "
                 f"(body parsing, request model, Tornado, event publish) "
                 f"{means['handler'] - named:.2f} (mean); wrk p50 {run['p50_us'] / 1000:.2f} "
                 f"({run['requests']} requests)",
                 "-", "-"))
    return medians


# --- main ------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per optimize run")
    parser.add_argument("--accounts-duration", type=int, default=5,
                        help="seconds per accounts run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating bare/indico rounds per accounts measurement")
    parser.add_argument("--jobs", type=int, default=10_000,
                        help="optimizations for the memory check")
    parser.add_argument("--engine-seconds", type=int, default=5)
    parser.add_argument("--no-spans", action="store_true", help="skip the breakdown")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--only", action="append",
                        choices=("latency", "throughput", "accounts", "memory", "spans"),
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args()
    parts = set(args.only or ("latency", "throughput", "accounts", "memory", "spans"))
    if args.no_spans:
        parts.discard("spans")
    if not shutil.which("wrk"):
        sys.exit("optimize_bench: wrk is needed (apt-get install -y wrk)")
    began = time.monotonic()

    workdir = tempfile.mkdtemp(prefix="indico-bench11-")
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update({
        "INDICO_DATA_DIR": workdir, "INDICO_LOAD_SAMPLE_PRICES": "true",
        "INDICO_SIGNUP_MAX_PER_ADDRESS": "1000000", "INDICO_LOGIN_MAX_FAILURES": "1000000",
        "INDICO_LOGIN_ADDRESS_MAX_FAILURES": "1000000",
    })
    indico_port, bare_port = free_port(), free_port()
    logs = [open(os.path.join(workdir, name), "w") for name in ("indico.log", "bare.log")]
    indico = subprocess.Popen([sys.executable, "-m", "indico.server", f"--port={indico_port}"],
                              cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT)
    bare = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bare_server.py"),
                             str(bare_port)], cwd=ROOT, env=env,
                            stdout=logs[1], stderr=subprocess.STDOUT)
    wrk = Wrk(workdir)
    rows = []
    optimizations = 0
    try:
        wait_for(indico_port, "/healthCheck", time.monotonic() + 120)
        wait_for(bare_port, "/", time.monotonic() + 30, method="POST")
        print(f"servers up: indico pid {indico.pid} :{indico_port}, bare pid {bare.pid} "
              f":{bare_port}", flush=True)
        tokens = []
        for number in range(50):
            status, answer = call(indico_port, "/auth/signup", {
                "email": f"bench{number}@example.com", "password": PASSWORD, "name": "Bench"})
            assert status == 201, (status, answer)
            tokens.append(answer["data"]["token"])
        status, answer = call(indico_port, "/prices/symbols", {}, tokens[0])
        listed = [entry["symbol"] for entry in answer["data"]["symbols"]]
        symbols = [symbol for symbol in listed if symbol != "SP500"]
        assert status == 200 and len(symbols) == 20, (status, listed)
        body = {"symbols": symbols, "startDate": START, "endDate": END,
                "initialInvestment": 10000, "objective": "max_sharpe"}
        users = tokens[:8]

        # First, on a database without jobs: in a run with thousands of stored
        # jobs nx-27017 answers user/update several times slower (measured).
        if "accounts" in parts:
            accounts = argparse.Namespace(duration=args.accounts_duration, connections=50,
                                          rounds=args.rounds)
            measure_accounts(indico_port, bare_port, wrk, accounts, tokens, {}, rows)

        # Warm-up: the price caches and both workers.
        warm = run_limited(wrk, indico_port, "/portfolio/optimize", body, users, 8, 200)
        assert warm["not_200"] == 0, warm
        optimizations += warm["requests"]
        memory = {}
        if "memory" in parts:
            first = run_limited(wrk, indico_port, "/portfolio/optimize", body, users, 8,
                                1000 - optimizations)
            optimizations += first["requests"]
            memory["first"] = (optimizations, memory_snapshot(indico.pid))
            print(f"memory after {optimizations}: {memory['first'][1]}", flush=True)

        if "latency" in parts:
            one = wrk.run(indico_port, "/portfolio/optimize", args.duration, 1, body=body,
                          tokens=users[:1])
            optimizations += one["requests"]
            print(f"optimize 1 conn: {one}", flush=True)
            p50, p99 = one["p50_us"] / 1000, one["p99_us"] / 1000
            rows.append(("portfolio/optimize, 20 symbols x 5 y, 1 conn sequential: p50",
                         f"{p50:.2f} ms ({one['rps']:.0f} req/s, {one['requests']} requests, "
                         f"{one['not_200']} not 200)", "<= 8 ms", verdict(p50 <= 8)))
            rows.append(("portfolio/optimize, 1 conn: p99", f"{p99:.2f} ms (max "
                         f"{one['max_us'] / 1000:.1f})", "<= 20 ms", verdict(p99 <= 20)))

        if "throughput" in parts:
            before = cpu_snapshot(indico.pid)
            eight = wrk.run(indico_port, "/portfolio/optimize", args.duration, 8, body=body,
                            tokens=users)
            after = cpu_snapshot(indico.pid)
            optimizations += eight["requests"]
            print(f"optimize 8 conn: {eight}", flush=True)
            per = {name: 1000 * (after[name] - before[name]) / max(1, eight["requests"])
                   for name in after}
            frame, benchmark = asyncio.run(load_frame(env, symbols))
            rate, processes = engine_alone_rate(frame, benchmark, args.engine_seconds)
            share = 100 * eight["rps"] / rate
            rows.append(("portfolio/optimize, 8 conn (8 users): req/s",
                         f"{eight['rps']:.0f} req/s (p50 {eight['p50_us'] / 1000:.1f} ms, p99 "
                         f"{eight['p99_us'] / 1000:.1f} ms, {eight['not_200']} not 200)",
                         "(next row)", "-"))
            cores = os.cpu_count() or 2
            rows.append((f"CPU per request in that run, by process (ms; {cores} cores at "
                         f"that rate = {1000 * cores / max(1.0, eight['rps']):.2f} ms a request)",
                         "; ".join(f"{name} {value:.2f}" for name, value in per.items()),
                         "-", "-"))
            rows.append((f"engine alone: optimize().to_dict() with shares, {processes} "
                         f"processes, frame {frame.shape[0]}x{frame.shape[1]}",
                         f"{rate:.0f} /s; the server did {share:.0f} % of it",
                         ">= 35 %", verdict(share >= 35)))

        if "memory" in parts:
            if optimizations < args.jobs:
                rest = run_limited(wrk, indico_port, "/portfolio/optimize", body, users, 8,
                                   args.jobs - optimizations)
                optimizations += rest["requests"]
                if rest["not_200"]:
                    rows.append(("memory run: errors", f"{rest['not_200']} not 200", "0",
                                 "MISSED"))
            memory["last"] = (optimizations, memory_snapshot(indico.pid))
            print(f"memory after {optimizations}: {memory['last'][1]}", flush=True)
            (n1, m1), (n2, m2) = memory["first"], memory["last"]
            for name in ("server", "workers"):
                growth = 100 * (m2[name] - m1[name]) / m1[name]
                rows.append((f"RSS of the {name} process{'es' * (name == 'workers')}: after "
                             f"{n1:,} and {n2:,} optimizations",
                             f"{m1[name] / 1024:.1f} -> {m2[name] / 1024:.1f} MiB "
                             f"({growth:+.1f} %)", "within 10 %", verdict(abs(growth) <= 10)))
            rows.append(("RSS of the database process (nx-27017; not a target)",
                         f"{m1['database'] / 1024:.1f} -> {m2['database'] / 1024:.1f} MiB",
                         "-", "-"))

        if "spans" in parts:
            measure_spans(env, workdir, body, tokens, min(args.duration, 5), rows, logs)
    finally:
        codes = {}
        for process in (indico, bare):
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
        if codes.get("indico") == 0 and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (logs)")

    print_results(rows, f"load generator: wrk, 1 thread, same machine; "
                        f"{time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
