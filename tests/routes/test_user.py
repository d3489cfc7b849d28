"""user/get, update, password, delete: the public shape, the allowlist (OWASP API3)."""

import asyncio
import json

from bson import ObjectId

from indico.db.util import now
from indico.optimization import Objective
from tests.harness import ServerTest

PASSWORD = "correct horse"


class UserTest(ServerTest):

    def setUp(self):
        super().setUp()
        self.token = self.signup(email="ada@example.com", password=PASSWORD, name="Ada")

    def test_get_shows_the_public_shape_only(self):
        status, body = self.post("/user/get", token=self.token)
        self.assertEqual(status, 200)
        user = body["data"]["user"]
        self.assertEqual(set(user), {"id", "email", "name", "created", "preferences"})
        [stored] = self.find("users")
        self.assertEqual(user["id"], str(stored["_id"]))
        self.assertEqual(user["preferences"], {"default_objective": None,
                                               "risk_free_rate": None, "currency": None})
        self.assertNotIn("argon2", str(body))

    def test_update_allowed_fields(self):
        status, body = self.post("/user/update", {"update_user": {
            "name": "Ada Lovelace", "email": "Countess@Example.com",
            "preferences": {"default_objective": "min_volatility", "currency": "EUR"}}},
            token=self.token)
        self.assertEqual(status, 200, body)
        user = body["data"]["user"]
        self.assertEqual((user["name"], user["email"]), ("Ada Lovelace", "countess@example.com"))
        self.assertEqual(user["preferences"]["default_objective"], "min_volatility")
        [stored] = self.find("users")
        self.assertEqual(stored["preferences"], {"default_objective": "min_volatility",
                                                 "currency": "EUR"})
        status, body = self.post("/auth/login", {"email": "countess@example.com",
                                                 "password": PASSWORD})
        self.assertEqual(status, 200)

    def test_mass_assignment_is_refused_and_nothing_changes(self):
        user_id = str(self.find("users")[0]["_id"])
        attempts = [
            ({"update_user": {"role": "admin"}}, "update_user.role"),
            ({"update_user": {"_id": str(ObjectId())}}, "update_user._id"),
            ({"update_user": {"id": user_id}}, "update_user.id"),
            ({"update_user": {"password_hash": "$argon2id$x"}}, "update_user.password_hash"),
            ({"update_user": {"$set": {"role": "admin"}}}, "update_user.$set"),
            ({"update_user": {"name": "ok", "preferences.theme": "x"}},
             "update_user.preferences.theme"),
            ({"update_user": {"created": "2000-01-01"}}, "update_user.created"),
            ({"update_user": {"preferences": {"admin": True}}}, "update_user.preferences.admin"),
            ({"update_user": {"name": {"$gt": ""}}}, "update_user.name"),
            ({"update_user": {}}, "update_user"),
            ({"update_user": {"name": None}}, "update_user.name"),
            ({"update_user": {"name": "   "}}, "update_user.name"),
            ({"update_user": {"name": " " + "x" * 100}}, "update_user.name"),
            ({"update_user": {"email": None}}, "update_user.email"),
            ({"update_user": "name=x"}, "update_user"),
            ({"name": "top level"}, "update_user"),
            ({"update_user": {"preferences": {"risk_free_rate": 5}}},
             "update_user.preferences.risk_free_rate"),
        ]
        before = self.snapshot("users", "sessions")
        for body, field in attempts:
            with self.subTest(body=body):
                error = self.assertError(self.post("/user/update", body, token=self.token),
                                         400, "ValidationError")
                self.assertEqual(error["field"], field)
        self.assertEqual(self.snapshot("users", "sessions"), before)

    def update(self, fields, token=None):
        return self.post("/user/update", {"update_user": fields}, token=token or self.token)

    def stored_preferences(self):
        [stored] = self.find("users")
        return stored["preferences"]

    def test_preferences_are_updated_key_by_key(self):
        status, body = self.update({"preferences": {"currency": "EUR",
                                                    "default_objective": "min_volatility"}})
        self.assertEqual(status, 200, body)
        status, body = self.update({"preferences": {"risk_free_rate": 0.02}})
        self.assertEqual(status, 200, body)
        expected = {"currency": "EUR", "default_objective": "min_volatility",
                    "risk_free_rate": 0.02}
        self.assertEqual(body["data"]["user"]["preferences"], expected)
        self.assertEqual(self.stored_preferences(), expected)
        status, body = self.update({"name": "Countess", "preferences": {}})
        self.assertEqual((status, body["data"]["user"]["preferences"]), (200, expected))

    def test_a_preference_set_to_null_is_cleared(self):
        self.update({"preferences": {"currency": "EUR", "risk_free_rate": 0.02}})
        status, body = self.update({"preferences": {"currency": None,
                                                    "default_objective": "max_return"}})
        self.assertError((status, body), 400, "ValidationError",
                         "update_user.preferences.default_objective")
        self.assertEqual(self.stored_preferences(), {"currency": "EUR", "risk_free_rate": 0.02})
        status, body = self.update({"preferences": {"currency": None,
                                                    "default_objective": "hrp"}})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["data"]["user"]["preferences"],
                         {"currency": None, "default_objective": "hrp",
                          "risk_free_rate": 0.02})
        self.assertEqual(self.stored_preferences(), {"default_objective": "hrp",
                                                     "risk_free_rate": 0.02})
        status, body = self.update({"preferences": {"currency": None, "risk_free_rate": None,
                                                    "default_objective": None}})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.stored_preferences(), {})

    def test_every_objective_of_optimize_is_a_valid_default(self):
        for objective in Objective:
            status, body = self.update({"preferences": {"default_objective": objective.value}})
            self.assertEqual(status, 200, body)
            self.assertEqual(body["data"]["user"]["preferences"]["default_objective"],
                             objective.value)
            self.assertEqual(self.stored_preferences(), {"default_objective": objective.value})

    def test_an_unknown_preference_is_400_and_changes_nothing(self):
        self.update({"preferences": {"currency": "EUR"}})
        before = self.snapshot("users")
        error = self.assertError(self.update({"preferences": {"risk_free_rate": 0.02,
                                                              "theme": "dark"}}),
                                 400, "ValidationError", "unknown field")
        self.assertEqual(error["field"], "update_user.preferences.theme")
        self.assertEqual(self.snapshot("users"), before)

    def test_concurrent_updates_of_different_preferences_all_count(self):
        other = self.post("/auth/login", {"email": "ada@example.com",
                                          "password": PASSWORD})[1]["data"]["token"]

        async def both():
            return await asyncio.gather(*(self.http_client.fetch(
                self.get_url("/user/update"), method="POST", raise_error=False,
                body=json.dumps({"update_user": {"preferences": preferences}}),
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {token}"})
                for token, preferences in ((self.token, {"currency": "EUR"}),
                                           (other, {"risk_free_rate": 0.03}))))
        self.assertEqual([response.code for response in self.io_loop.run_sync(both)],
                         [200, 200])
        self.assertEqual(self.stored_preferences(), {"currency": "EUR", "risk_free_rate": 0.03})

    def test_email_taken_by_another_user_is_409(self):
        self.signup(email="bob@example.com")
        before = self.snapshot("users")
        error = self.assertError(self.post("/user/update", {"update_user": {
            "email": "BOB@example.com", "name": "Bob?"}}, token=self.token), 409, "Conflict")
        self.assertEqual(error["field"], "email")
        self.assertEqual(self.snapshot("users"), before)

    def test_password_change_revokes_other_sessions(self):
        status, body = self.post("/auth/login", {"email": "ada@example.com", "password": PASSWORD})
        other = body["data"]["token"]
        status, body = self.post("/user/password", {"current_password": PASSWORD,
                                                    "new_password": "battery staple"},
                                 token=self.token)
        self.assertEqual((status, body), (200, {"status": 200, "data": {}}))
        self.assertEqual(self.post("/auth/check", token=self.token)[0], 200)
        self.assertError(self.post("/auth/check", token=other), 401, "Unauthorized")
        self.assertError(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": PASSWORD}), 401, "Unauthorized")
        self.assertEqual(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": "battery staple"})[0], 200)

    def test_password_change_needs_the_current_password(self):
        before = self.snapshot("users", "sessions")
        error = self.assertError(self.post("/user/password", {
            "current_password": "wrong password", "new_password": "battery staple"},
            token=self.token), 403, "Forbidden", "password is wrong")
        self.assertEqual(error["field"], "current_password")
        self.assertError(self.post("/user/password", {
            "current_password": PASSWORD, "new_password": "short"}, token=self.token),
            400, "ValidationError", "new_password")
        self.assertEqual(self.snapshot("users", "sessions"), before)

    def test_a_password_older_than_the_length_rule_can_still_be_confirmed(self):
        import argon2
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.io_loop.run_sync(lambda: self.db.users.update_one(
            {}, {"$set": {"password_hash": hasher.hash("short")}}))
        error = self.assertError(self.post("/user/password", {
            "current_password": "", "new_password": "battery staple"}, token=self.token),
            400, "ValidationError", "at least 1")
        self.assertEqual(error["field"], "current_password")
        status, body = self.post("/user/password", {"current_password": "short",
                                                    "new_password": "battery staple"},
                                 token=self.token)
        self.assertEqual((status, body), (200, {"status": 200, "data": {}}))
        self.io_loop.run_sync(lambda: self.db.users.update_one(
            {}, {"$set": {"password_hash": hasher.hash("tiny")}}))
        status, body = self.post("/user/delete", {"password": "tiny"}, token=self.token)
        self.assertEqual((status, body), (200, {"status": 200, "data": {}}))

    def test_delete_needs_the_password_then_removes_everything(self):
        user_id = str(self.find("users")[0]["_id"])
        self.io_loop.run_sync(lambda: self.db.jobs.insert_many([
            {"owner": user_id, "created": now(), "status": "done"},
            {"owner": str(ObjectId()), "created": now(), "status": "done"}]))
        before = self.snapshot("users", "sessions", "jobs")
        error = self.assertError(self.post("/user/delete", {"password": "wrong password"},
                                           token=self.token), 403, "Forbidden",
                                 "the password is wrong")
        self.assertEqual(error["field"], "password")
        self.assertError(self.post("/user/delete", {}, token=self.token), 400, "ValidationError",
                         "password")
        self.assertEqual(self.snapshot("users", "sessions", "jobs"), before)
        status, body = self.post("/user/delete", {"password": PASSWORD}, token=self.token)
        self.assertEqual((status, body), (200, {"status": 200, "data": {}}))
        self.assertEqual(self.find("users"), [])
        self.assertEqual(self.find("sessions"), [])
        self.assertEqual([job["owner"] == user_id for job in self.find("jobs")], [False])
        self.assertError(self.post("/user/get", token=self.token), 401, "Unauthorized")

    def test_actions_that_read_the_account_see_it_gone(self):
        # Deleted behind indico's back (user/delete also deletes the sessions).
        self.io_loop.run_sync(lambda: self.db.users.delete_many({}))
        self.assertError(self.post("/user/password", {"current_password": PASSWORD,
                                                      "new_password": "battery staple"},
                                   token=self.token), 401, "Unauthorized", "no longer exists")
        self.assertError(self.post("/user/update", {"update_user": {"name": "x"}},
                                   token=self.token), 401, "Unauthorized", "no longer exists")

    def test_profile_changes_reach_every_session(self):
        status, body = self.post("/auth/login", {"email": "ada@example.com", "password": PASSWORD})
        other = body["data"]["token"]
        self.post("/user/update", {"update_user": {"name": "Countess"}}, token=self.token)
        status, body = self.post("/auth/check", token=other)
        self.assertEqual(body["data"]["user"]["name"], "Countess")
        [stored] = self.find("users")
        for session in self.find("sessions"):  # no copy of the user to keep up to date
            self.assertEqual(set(session), {"_id", "user_id", "created", "expires"})
            self.assertEqual(session["user_id"], str(stored["_id"]))

    def test_rehash_on_login_when_parameters_change(self):
        import argon2
        old = argon2.PasswordHasher(time_cost=1, memory_cost=16, parallelism=1)
        self.io_loop.run_sync(lambda: self.db.users.update_one(
            {}, {"$set": {"password_hash": old.hash(PASSWORD)}}))
        self.assertEqual(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": PASSWORD})[0], 200)
        [stored] = self.find("users")
        self.assertIn("m=8,t=1,p=1", stored["password_hash"])
        self.assertEqual(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": PASSWORD})[0], 200)


class ConcurrentRequestsTest(ServerTest):
    """Concurrent requests share database commands and still get their own answers."""

    settings = {"session_cache": 0}

    def post_together(self, calls):
        """Send ``(route, body, token)`` calls at once; return ``[(status, body)]`` in order."""
        async def send():
            return await asyncio.gather(*(self.http_client.fetch(
                self.get_url(route), method="POST", body=json.dumps(body), raise_error=False,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
                for route, body, token in calls))
        return [(response.code, json.loads(response.body))
                for response in self.io_loop.run_sync(send)]

    def test_concurrent_checks_each_get_their_own_user(self):
        tokens = [self.signup(email=f"user{number}@example.com") for number in range(10)]
        self.counter.names.clear()
        answers = self.post_together([("/auth/check", {}, token) for token in tokens])
        self.assertEqual([(status, body["data"]["user"]["email"]) for status, body in answers],
                         [(200, f"user{number}@example.com") for number in range(10)])
        # How many commands they share depends on when the requests arrive; the
        # Batcher's own tests (tests/db/test_batch.py) pin that down.

    def test_concurrent_updates_one_email_taken_once(self):
        tokens = [self.signup(email=f"user{number}@example.com") for number in range(3)]
        before = self.snapshot("sessions")
        answers = self.post_together(
            [("/user/update", {"update_user": {"email": "same@example.com"}}, tokens[0]),
             ("/user/update", {"update_user": {"email": "same@example.com"}}, tokens[1]),
             ("/user/update", {"update_user": {"name": "Other"}}, tokens[2])])
        self.assertEqual(sorted(status for status, _ in answers[:2]), [200, 409])
        winner, loser = sorted(answers[:2], key=lambda answer: answer[0])
        self.assertEqual(winner[1]["data"]["user"]["email"], "same@example.com")
        self.assertEqual(loser[1]["error"]["type"], "Conflict")
        self.assertEqual(loser[1]["error"]["field"], "email")
        self.assertEqual((answers[2][0], answers[2][1]["data"]["user"]["name"]), (200, "Other"))
        emails = sorted(user["email"] for user in self.find("users"))
        self.assertEqual(emails.count("same@example.com"), 1)
        self.assertEqual(len(emails), 3)
        self.assertEqual(self.snapshot("sessions"), before)
