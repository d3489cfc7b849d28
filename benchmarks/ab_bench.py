"""Two checkouts of indico, measured in interleaved rounds: is a change faster?

On a shared virtual machine the same phase of two runs minutes apart can
differ by 2× (docs/PERFORMANCE.md): a before/after comparison of two
separate ``optimize_bench.py`` runs says little. This starts a server of each
checkout at once (each on its own embedded database, with ``make run``'s
settings), then alternates short runs between them, so both see the same
machine, and reports medians of the rounds: requests/s, wrk's p50 and p99,
and the CPU each request cost the server process (and, for
``portfolio/optimize``, its workers and its database), which noise moves less
than the rates::

    git worktree add /tmp/base main                      # the checkout to compare with
    .venv/bin/python benchmarks/ab_bench.py /tmp/base .  # about 4 minutes

Options: ``--rounds N`` (default 4; the order of the two alternates per round),
``--seconds S`` (per run, default 4), ``--only accounts|optimize`` (default
both). Both checkouts run on this checkout's ``.venv`` (``PYTHONPATH`` set to
the checkout), so a change of ``req.txt`` is not compared. Needs ``wrk``.
"""

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from api_bench import Wrk, call, free_port, print_results, wait_for  # after the path is set
from optimize_bench import END, START, cpu_snapshot

PASSWORD = "correct horse battery"
ACCOUNTS = (("auth/check", "/auth/check", {}),
            ("user/update", "/user/update", {"update_user": {"name": "x"}}))


def start(checkout, workdir, name):
    """A server of ``checkout`` on its own embedded database; returns (name, port, process)."""
    data = tempfile.mkdtemp(prefix=f"{name}-", dir=workdir)
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update({"INDICO_DATA_DIR": data, "INDICO_LOAD_SAMPLE_PRICES": "true",
                "PYTHONPATH": str(checkout), "INDICO_SIGNUP_MAX_PER_ADDRESS": "1000000",
                "INDICO_LOGIN_MAX_FAILURES": "1000000",
                "INDICO_LOGIN_ADDRESS_MAX_FAILURES": "1000000"})
    port = free_port()
    log = open(os.path.join(data, "server.log"), "w")
    process = subprocess.Popen([sys.executable, "-m", "indico.server", f"--port={port}"],
                               cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    return name, port, process


def sign_up(port, users):
    tokens = []
    for number in range(users):
        status, answer = call(port, "/auth/signup", {"email": f"ab{number}@example.com",
                                                     "password": PASSWORD})
        assert status == 201, (status, answer)
        tokens.append(answer["data"]["token"])
    return tokens


def measure(wrk, server, path, body, tokens, connections, seconds):
    """One run against ``server``: wrk's figures and CPU ms per request by process."""
    _, port, process = server
    before = cpu_snapshot(process.pid)
    figures = wrk.run(port, path, seconds, connections, body=body, tokens=tokens)
    after = cpu_snapshot(process.pid)
    if figures["not_200"] or figures["socket_errors"]:
        raise RuntimeError(f"{path}: {figures}")
    requests = max(figures["requests"], 1)
    figures["cpu"] = {key: 1000 * (after[key] - before[key]) / requests for key in after}
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", type=pathlib.Path, help="the checkout to compare with")
    parser.add_argument("new", type=pathlib.Path, help="the checkout with the change")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--only", choices=("accounts", "optimize"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("ab_bench: wrk is needed (apt-get install -y wrk)")
    workdir = tempfile.mkdtemp(prefix="indico-ab-")
    servers = [start(args.base.resolve(), workdir, "base"),
               start(args.new.resolve(), workdir, "new")]
    wrk = Wrk(workdir)
    results = {}
    try:
        tokens = {}
        for name, port, _ in servers:
            wait_for(port, "/healthCheck", time.monotonic() + 120)
            tokens[name] = sign_up(port, 50)
        runs = []
        if args.only in (None, "accounts"):
            runs += [(label, path, body, 50) for label, path, body in ACCOUNTS]
        if args.only in (None, "optimize"):
            _, port, _ = servers[0]
            status, answer = call(port, "/prices/symbols", {}, tokens["base"][0])
            symbols = [entry["symbol"] for entry in answer["data"]["symbols"]
                       if entry["symbol"] != "SP500"]
            body = {"symbols": symbols, "startDate": START, "endDate": END,
                    "initialInvestment": 10000, "objective": "max_sharpe"}
            runs += [("portfolio/optimize, 1 conn", "/portfolio/optimize", body, 1),
                     ("portfolio/optimize, 8 conn", "/portfolio/optimize", body, 8)]
        for server in servers:  # warm-up: caches, the workers, the frame tokens
            for _, path, body, connections in runs:
                measure(wrk, server, path, body, tokens[server[0]][:connections],
                        connections, 1)
        for number in range(args.rounds):
            order = servers if number % 2 == 0 else servers[::-1]
            for label, path, body, connections in runs:
                for server in order:
                    name = server[0]
                    figures = measure(wrk, server, path, body, tokens[name][:connections],
                                      connections, args.seconds)
                    results.setdefault((label, name), []).append(figures)
                    print(f"round {number + 1} {label} {name}: {figures['rps']:.0f} req/s, "
                          f"p50 {figures['p50_us'] / 1000:.2f} ms, server "
                          f"{figures['cpu']['server']:.3f} ms a request", flush=True)
    finally:
        for _, _, process in servers:
            process.terminate()
        for _, _, process in servers:
            process.wait(60)
    rows = []
    for label, _, _, _ in runs:
        for name in ("base", "new"):
            entries = results[(label, name)]

            def median(pick, entries=entries):
                return statistics.median(pick(entry) for entry in entries)
            cpu = ", ".join(f"{key} {median(lambda e, key=key: e['cpu'][key]):.3f}"
                            for key in ("server", "workers", "database")
                            if median(lambda e, key=key: e["cpu"][key]) > 0)
            rows.append((f"{label}: {name} ({len(entries)} rounds, medians)",
                         f"{median(lambda e: e['rps']):,.0f} req/s; p50 "
                         f"{median(lambda e: e['p50_us']) / 1000:.2f} ms, p99 "
                         f"{median(lambda e: e['p99_us']) / 1000:.2f} ms; CPU ms a request: "
                         f"{cpu}", "-", "-"))
    print_results(rows, f"base {args.base}, new {args.new}; wrk 1 thread, same machine; "
                        f"{args.rounds} interleaved rounds of {args.seconds} s")


if __name__ == "__main__":
    main()
