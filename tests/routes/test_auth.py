"""auth/signup, login, logout, check: sessions, injection, brute force (OWASP API2, API4)."""

import datetime
import hashlib
import json
import urllib.error
import urllib.request

from tornado.httpclient import HTTPRequest

from indico.db.records import User
from indico.db.util import now
from indico.services.passwords import Passwords
from indico.services.sessions import SessionStore, sessions_mark
from indico.utils.marks import ChangeMarks
from tests.harness import CPU_EXECUTOR, ServerTest

PASSWORD = "correct horse"


class SignupTest(ServerTest):

    def test_signup_returns_user_token_and_expiry(self):
        status, body = self.post("/auth/signup", {"email": "  Ada@Example.COM ",
                                                  "password": PASSWORD, "name": " Ada "})
        self.assertEqual(status, 201)
        self.assertEqual(body["status"], 201)
        data = body["data"]
        self.assertEqual(set(data), {"user", "token", "expires"})
        self.assertEqual(set(data["user"]), {"id", "email", "name", "created", "preferences"})
        self.assertEqual(data["user"]["email"], "ada@example.com")
        self.assertEqual(data["user"]["name"], "Ada")
        self.assertGreaterEqual(len(data["token"]), 43)  # 32 random bytes, base64url
        expires = datetime.datetime.fromisoformat(data["expires"])
        self.assertAlmostEqual((expires - now()).total_seconds(), 7 * 24 * 3600, delta=60)

    def test_only_the_token_hash_and_an_argon2id_hash_are_stored(self):
        token = self.signup(password=PASSWORD)
        [session] = self.find("sessions")
        self.assertEqual(session["_id"], hashlib.sha256(token.encode()).hexdigest())
        self.assertNotIn(token, json.dumps(session, default=str))
        [user] = self.find("users")
        self.assertTrue(user["password_hash"].startswith("$argon2id$"))
        self.assertNotIn(PASSWORD, json.dumps(user, default=str))

    def test_duplicate_email_is_409_whatever_the_case(self):
        self.signup(email="ada@example.com")
        before = self.snapshot("users", "sessions")
        error = self.assertError(
            self.post("/auth/signup", {"email": "ADA@example.com", "password": PASSWORD}),
            409, "Conflict", "exists")
        self.assertEqual(error["field"], "email")
        self.assertEqual(self.snapshot("users", "sessions"), before)

    def test_password_rules(self):
        for password, part in (("short", "at least 8"), ("x" * 1025, "at most 1024")):
            with self.subTest(length=len(password)):
                error = self.assertError(
                    self.post("/auth/signup", {"email": "a@example.com", "password": password}),
                    400, "ValidationError", part)
                self.assertEqual(error["field"], "password")
        self.assertEqual(self.find("users"), [])
        status, _ = self.post("/auth/signup", {"email": "a@example.com", "password": "x" * 1024})
        self.assertEqual(status, 201)

    def test_bad_emails_and_types(self):
        for body, field in (({"email": "not-an-email", "password": PASSWORD}, "email"),
                            ({"email": {"$gt": ""}, "password": PASSWORD}, "email"),
                            ({"email": "a@example.com", "password": ["x"]}, "password"),
                            ({"email": "a@example.com", "password": PASSWORD, "name": ""}, "name"),
                            ({"email": "a@example.com", "password": PASSWORD, "role": "admin"},
                             "role")):
            with self.subTest(body=body):
                error = self.assertError(self.post("/auth/signup", body), 400, "ValidationError")
                self.assertEqual(error["field"], field)
        self.assertEqual(self.snapshot("users", "sessions"), {"users": [], "sessions": []})


class LoginTest(ServerTest):

    settings = {"login_max_failures": 3, "login_address_max_failures": 6}

    def setUp(self):
        super().setUp()
        self.signup(email="ada@example.com", password=PASSWORD)

    def login(self, email="ada@example.com", password=PASSWORD, headers=None):
        return self.post("/auth/login", {"email": email, "password": password}, headers=headers)

    def test_login_opens_a_new_session(self):
        status, body = self.login(email=" ADA@example.com")
        self.assertEqual(status, 200)
        self.assertEqual(body["data"]["user"]["email"], "ada@example.com")
        self.assertEqual(len(self.find("sessions")), 2)
        status, body = self.post("/auth/check", token=body["data"]["token"])
        self.assertEqual((status, body["data"]["user"]["email"]), (200, "ada@example.com"))

    def test_unknown_email_and_wrong_password_are_the_same_401(self):
        wrong = self.assertError(self.login(password="wrong password"), 401, "Unauthorized")
        unknown = self.assertError(self.login(email="bob@example.com"), 401, "Unauthorized")
        self.assertEqual(wrong, unknown)
        self.assertEqual(wrong["message"], "email or password is wrong")

    def test_operator_injection_is_a_400_never_a_match(self):
        before = self.snapshot("sessions")
        for body, field in (({"email": {"$gt": ""}, "password": PASSWORD}, "email"),
                            ({"email": "ada@example.com", "password": {"$ne": None}}, "password"),
                            ({"email": {"$regex": ".*"}, "password": {"$gt": ""}}, "email"),
                            ({"email": ["ada@example.com"], "password": PASSWORD}, "email")):
            with self.subTest(body=body):
                error = self.assertError(self.post("/auth/login", body), 400, "ValidationError")
                self.assertEqual(error["field"], field)
        self.assertEqual(self.snapshot("sessions"), before)

    def test_failures_per_account_give_429_with_retry_after_even_for_the_right_password(self):
        for _ in range(3):
            self.assertError(self.login(password="wrong password"), 401, "Unauthorized")
        before = self.snapshot("sessions")
        status, body, response = self.request(
            "POST", "/auth/login", {"email": "ada@example.com", "password": PASSWORD})
        self.assertEqual(status, 429)
        self.assertEqual(body["error"]["type"], "TooManyRequests")
        self.assertIn("too many failed logins", body["error"]["message"])
        retry_after = int(response.headers["Retry-After"])
        self.assertTrue(1 <= retry_after <= self.config.login_window + 1, retry_after)
        self.assertEqual(body["error"]["retry_after"], retry_after)
        self.assertEqual(self.snapshot("sessions"), before)

    def test_a_success_resets_the_account_counter(self):
        for _ in range(2):
            self.login(password="wrong password")
        self.assertEqual(self.login()[0], 200)
        for _ in range(2):
            self.login(password="wrong password")
        self.assertEqual(self.login()[0], 200)

    def test_failures_per_address_cover_many_accounts(self):
        for number in range(6):
            self.assertError(self.login(email=f"user{number}@example.com"), 401, "Unauthorized")
        self.assertError(self.login(), 429, "TooManyRequests")

    def test_x_real_ip_is_ignored_from_an_untrusted_peer(self):
        for number in range(6):
            self.login(email=f"user{number}@example.com", headers={"X-Real-IP": f"10.0.0.{number}"})
        self.assertError(self.login(headers={"X-Real-IP": "10.9.9.9"}), 429, "TooManyRequests")


class TrustedProxyTest(ServerTest):

    settings = {"trusted_proxies": ["127.0.0.1"], "login_address_max_failures": 2,
                "login_max_failures": 10}

    def test_x_real_ip_from_a_trusted_proxy_is_the_client_address(self):
        self.signup(email="ada@example.com", password=PASSWORD)
        for _ in range(2):
            self.post("/auth/login", {"email": "ada@example.com", "password": "wrong one"},
                      headers={"X-Real-IP": "203.0.113.7"})
        self.assertError(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": PASSWORD},
                                   headers={"X-Real-IP": "203.0.113.7"}), 429, "TooManyRequests")
        status, _ = self.post("/auth/login", {"email": "ada@example.com", "password": PASSWORD},
                              headers={"X-Real-IP": "198.51.100.1"})
        self.assertEqual(status, 200)
        # The success from the second address gave its attempt back.
        counts = {doc["_id"]: doc["count"] for doc in self.find("rate_limits")
                  if doc["_id"].startswith("login:address:")}
        self.assertEqual(counts, {"login:address:203.0.113.7": 3,
                                  "login:address:198.51.100.1": 0})


class SignupLimitTest(ServerTest):

    settings = {"signup_max_per_address": 2}

    def test_signup_is_rate_limited_per_address(self):
        self.signup(email="a@example.com")
        self.signup(email="b@example.com")
        status, body, response = self.request(
            "POST", "/auth/signup", {"email": "c@example.com", "password": PASSWORD})
        self.assertEqual(status, 429)
        self.assertIn("too many sign-ups", body["error"]["message"])
        self.assertIn("Retry-After", response.headers)
        self.assertEqual(len(self.find("users")), 2)


class SessionTest(ServerTest):

    def test_logout_revokes_at_once(self):
        token = self.signup()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        status, body = self.post("/auth/logout", token=token)
        self.assertEqual((status, body), (200, {"status": 200, "data": {}}))
        self.assertError(self.post("/auth/check", token=token), 401, "Unauthorized",
                         "invalid, expired or revoked")
        self.assertEqual(self.find("sessions"), [])

    def test_every_authenticated_action_refuses_bad_tokens(self):
        token = self.signup()
        [session] = self.find("sessions")
        session["expires"] = now() - datetime.timedelta(seconds=1)

        async def expire():
            await self.db.sessions.delete_many({})
            await self.db.sessions.insert_one(session)
        self.io_loop.run_sync(expire)
        cases = {
            "expired": {"Authorization": f"Bearer {token}"},
            "missing": {},
            "malformed": {"Authorization": f"Token {token}"},
            "not base64url": {"Authorization": "Bearer " + "!" * 43},
            "unknown": {"Authorization": "Bearer " + "A" * 43},
            "empty": {"Authorization": "Bearer "},
        }
        actions = ["/auth/logout", "/auth/check", "/user/get", "/user/update", "/user/password",
                   "/user/delete"]
        for name, headers in cases.items():
            for route in actions:
                with self.subTest(case=name, route=route):
                    self.assertError(self.post(route, {}, headers=headers), 401, "Unauthorized")

    def test_authentication_happens_before_validation(self):
        error = self.assertError(self.post("/user/update", {"role": "admin"}), 401,
                                 "Unauthorized")
        self.assertIn("Authorization", error["message"])



class SlowHashTest(ServerTest):

    # Costly parameters, so that a hash takes long enough to overlap another request.
    settings = {"argon2_time_cost": 30, "argon2_memory_kib": 65536}

    def test_cpu_work_does_not_block_the_ioloop(self):
        """A slow hash runs in the executor: another request is served meanwhile."""
        order = []

        async def both():
            signup = self.http_client.fetch(HTTPRequest(
                self.get_url("/auth/signup"), method="POST",
                headers={"Content-Type": "application/json"},
                body=json.dumps({"email": "slow@example.com", "password": PASSWORD})))
            signup.add_done_callback(lambda _: order.append("signup"))
            banner = self.http_client.fetch(self.get_url("/"))
            banner.add_done_callback(lambda _: order.append("banner"))
            await signup
            await banner
        self.io_loop.run_sync(both, timeout=60)
        self.assertEqual(order, ["banner", "signup"])


def http(method, url, body, token):
    """A request to another server process: ``(status, parsed body)``."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class SessionCacheOffTest(ServerTest):
    """INDICO_SESSION_CACHE=0: every request reads its session and its user."""

    settings = {"session_cache": 0}

    def test_every_check_reads_the_database(self):
        token = self.signup()
        for _ in range(2):
            self.counter.names.clear()
            self.assertEqual(self.post("/auth/check", token=token)[0], 200)
            self.assertEqual(self.counter.names, ["find", "find"])  # session, user

    def test_a_change_made_outside_indico_counts_at_once(self):
        token = self.signup()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        self.io_loop.run_sync(lambda: self.db.sessions.delete_many({}))
        self.assertError(self.post("/auth/check", token=token), 401, "Unauthorized",
                         "invalid, expired or revoked")


class SessionCacheTest(ServerTest):
    """The cache: no command for a known session, every change by indico at once."""

    settings = {"session_cache": 300.0}

    def test_a_known_session_costs_no_command(self):
        token = self.signup()
        self.counter.names.clear()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        # The session, again after its mark, and the user.
        self.assertEqual(self.counter.names, ["find", "find", "find"])
        self.counter.names.clear()
        status, body = self.post("/auth/check", token=token)
        self.assertEqual((status, body["data"]["user"]["email"]), (200, "ada@example.com"))
        self.assertEqual(self.counter.names, [])

    def test_an_expired_session_is_refused_even_when_cached(self):
        token = self.signup()
        self.post("/auth/check", token=token)
        [user] = self.find("users")
        token = "s" * 43
        # Whole seconds: nx-27017 compares dates to the second.
        expires = (now() + datetime.timedelta(seconds=2)).replace(microsecond=0)
        short = {"_id": hashlib.sha256(token.encode()).hexdigest(), "user_id": str(user["_id"]),
                 "created": now(), "expires": expires}
        self.io_loop.run_sync(lambda: self.db.sessions.insert_one(short))
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        self.counter.names.clear()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        self.assertEqual(self.counter.names, [])  # cached
        self.clock.advance((expires - now()).total_seconds() + 2)
        self.assertError(self.post("/auth/check", token=token), 401, "Unauthorized")

    def test_changes_made_by_a_second_process_count_here_at_once(self):
        first = self.signup(password=PASSWORD)
        second = self.post("/auth/login", {"email": "ada@example.com",
                                           "password": PASSWORD})[1]["data"]["token"]
        third = self.post("/auth/login", {"email": "ada@example.com",
                                          "password": PASSWORD})[1]["data"]["token"]
        base = self.start_second_server(self.data_dir)  # same host: same change marks
        for token in (first, second, third):  # cached here
            self.assertEqual(self.post("/auth/check", token=token)[0], 200)

        def there(route, body, token):
            return http("POST", base + route, body, token)

        self.assertEqual(there("/user/update", {"update_user": {"name": "Countess"}}, first)[0],
                         200)
        self.assertEqual(self.post("/auth/check", token=first)[1]["data"]["user"]["name"],
                         "Countess")
        self.assertEqual(there("/auth/logout", {}, second)[0], 200)
        self.assertError(self.post("/auth/check", token=second), 401, "Unauthorized")
        self.assertEqual(self.post("/auth/check", token=third)[0], 200)
        self.assertEqual(there("/user/password", {"current_password": PASSWORD,
                                                  "new_password": "battery staple"}, first)[0],
                         200)
        self.assertError(self.post("/auth/check", token=third), 401, "Unauthorized")
        self.assertEqual(self.post("/auth/check", token=first)[0], 200)
        self.assertEqual(there("/user/delete", {"password": "battery staple"}, first)[0], 200)
        self.assertError(self.post("/auth/check", token=first), 401, "Unauthorized")


class SessionCacheLifetimeTest(ServerTest):
    """What the marks cannot see (a change made outside indico) counts after the lifetime."""

    settings = {"session_cache": 1.5}

    def test_a_change_made_outside_indico_counts_after_the_lifetime(self):
        token = self.signup()
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)
        self.io_loop.run_sync(lambda: self.db.sessions.delete_many({}))
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)  # still trusted here
        self.clock.advance(1.4)
        self.assertEqual(self.post("/auth/check", token=token)[0], 200)  # still within it
        self.clock.advance(0.2)
        self.assertError(self.post("/auth/check", token=token), 401, "Unauthorized")


class RevokeAfterFirstRead(SessionStore):
    """A store whose first session read is followed by a revocation (another process's)."""

    def __init__(self, *args, revoke, **kwargs):
        super().__init__(*args, **kwargs)
        self.revoke = revoke
        self.reads = []

    async def fetch_sessions(self, keys):
        found = await super().fetch_sessions(keys)
        self.reads.append(keys)
        if len(self.reads) == 1:
            await self.revoke()
        return found


class RevocationDuringAMissTest(ServerTest):
    """A revocation between the two session reads of a cache miss is not cached."""

    settings = {"session_cache": 300.0}

    def service_options(self):
        async def revoke():  # another process logs the token out now
            [user] = await self.db.users.find().to_list()
            await self.db.sessions.delete_many({})
            ChangeMarks(self.config.marks_path).bump(sessions_mark(str(user["_id"])))
        self.store = RevokeAfterFirstRead(
            self.db, ChangeMarks(self.config.marks_path), cache_lifetime=300.0,
            session_ttl=self.config.session_ttl, clock=self.clock, revoke=revoke)
        return {**super().service_options(), "sessions": self.store}

    def test_a_session_revoked_between_the_reads_is_refused(self):
        token = self.signup()
        self.assertError(self.post("/auth/check", token=token), 401, "Unauthorized",
                         "invalid, expired or revoked")
        self.assertEqual(len(self.store.reads), 2)
        self.assertEqual(self.store.cache.sessions, {})


class VerifyThenAct(Passwords):
    """Passwords that run ``during_next_verify`` (once) after the next verification."""

    def __init__(self, config, executor):
        super().__init__(config, executor)
        self.during_next_verify = None

    async def verify(self, password_hash, password):
        """Verify, then run the pending action, as if another request ran meanwhile."""
        ok = await super().verify(password_hash, password)
        action, self.during_next_verify = self.during_next_verify, None
        if action is not None:
            await action()
        return ok


class LoginDuringPasswordChangeTest(ServerTest):
    """A login that checked the old password keeps no session past the change."""

    def service_options(self):
        self.passwords = VerifyThenAct(self.config, CPU_EXECUTOR)
        return {**super().service_options(), "passwords": self.passwords}

    def test_a_login_overlapping_a_password_change_gets_401_and_no_session(self):
        token = self.signup(password=PASSWORD)
        [user] = self.find("users")
        services = self.services
        overlapped = []

        async def change_elsewhere():  # the owner changes the password meanwhile
            overlapped.append(True)
            await services.users.change_password(User.from_document(user), PASSWORD,
                                                 "battery staple", token)
        self.passwords.during_next_verify = change_elsewhere
        self.assertError(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": PASSWORD}),
                         401, "Unauthorized", "email or password is wrong")
        self.assertEqual(overlapped, [True])
        # Only the session of the request that changed the password is left.
        sessions = self.find("sessions")
        self.assertEqual([session["_id"] for session in sessions],
                         [hashlib.sha256(token.encode()).hexdigest()])
        self.assertEqual(self.find("users")[0]["password_version"], 1)
        status, body = self.post("/auth/login", {"email": "ada@example.com",
                                                 "password": "battery staple"})
        self.assertEqual(status, 200, body)
