"""How fast ``make run`` recovers from a dead database and cleans up after a SIGKILL (issue 10).

Run from the repository root with the project's environment (Linux: it reads /proc)::

    .venv/bin/python benchmarks/lifecycle_bench.py [--rounds 5]

Each round starts ``python -m indico.server`` (not under coverage) on a
temporary INDICO_DATA_DIR with the embedded database, and measures:

* **database restart**: ``kill -9`` of the nx-27017 process; the time until
  ``GET /healthCheck`` answers 200 again and the log has the restart line
  (polled every 10 ms), and the answers seen meanwhile;
* **SIGKILL clean-up**: with sample prices loaded and ``INDICO_WORKERS=2``, two
  concurrent ``portfolio/optimize`` requests (so both pool workers exist), then
  ``kill -9`` of the server; for each process it had started (from /proc,
  before the kill), the time until it is gone (polled every 5 ms, at most 60 s).
  The embedded database is expected to stay (the next start attaches to it); it
  is stopped with SIGTERM afterwards.

Prints one Markdown table per measurement, a row per round.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from indico.db.embedded import _free_port
from tests.test_lifecycle import (
    SEED_BODY,
    descendants,
    http,
    process_table,
    still_running,
)


def start(data_dir, **environ):
    """Start a server on ``data_dir``; return ``(process, base URL, log path)`` once healthy."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update({"INDICO_DATA_DIR": data_dir, "INDICO_LOAD_SAMPLE_PRICES": "false",
                "INDICO_ARGON2_MEMORY_KIB": "8", "INDICO_ARGON2_TIME_COST": "1", **environ})
    log_path = os.path.join(data_dir, "server.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "indico.server", f"--port={port}"],
                                   cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    while health(base) != 200:
        if process.poll() is not None:
            sys.exit(f"the server exited; see {log_path}")
        time.sleep(0.1)
    return process, base, log_path


def health(base):
    try:
        return http("GET", base + "/healthCheck", timeout=10)[0]
    except OSError:
        return None


def database_pid(data_dir):
    with open(os.path.join(data_dir, "db", "server.json")) as handle:
        return json.load(handle)["pid"]


def restart_round():
    """One database kill; returns ``(seconds, answers seen meanwhile, log line counts)``."""
    data_dir = tempfile.mkdtemp(prefix="indico-lifecycle-bench-")
    try:
        process, base, log_path = start(data_dir)
        os.kill(database_pid(data_dir), signal.SIGKILL)
        killed, answers = time.monotonic(), []
        while True:
            answers.append(health(base))
            with open(log_path) as handle:
                restarted = "restart attempt" in handle.read()
            if answers[-1] == 200 and restarted:
                break
            time.sleep(0.01)
        took = time.monotonic() - killed
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        with open(log_path) as handle:
            log = handle.read()
        counts = {"restart lines": log.count("restart attempt"),
                  "tracebacks": log.count("Traceback")}
        return took, {status: answers.count(status) for status in set(answers)}, counts
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def kind(pid, command, server_pid, parents):
    if "resource_tracker" in command:
        return "resource tracker"
    if "forkserver" in command:
        return "forkserver" if parents.get(pid) == server_pid else "pool worker"
    if "indico.db.embedded" in command:
        return "nx-27017"
    return command[:40]


def sigkill_round():
    """One server SIGKILL; returns ``[(kind, seconds or None)]`` for each process it started."""
    data_dir = tempfile.mkdtemp(prefix="indico-lifecycle-bench-")
    try:
        process, base, _ = start(data_dir, INDICO_LOAD_SAMPLE_PRICES="true", INDICO_WORKERS="2")
        _, body = http("POST", base + "/auth/signup",
                       {"email": "bench@example.com", "password": "password1"})
        token = body["data"]["token"]
        requests = [threading.Thread(target=http, args=("POST", base + "/portfolio/optimize",
                                                        SEED_BODY, token, 120))
                    for _ in range(2)]
        for thread in requests:
            thread.start()
        for thread in requests:
            thread.join()
        children = descendants(process.pid)
        table = process_table()
        parents = {pid: table[pid][0] for pid in children if pid in table}
        database = database_pid(data_dir)
        killed = time.monotonic()
        process.kill()
        process.wait()
        gone = {}
        while time.monotonic() - killed < 60:
            running = still_running(children)
            for pid in children:
                if pid not in running and pid not in gone:
                    gone[pid] = time.monotonic() - killed
            if set(running) <= {database}:
                break
            time.sleep(0.005)
        os.kill(database, signal.SIGTERM)
        return [(kind(pid, command, process.pid, parents), gone.get(pid))
                for pid, (_, command) in sorted(children.items())]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("| round | database restart: 200 again after | answers meanwhile | log |")
    print("|---|---|---|---|")
    for number in range(1, args.rounds + 1):
        took, answers, counts = restart_round()
        print(f"| {number} | {took:.2f} s | {answers} | {counts} |")
    print()
    print("| round | exit after SIGKILL of the server (each process it started) |")
    print("|---|---|")
    for number in range(1, args.rounds + 1):
        cells = [f"{name} {'still running' if seconds is None else f'{seconds * 1000:.0f} ms'}"
                 for name, seconds in sigkill_round()]
        print(f"| {number} | {', '.join(cells)} |")


if __name__ == "__main__":
    main()
