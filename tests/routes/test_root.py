"""The plain GET routes: banner, health check, OpenAPI document, docs page."""

import json
import re
import shutil
import tempfile
import time
import urllib.parse

from indico import __version__
from indico.db import open_database
from indico.db.embedded import EmbeddedServer, _free_port
from tests.harness import (
    ACCESS_LOG,
    ServerTest,
    needs_embedded,
    test_config,
    tolerate_logs,
)


class RootTest(ServerTest):

    def test_banner(self):
        status, body, _ = self.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(body, {"status": 200, "data": {
            "service": "indico", "version": __version__, "message": "Success!"}})

    def test_health_check(self):
        status, body, _ = self.request("GET", "/healthCheck")
        self.assertEqual((status, body), (200, {"status": 200, "data": {"database": "ok"}}))

    def test_openapi_document(self):
        status, document, _ = self.request("GET", "/openapi.json")
        self.assertEqual(status, 200)
        self.assertEqual(document["openapi"], "3.1.0")
        self.assertEqual(document["info"]["version"], __version__)
        for path in ("/auth/signup", "/auth/login", "/auth/logout", "/auth/check",
                     "/user/get", "/user/update", "/user/password", "/user/delete"):
            self.assertIn(path, document["paths"])
            self.assertEqual(list(document["paths"][path]), ["post"])
        self.assertEqual(document["paths"]["/auth/login"]["post"]["security"], [])
        self.assertEqual(document["paths"]["/user/get"]["post"]["security"], [{"bearer": []}])
        self.assertEqual(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer")
        signup = document["paths"]["/auth/signup"]["post"]
        self.assertIn("201", signup["responses"])
        schema_ref = signup["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
        self.assertEqual(set(schema["required"]), {"email", "password"})
        self.assertIs(schema["additionalProperties"], False)
        user_public = document["components"]["schemas"]["UserPublic"]
        self.assertNotIn("password_hash", user_public["properties"])
        for path in ("/auth/login", "/user/get"):
            responses = document["paths"][path]["post"]["responses"]
            self.assertIn("431", responses)
            self.assertTrue(responses["401"]["headers"]["WWW-Authenticate"]["required"])
        for path in ("/user/password", "/user/delete"):
            self.assertIn("429", document["paths"][path]["post"]["responses"])

    def test_docs_page(self):
        status, _, response = self.request("GET", "/docs")
        self.assertEqual(status, 200)
        self.assertTrue(response.headers["Content-Type"].startswith("text/html"))
        self.assertIn(b"swagger-ui-bundle.js", response.body)
        self.assertIn("script-src", response.headers["Content-Security-Policy"].replace(
            "default-src", "script-src"))
        status, _, response = self.request("GET", "/docs/static/swagger-ui-bundle.js")
        self.assertEqual(status, 200)
        self.assertGreater(len(response.body), 100000)
        status, _, response = self.request("GET", "/docs/static/docs-init.js")
        self.assertIn(b"docs.dataset.spec", response.body)

    def test_docs_page_links_are_relative_so_a_proxy_prefix_works(self):
        # Resolved against /backend/docs and /backend/docs/, as behind deploy/nginx.
        for path, page in (("/docs", "http://proxy/backend/docs"),
                           ("/docs/", "http://proxy/backend/docs/")):
            with self.subTest(path=path):
                status, _, response = self.request("GET", path)
                self.assertEqual(status, 200)
                html = response.body.decode()
                links = re.findall(r'(?:href|src|data-spec)="([^"]+)"', html)
                self.assertEqual(len(links), 4, html)
                resolved = {urllib.parse.urljoin(page, link) for link in links}
                self.assertEqual(resolved, {
                    "http://proxy/backend/docs/static/swagger-ui.css",
                    "http://proxy/backend/docs/static/swagger-ui-bundle.js",
                    "http://proxy/backend/docs/static/docs-init.js",
                    "http://proxy/backend/openapi.json"})

    def test_docs_static_cannot_escape(self):
        status, _, response = self.request("GET", "/docs/static/../../../config.py")
        self.assertIn(status, (403, 404))
        self.assertNotIn(b"mongodb_uri", response.body)


@needs_embedded("starts and stops an nx-27017 of its own")
class HealthWithoutDatabaseTest(ServerTest):
    """A database of our own that goes away and comes back."""

    def setUp(self):
        self.own_dir = tempfile.mkdtemp(prefix="indico-health-")
        self.own_port = _free_port()
        self.own_server = EmbeddedServer(self.own_dir, port=self.own_port)
        self.own_server.start()
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.own_server.stop()
        shutil.rmtree(self.own_dir, ignore_errors=True)

    async def open_app_database(self):
        config = test_config(mongodb_uri=self.own_server.uri, db_timeout=1.0,
                             database=self.db_name, session_cache=300.0)
        database = await self.resources.enter_async_context(open_database(config))
        return config, database.db

    def test_actions_answer_503_while_the_database_is_down(self):
        token = self.signup()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        self.own_server.stop()
        # A known session still authenticates from the cache; what needs the
        # database says it does not answer, and nothing else.
        status, answer = self.post("/auth/check", token=token)
        self.assertEqual((status, answer["data"]["user"]["email"]), (200, "ada@example.com"))
        for route, body, token_used in (
                ("/auth/signup", {"email": "b@example.com", "password": "password1"}, None),
                ("/user/update", {"update_user": {"name": "x"}}, token)):
            with self.expect_server_errors():
                status, answer, response = self.request("POST", route, body, token=token_used)
            self.assertEqual(status, 503, answer)
            self.assertEqual(answer["error"]["type"], "ServiceUnavailable")
            self.assertEqual(answer["error"]["message"],
                             "the database does not answer; try again shortly")
            self.assertEqual(response.headers["Retry-After"], "5")
            self.assertNotIn("Traceback", json.dumps(answer))

    def test_503_when_the_database_is_down_then_recovery(self):
        self.assertEqual(self.request("GET", "/healthCheck")[0], 200)
        self.own_server.stop()
        with self.expect_server_errors():
            status, body, response = self.request("GET", "/healthCheck")
        self.assertEqual(status, 503)
        self.assertEqual(response.headers.get("Retry-After"), "5")
        self.assertEqual(body["error"]["retry_after"], 5)
        self.assertEqual(body["error"]["type"], "ServiceUnavailable")
        self.assertIn("database does not answer", body["error"]["message"])
        self.own_server.start()
        deadline = time.monotonic() + 10
        with tolerate_logs(ACCESS_LOG):  # its 503s until then
            while self.request("GET", "/healthCheck")[0] != 200:
                self.assertLess(time.monotonic(), deadline, "health did not recover")
                time.sleep(0.2)
        status, body, _ = self.request("GET", "/healthCheck")
        self.assertEqual(json.dumps(body), json.dumps({"status": 200, "data": {"database": "ok"}}))


JSON = "application/json; charset=UTF-8"


class StaticErrorsTest(ServerTest):
    """Swagger UI's files: every error is the JSON envelope, not tornado's HTML page."""

    def check(self, method, route, status, error_type, headers=None):
        code, body, response = self.request(method, route, headers=headers)
        self.assertEqual(code, status, response.body[:200])
        self.assertEqual(response.headers["Content-Type"], JSON)
        if method == "HEAD":  # no body, by definition
            self.assertEqual(response.body, b"")
            return response
        self.assertError((code, body), status, error_type)
        self.assertNotIn(b"<html", response.body)
        return response

    def test_a_missing_file_is_a_json_404(self):
        response = self.check("GET", "/docs/static/missing.js", 404, "NotFound")
        self.assertEqual(json.loads(response.body)["error"]["message"], "Not Found")
        self.check("HEAD", "/docs/static/missing.js", 404, "NotFound")

    def test_paths_out_of_the_directory_or_not_files(self):
        for route in ("/docs/static/", "/docs/static/../../../config.py",
                      "/docs/static/%2e%2e/%2e%2e/setup.py"):
            with self.subTest(route=route):
                code, body, response = self.request("GET", route)
                self.assertIn(code, (403, 404))
                self.assertEqual(response.headers["Content-Type"], JSON)
                self.assertIn(body["error"]["type"], ("Forbidden", "NotFound"))
                # The message is the reason phrase: no path of the server's.
                self.assertIn(body["error"]["message"], ("Forbidden", "Not Found"))

    def test_other_methods_are_a_json_405(self):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                response = self.check(method, "/docs/static/swagger-ui.css", 405,
                                      "MethodNotAllowed")
                self.assertEqual(response.headers["Allow"], "GET, HEAD, OPTIONS")

    def test_a_range_outside_the_file_is_a_json_416(self):
        response = self.check("GET", "/docs/static/swagger-ui.css", 416, "RangeNotSatisfiable",
                              headers={"Range": "bytes=99999999-"})
        self.assertRegex(response.headers["Content-Range"], r"^bytes \*/\d+$")

    def test_files_are_still_served(self):
        for method in ("GET", "HEAD"):
            status, _, response = self.request(method, "/docs/static/swagger-ui.css")
            self.assertEqual(status, 200)
            self.assertTrue(response.headers["Content-Type"].startswith("text/css"))
            self.assertNotIn("Cache-Control", response.headers)
            self.assertIn("Etag", response.headers)
        status, _, response = self.request("OPTIONS", "/docs/static/swagger-ui.css")
        self.assertEqual((status, response.headers["Allow"]), (204, "GET, HEAD, OPTIONS"))
        status, _, response = self.request("GET", "/docs/static/swagger-ui.css",
                                           headers={"Range": "bytes=0-9"})
        self.assertEqual((status, len(response.body)), (206, 10))
