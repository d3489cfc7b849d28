"""Actions: dispatch only to registered actions, 404 and 405, and the status an action returns."""

from indico.routes.actions import ActionHandler, Reply, action
from indico.routes.models import Empty
from tests.harness import ServerTest

TORNADO_METHODS = ["finish", "redirect", "render", "write", "flush", "clear", "_private",
                   "__init__", "send_error", "write_error", "prepare", "get_argument",
                   "initialize", "lookup", "parse_body", "post", "get_user", "delete_user"]


class DispatchTest(ServerTest):

    def test_tornado_methods_are_not_actions(self):
        bodies = [{}, {"url": "http://evil.example/"}, {"template_name": "/etc/passwd"},
                  {"chunk": "<script>alert(1)</script>"}]
        for name in TORNADO_METHODS:
            for body in bodies:
                with self.subTest(name=name, body=body):
                    error = self.assertError(self.post(f"/user/{name}", body), 404, "NotFound")
                    self.assertEqual(error["message"], f"no action user/{name}")

    def test_tornado_method_probes_reach_no_side_effect(self):
        status, body, response = self.request("POST", "/user/redirect",
                                              {"url": "http://evil.example/"})
        self.assertEqual(status, 404)
        self.assertNotIn("Location", response.headers)
        status, body, response = self.request("POST", "/user/render",
                                              {"template_name": "config.py"})
        self.assertEqual(status, 404)
        self.assertNotIn("mongodb_uri", response.body.decode())

    def test_unknown_resource_and_action(self):
        self.assertError(self.post("/nothing/here"), 404, "NotFound", "no route /nothing/here")
        self.assertError(self.post("/auth/nothing"), 404, "NotFound", "no action auth/nothing")
        self.assertError(self.post("/auth/"), 404, "NotFound")
        self.assertError(self.post("/auth/login/extra"), 404, "NotFound")
        status, body, _ = self.request("GET", "/missing")
        self.assertEqual((status, body["error"]["type"]), (404, "NotFound"))

    def test_wrong_method_answers_405_with_allow(self):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                body = None if method in ("GET", "DELETE") else "{}"
                status, parsed, response = self.request(method, "/auth/check", body)
                self.assertEqual(status, 405)
                self.assertEqual(response.headers["Allow"], "POST, OPTIONS")
                self.assertEqual(parsed["error"]["type"], "MethodNotAllowed")
                self.assertIn(method, parsed["error"]["message"])
        status, _, response = self.request("HEAD", "/auth/check")
        self.assertEqual((status, response.headers["Allow"]), (405, "POST, OPTIONS"))

    def test_wrong_method_on_unknown_action_is_404(self):
        status, body, _ = self.request("GET", "/user/finish")
        self.assertEqual((status, body["error"]["type"]), (404, "NotFound"))

    def test_unsupported_http_method(self):
        status, body, response = self.request("PROPFIND", "/auth/check")
        self.assertEqual(status, 405)
        self.assertEqual(body["error"]["type"], "MethodNotAllowed")

    def test_registering_an_http_method_name_is_refused(self):
        with self.assertRaises(TypeError) as caught:
            class Bad(ActionHandler):  # defining it is the test
                @action()
                async def get(self, body):
                    return {}
        self.assertIn("shadow", str(caught.exception))


class DemoHandler(ActionHandler):
    """Actions that answer with the status they choose (no authentication)."""

    resource = "demo"

    @action(auth=False, status=201)
    async def made(self, body):
        """A fixed status: the one given to @action."""
        return {"made": True}

    @action(auth=False)
    async def accepted(self, body):
        """A status chosen by the action: a Reply."""
        return Reply(202, {"queued": True})

    @action(auth=False, response=Empty)
    async def checked(self, body):
        """A Reply's payload is checked against the response model too."""
        return Reply(200, {})


class ReplyTest(ServerTest):
    """An action returns its status with its data: ``Reply(status, data)``."""

    def make_app(self):
        app = super().make_app()
        dependencies = {"config": self.config, "db": self.db, "services": self.services,
                        "in_flight": self.in_flight}
        app.add_handlers(r".*", [(r"/demo/([^/]*)", DemoHandler, dependencies)])
        return app

    def test_the_declared_status_without_a_reply(self):
        self.assertEqual(self.post("/demo/made"), (201, {"status": 201, "data": {"made": True}}))

    def test_a_reply_sets_the_status_of_its_answer(self):
        self.assertEqual(self.post("/demo/accepted"),
                         (202, {"status": 202, "data": {"queued": True}}))
        # The next request of the same action is not affected by the last one.
        self.assertEqual(self.post("/demo/made")[0], 201)

    def test_a_reply_is_checked_against_the_response_model(self):
        self.assertEqual(self.post("/demo/checked"), (200, {"status": 200, "data": {}}))
