"""``indico-prices import``: a real subprocess against the test server, exit codes, messages."""

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import uuid

from pymongo import MongoClient

from indico import prices as cli
from indico.db.embedded import EmbeddedServer
from tests.harness import ServerTest, database_uri, needs_embedded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "indico", "data", "sp500_prices.csv.gz")
YAHOO = "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,1,1,1,1,7.5,10\n"


def environment(database, **extra):
    """The subprocess environment: this test's database, nothing else of ours."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("INDICO_")}
    env.update(INDICO_MONGODB_URI=database_uri(), INDICO_DATABASE=database, **extra)
    try:
        import coverage
        if coverage.Coverage.current() is not None:
            # Measure the child too; `make test` combines the data files.
            env["COVERAGE_PROCESS_START"] = os.path.join(ROOT, "setup.cfg")
    except ImportError:  # pragma: no cover - coverage is a test dependency
        pass
    return env


def run_cli(database, *args, command=None, **extra):
    command = command or [sys.executable, "-m", "indico.prices"]
    return subprocess.run([*command, *args], env=environment(database, **extra), cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


class Files:
    """Small price files in a temporary directory."""

    def make_directory(self):
        self.directory = tempfile.mkdtemp(prefix="indico-cli-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def write(self, name, text, compress=False):
        path = os.path.join(self.directory, name)
        data = text.encode()
        with open(path, "wb") as handle:
            handle.write(gzip.compress(data) if compress else data)
        return path


class CliTest(Files, ServerTest):

    def setUp(self):
        super().setUp()
        self.make_directory()

    def symbols(self, token):
        status, body = self.post("/prices/symbols", token=token)
        self.assertEqual(status, 200, body)
        return {row["symbol"]: row for row in body["data"]["symbols"]}

    def test_imports_each_layout_with_a_summary_per_file(self):
        wide = self.write("wide.csv", "Date,AAPL,MSFT\n2020-01-02,1,2\n2020-01-03,1.5,2.5\n")
        long = self.write("long.csv.gz", "symbol,date,price\nKO,01-02-20,3\nKO,01-03-20,4\n",
                          compress=True)
        yahoo = self.write("gld.csv", YAHOO)
        result = run_cli(self.db_name, "import", wide, long, yahoo)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 3, result.stdout)
        self.assertIn(f"{wide}: wide, 2 symbols (AAPL, MSFT), 4 rows, 2020-01-02..2020-01-03",
                      lines[0])
        self.assertIn(f"{long}: long, 1 symbol (KO), 2 rows", lines[1])
        self.assertIn(f"{yahoo}: yahoo, 1 symbol (GLD), 1 rows, 2020-01-02..2020-01-02", lines[2])
        self.assertEqual(sorted(self.symbols(self.signup())), ["AAPL", "GLD", "KO", "MSFT"])
        again = run_cli(self.db_name, "import", wide)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("already stored, nothing changed", again.stdout)

    def test_a_rejected_file_exits_1_and_the_others_are_imported(self):
        good = self.write("good.csv", "Date,AAPL\n2020-01-02,1\n")
        bad = self.write("bad.csv", "Date,PEP\n2020-01-02,1\n2020-01-03,-2\n")
        result = run_cli(self.db_name, "import", bad, good)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"rejected {bad}: line 3: price '-2' for PEP is not positive",
                      result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn(good, result.stdout)
        self.assertEqual({doc["symbol"] for doc in self.find("prices")}, {"AAPL"})

    def test_a_running_server_sees_an_import_from_another_process(self):
        token = self.signup()
        first = self.write("first.csv", "Date,AAPL\n2020-01-02,1\n2020-01-03,2\n")
        self.assertEqual(run_cli(self.db_name, "import", first).returncode, 0)
        self.assertEqual(self.symbols(token)["AAPL"]["rows"], 2)
        service = self.services.prices
        frame = self.io_loop.run_sync(lambda: service.get_frame(["AAPL"], "2020-01-01",
                                                                "2020-01-31"))
        self.assertEqual(frame["AAPL"].tolist(), [1.0, 2.0])
        update = self.write("update.csv", "Date,AAPL,KO\n2020-01-03,2.5,5\n2020-01-06,3,6\n")
        self.assertEqual(run_cli(self.db_name, "import", update).returncode, 0)
        listed = self.symbols(token)
        self.assertEqual((listed["AAPL"]["rows"], listed["AAPL"]["last"]), (3, "2020-01-06"))
        self.assertIn("KO", listed)
        frame = self.io_loop.run_sync(lambda: service.get_frame(["AAPL"], "2020-01-01",
                                                                "2020-01-31"))
        self.assertEqual(frame["AAPL"].tolist(), [1.0, 2.5, 3.0])

    @needs_embedded("starts the embedded database of a data directory")
    def test_attaches_to_the_embedded_database_of_a_running_server(self):
        # What `make run` leaves running: the embedded server of a data directory.
        data_dir = os.path.join(self.directory, "var")
        server = EmbeddedServer(data_dir)
        uri = server.start()
        self.addCleanup(server.stop)
        path = self.write("a.csv", "Date,AAPL\n2020-01-02,1\n")
        env = {key: value for key, value in environment(self.db_name).items()
               if key != "INDICO_MONGODB_URI"}
        env["INDICO_DATA_DIR"] = data_dir
        result = subprocess.run([sys.executable, "-m", "indico.prices", "import", path], env=env,
                                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        with MongoClient(uri) as client:
            self.assertEqual(client[self.db_name].prices.count_documents({"symbol": "AAPL"}), 1)
            client.drop_database(self.db_name)
        self.assertIsNone(server.process.poll())  # the importer left it running

    def test_help_and_usage_errors(self):
        script = os.path.join(os.path.dirname(sys.executable), "indico-prices")
        for args in (["--help"], ["import", "--help"]):
            result = run_cli(self.db_name, *args, command=[script])
            self.assertEqual(result.returncode, 0, result.stderr)
            for word in ("wide", "long", "yahoo", "Adj Close", "MM-DD-YY", "Exit status"):
                self.assertIn(word, result.stdout)
        self.assertIn("--symbol", result.stdout)
        result = run_cli(self.db_name, "import", "--symbol", "AAPL", "a.csv", "b.csv")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--symbol applies to one FILE", result.stderr)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


class MainTest(Files, unittest.TestCase):
    """``main()`` in this process: progress bar, configuration and database failures."""

    def setUp(self):
        self.make_directory()
        self.database = f"test_{uuid.uuid4().hex[:20]}"
        self.client = MongoClient(database_uri())
        self.addCleanup(self.client.close)
        self.addCleanup(self.client.drop_database, self.database)

    def main(self, argv, **variables):
        out, err = io.StringIO(), FakeTerminal()
        code = cli.main(argv, environ=variables, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def test_progress_bar_on_a_terminal_and_quiet_mode(self):
        path = self.write("aapl.csv", YAHOO)
        bad = self.write("bad.csv", "nonsense\n1\n")
        settings = {"INDICO_MONGODB_URI": database_uri(), "INDICO_DATABASE": self.database}
        code, out, err = self.main(["import", path], **settings)
        self.assertEqual(code, 0, err)
        self.assertIn("1 symbol (AAPL)", out)
        self.assertIn("prices", err)  # the tqdm bar, drawn on the terminal
        code, out, err = self.main(["import", "--quiet", path, bad], **settings)
        self.assertEqual((code, out), (1, ""))
        self.assertIn("unknown layout", err)
        self.assertEqual(self.client[self.database].prices.count_documents({}), 1)

    def test_configuration_error(self):
        code, _, err = self.main(["import", "x.csv"], INDICO_PORT="not a port")
        self.assertEqual(code, 2)
        self.assertIn("configuration error: INDICO_PORT", err)

    def test_interrupted(self):
        # A real Ctrl-C: SIGINT to an importer busy with the whole sample, several times over.
        files = [SAMPLE] * 40
        process = subprocess.Popen(
            [sys.executable, "-m", "indico.prices", "import", *files], cwd=ROOT,
            env=environment(self.database), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        process.stdout.readline()  # the first file's summary: it is working
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        self.assertEqual(process.returncode, 130, err)
        self.assertIn("interrupted", err)

    def test_database_failure(self):
        code, _, err = self.main(["import", self.write("a.csv", "Date,A\n2020-01-02,1\n")],
                                 INDICO_MONGODB_URI="mongodb://127.0.0.1:9/",
                                 INDICO_DB_TIMEOUT="0.2")
        self.assertEqual(code, 3)
        self.assertIn("indico-prices: ", err)
