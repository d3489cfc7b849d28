"""``make run``'s lifecycle with real processes: the embedded database dies, the server is killed.

Each test starts ``python -m indico.server`` on a data directory of its own,
with the embedded database, as ``make run`` does. Processes are found and
watched through ``/proc`` (Linux), so the tests skip elsewhere.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from indico.db.embedded import _free_port
from tests.harness import REPO, needs_embedded, server_command
from tests.processes import stop_process

SEED_BODY = {"symbols": ["AAPL", "MSFT", "JPM"], "startDate": "01-01-12",
             "endDate": "03-20-16", "initialInvestment": 1000.00}


def http(method, url, body=None, token=None, timeout=10):
    """Send a JSON request; return ``(status, parsed body)``."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def process_table():
    """``{pid: (ppid, start time, command line)}`` of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        if fields[0] in ("Z", "X"):
            continue  # dead, not yet reaped
        table[int(name)] = (int(fields[1]), fields[19], command)
    return table


def descendants(pid):
    """``{pid: (start time, command line)}`` of every live process below ``pid``."""
    table = process_table()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started, command) in table.items():
            if ppid == parent and child not in found:
                found[child] = (started, command)
                frontier.append(child)
    return found


def still_running(processes):
    """The subset of ``processes`` (as from :func:`descendants`) that still runs."""
    table = process_table()
    return {pid: info for pid, info in processes.items()
            if pid in table and table[pid][1] == info[0]}


@unittest.skipUnless(os.path.isdir("/proc/self"), "needs Linux /proc")
@needs_embedded("runs the server on its embedded database and kills it")
class LifecycleTest(unittest.TestCase):

    def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="indico-lifecycle-")
        self.addCleanup(shutil.rmtree, self.data_dir, True)

    def start(self, **environ):
        """Start a server with the embedded database; return ``(process, base URL, log path)``."""
        port = _free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
        env.update({"INDICO_DATA_DIR": self.data_dir, "INDICO_LOAD_SAMPLE_PRICES": "false",
                    "INDICO_ARGON2_MEMORY_KIB": "8", "INDICO_ARGON2_TIME_COST": "1",
                    "INDICO_DB_TIMEOUT": "1", **environ})
        log_path = os.path.join(self.data_dir, f"server-{port}.log")
        with open(log_path, "w") as log:
            # A file, not a pipe: a server logging much cannot block on a full pipe.
            process = subprocess.Popen(server_command(f"--port={port}"), cwd=REPO, env=env,
                                       stdout=subprocess.DEVNULL, stderr=log)
        self.addCleanup(stop_process, process)
        base = f"http://127.0.0.1:{port}"
        self.wait_for(lambda: self.healthy(base), "the server never became healthy",
                      process=process, log_path=log_path)
        return process, base, log_path

    def terminate(self, pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def healthy(self, base):
        try:
            return http("GET", base + "/healthCheck", timeout=5)[0] == 200
        except OSError:
            return False

    def wait_for(self, condition, message, timeout=90, process=None, log_path=None):
        """Poll ``condition()`` until it is true; fail with ``message`` at the deadline."""
        deadline = time.monotonic() + timeout
        while not condition():
            if process is not None and process.poll() is not None:
                with open(log_path) as handle:
                    self.fail(f"the server exited: {handle.read()[-3000:]}")
            if time.monotonic() > deadline:
                self.fail(message)
            time.sleep(0.1)

    def database_state(self):
        with open(os.path.join(self.data_dir, "db", "server.json")) as handle:
            return json.load(handle)

    def read_log(self, log_path):
        with open(log_path) as handle:
            return handle.read()

    def test_a_killed_embedded_database_is_restarted_and_the_api_recovers(self):
        process, base, log_path = self.start()
        status, body = http("POST", base + "/auth/signup",
                            {"email": "kept@example.com", "password": "password1"})
        self.assertEqual(status, 201, body)
        before = self.database_state()
        os.kill(before["pid"], signal.SIGKILL)
        answers = []

        def recovered():
            try:
                answers.append(http("GET", base + "/healthCheck", timeout=10))
            except OSError as exc:  # pragma: no cover - a failure, shown below
                answers.append((None, repr(exc)))
            return answers[-1][0] == 200 and "restart attempt 1 succeeded" in self.read_log(
                log_path)
        self.wait_for(recovered, "the API never recovered", process=process, log_path=log_path)
        # While it was down, every answer was the JSON 503; then a 200.
        for status, body in answers[:-1]:
            self.assertIn(status, (200, 503), body)
            if status == 503:
                self.assertEqual(body["error"]["type"], "ServiceUnavailable", body)
        after = self.database_state()
        self.assertNotEqual(after["pid"], before["pid"])
        self.assertEqual(after["uri"], before["uri"], "not restarted on the same port")
        # The account written before the kill is still there.
        status, body = http("POST", base + "/auth/login",
                            {"email": "kept@example.com", "password": "password1"})
        self.assertEqual(status, 200, body)
        stop_process(process)
        self.assertEqual(process.returncode, 0)
        log = self.read_log(log_path)
        self.assertIn("embedded database: restart attempt 1 succeeded, started", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn('"traceback"', log)

    def test_sigkill_of_the_server_leaves_only_the_database_which_the_next_start_reuses(self):
        process, base, log_path = self.start(INDICO_LOAD_SAMPLE_PRICES="true",
                                             INDICO_WORKERS="2")
        status, body = http("POST", base + "/auth/signup",
                            {"email": "pool@example.com", "password": "password1"})
        self.assertEqual(status, 201, body)
        token = body["data"]["token"]
        status, body = http("POST", base + "/portfolio/optimize", SEED_BODY, token=token,
                            timeout=120)
        self.assertEqual(status, 200, body)
        children = descendants(process.pid)
        self.addCleanup(lambda: [self.terminate(pid) for pid in still_running(children)])
        database_pid = self.database_state()["pid"]
        self.addCleanup(self.terminate, database_pid)
        self.assertIn(database_pid, children)
        kinds = " ".join(command for _, command in children.values())
        self.assertIn("forkserver", kinds)
        self.assertIn("resource_tracker", kinds)
        self.assertGreaterEqual(len(children), 4, children)  # + at least one pool worker
        process.kill()
        process.wait()
        self.wait_for(lambda: set(still_running(children)) == {database_pid},
                      "processes left behind after SIGKILL")
        self.assertEqual(set(still_running(children)), {database_pid})
        # The next start attaches to the database that survived, and keeps its data.
        second, base, log_path = self.start()
        self.assertIn("attached to the embedded database", self.read_log(log_path))
        self.assertEqual(self.database_state()["pid"], database_pid)
        status, body = http("POST", base + "/auth/login",
                            {"email": "pool@example.com", "password": "password1"})
        self.assertEqual(status, 200, body)
        # It did not start that database, so it leaves it running when it stops.
        stop_process(second)
        self.assertEqual(second.returncode, 0)
        self.assertEqual(set(still_running(children)), {database_pid})
        os.kill(database_pid, signal.SIGTERM)
        self.wait_for(lambda: not still_running(children), "the database did not stop")


if __name__ == "__main__":
    unittest.main()
