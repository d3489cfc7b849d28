"""Brute-force limits under concurrency and on every path that checks a password.

Each limit is counted before the work it guards (increment first, compare the
returned count), so requests sent at the same moment cannot all pass a check
that reads the counter before any of them has written it. The tests hold every
password check at a gate until all the requests of a burst have either been
answered or reached the gate, so the burst is as concurrent as it can be
whatever the machine's speed, and count the checks with a real
:class:`~indico.services.passwords.Passwords` subclass given to ``open_services``.
"""

import asyncio
import json

from tornado.httpclient import AsyncHTTPClient

from indico.services.passwords import Passwords
from tests.harness import CPU_EXECUTOR, ServerTest

PASSWORD = "correct horse"
BURST = 30
# Generous: a burst takes well under a second; a slow, shared machine may take more.
BURST_DEADLINE = 60.0


class GatedPasswords(Passwords):
    """Passwords that count their work and hold it at ``gate`` while the gate is closed."""

    def __init__(self, config, executor):
        super().__init__(config, executor)
        self.verifications = 0
        self.hashes = 0
        self.waiting = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def _hold(self) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1

    async def verify(self, password_hash, password):
        """Count the verification, wait at the gate, then verify for real."""
        self.verifications += 1
        await self._hold()
        return await super().verify(password_hash, password)

    async def hash(self, password):
        """Count the hash, wait at the gate, then hash for real."""
        self.hashes += 1
        await self._hold()
        return await super().hash(password)


class RateLimitTest(ServerTest):
    """The application with :class:`GatedPasswords`; concurrent bursts of real requests."""

    def service_options(self):
        self.passwords = GatedPasswords(self.config, CPU_EXECUTOR)
        return {**super().service_options(), "passwords": self.passwords}

    def get_http_client(self):
        # The default client sends at most 10 requests at a time.
        return AsyncHTTPClient(force_instance=True, max_clients=2 * BURST)

    def burst(self, calls):
        """Send ``(url, route, body, token)`` calls at once; return ``[(status, body, headers)]``.

        The password gate is closed until every request is either answered or
        waiting at it, then opened.
        """
        async def send():
            self.passwords.gate.clear()
            futures = [asyncio.ensure_future(self.http_client.fetch(
                (url or self.get_url("")) + route, method="POST", body=json.dumps(body),
                raise_error=False, request_timeout=BURST_DEADLINE,
                headers={"Content-Type": "application/json",
                         **({"Authorization": f"Bearer {token}"} if token else {})}))
                for url, route, body, token in calls]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + BURST_DEADLINE
            while sum(future.done() for future in futures) + self.passwords.waiting < len(calls):
                self.assertLess(loop.time(), deadline, "the burst never settled")
                await asyncio.sleep(0.01)
            self.passwords.gate.set()
            return await asyncio.gather(*futures)
        return [(response.code, json.loads(response.body), response.headers)
                for response in self.io_loop.run_sync(send, timeout=2 * BURST_DEADLINE)]

    def assertLimited(self, answers, passed_status, passed_type, limit):
        """At most ``limit`` answers are ``passed_status``; all others are 429s with Retry-After."""
        passed = [body for status, body, _ in answers if status == passed_status]
        self.assertLessEqual(len(passed), limit)
        self.assertGreaterEqual(len(passed), 1)
        for body in passed:
            self.assertEqual(body["error"]["type"], passed_type, body)
        for status, body, headers in answers:
            if status == passed_status:
                continue
            self.assertEqual(status, 429, body)
            self.assertEqual(body["status"], 429)
            self.assertEqual(body["error"]["type"], "TooManyRequests")
            retry_after = int(headers["Retry-After"])
            self.assertGreaterEqual(retry_after, 1)
            self.assertEqual(body["error"]["retry_after"], retry_after)
        return passed

    def count_of(self, key):
        """The stored count of rate-limit counter ``key`` (0 when there is none)."""
        found = [doc["count"] for doc in self.find("rate_limits", {"_id": key})]
        return found[0] if found else 0


class ConcurrentLoginTest(RateLimitTest):

    settings = {"login_max_failures": 5, "login_address_max_failures": 1000}

    def test_concurrent_wrong_passwords_get_at_most_the_limit_of_checks(self):
        self.signup(email="ada@example.com", password=PASSWORD)
        self.passwords.verifications = 0
        answers = self.burst([(None, "/auth/login", {"email": "ada@example.com",
                                                     "password": f"wrong password {number}"}, None)
                              for number in range(BURST)])
        passed = self.assertLimited(answers, 401, "Unauthorized", 5)
        self.assertEqual(len(passed), 5)
        self.assertEqual(self.passwords.verifications, 5)
        for body in passed:
            self.assertEqual(body["error"]["message"], "email or password is wrong")
        self.assertEqual(len(self.find("sessions")), 1)  # the sign-up's only

    def test_the_limit_holds_across_processes(self):
        self.signup(email="ada@example.com", password=PASSWORD)
        # The second server runs with the default limit, 5, the same as this one's.
        base = self.start_second_server(self.data_dir)
        self.passwords.verifications = 0
        answers = self.burst([(base if number % 2 else None, "/auth/login",
                               {"email": "ada@example.com",
                                "password": f"wrong password {number}"}, None)
                              for number in range(BURST)])
        passed = self.assertLimited(answers, 401, "Unauthorized", 5)
        self.assertEqual(len(passed), 5)
        self.assertLessEqual(self.passwords.verifications, 5)
        self.assertGreaterEqual(self.count_of("login:account:ada@example.com"), 5)


class ConcurrentAddressTest(RateLimitTest):

    settings = {"login_max_failures": 1000, "login_address_max_failures": 4}

    def test_concurrent_logins_from_one_address_get_at_most_its_limit(self):
        answers = self.burst([(None, "/auth/login", {"email": f"user{number}@example.com",
                                                     "password": PASSWORD}, None)
                              for number in range(BURST)])
        self.assertEqual(len(self.assertLimited(answers, 401, "Unauthorized", 4)), 4)
        self.assertEqual(self.passwords.verifications, 4)


class ConcurrentSignupTest(RateLimitTest):

    settings = {"signup_max_per_address": 3}

    def test_concurrent_signups_from_one_address_create_at_most_the_limit(self):
        answers = self.burst([(None, "/auth/signup", {"email": f"user{number}@example.com",
                                                      "password": PASSWORD}, None)
                              for number in range(BURST)])
        created = [body for status, body, _ in answers if status == 201]
        self.assertEqual(len(created), 3)
        refused = [(status, body, headers) for status, body, headers in answers if status != 201]
        self.assertEqual(len(refused), BURST - 3)
        for status, body, headers in refused:
            self.assertEqual((status, body["error"]["type"]), (429, "TooManyRequests"))
            self.assertIn("too many sign-ups", body["error"]["message"])
            self.assertGreaterEqual(int(headers["Retry-After"]), 1)
        self.assertEqual(len(self.find("users")), 3)
        self.assertEqual(self.passwords.hashes, 3)

    def test_a_refused_signup_of_a_taken_email_counts(self):
        self.signup(email="a@example.com")
        for _ in range(2):
            self.assertError(self.post("/auth/signup", {"email": "a@example.com",
                                                        "password": PASSWORD}),
                             409, "Conflict", "exists")
        self.assertError(self.post("/auth/signup", {"email": "b@example.com",
                                                    "password": PASSWORD}),
                         429, "TooManyRequests", "too many sign-ups")
        self.assertEqual(len(self.find("users")), 1)


class LoginCountersTest(RateLimitTest):
    """What a success does to the counters."""

    settings = {"login_max_failures": 3, "login_address_max_failures": 4}

    def login(self, password=PASSWORD, email="ada@example.com"):
        return self.post("/auth/login", {"email": email, "password": password})

    def test_a_success_resets_the_account_and_gives_the_address_its_attempt_back(self):
        self.signup(email="ada@example.com", password=PASSWORD)
        self.assertError(self.login("wrong password"), 401, "Unauthorized")
        self.assertError(self.login("wrong password"), 401, "Unauthorized")
        self.assertEqual(self.count_of("login:address:127.0.0.1"), 2)
        self.assertEqual(self.login()[0], 200)
        self.assertEqual(self.count_of("login:account:ada@example.com"), 0)
        self.assertEqual(self.count_of("login:address:127.0.0.1"), 2)
        for _ in range(10):  # successes alone never lock an address out
            self.assertEqual(self.login()[0], 200)
        self.assertEqual(self.count_of("login:address:127.0.0.1"), 2)
        self.assertError(self.login("wrong password", "bob@example.com"), 401, "Unauthorized")
        self.assertError(self.login("wrong password", "eve@example.com"), 401, "Unauthorized")
        self.assertError(self.login(), 429, "TooManyRequests", "too many failed logins")

    def test_a_refused_attempt_counts_but_the_window_does_not_move(self):
        self.signup(email="ada@example.com", password=PASSWORD)
        for _ in range(3):
            self.assertError(self.login("wrong password"), 401, "Unauthorized")
        [before] = self.find("rate_limits", {"_id": "login:account:ada@example.com"})
        verifications = self.passwords.verifications
        for _ in range(3):
            self.assertError(self.login(), 429, "TooManyRequests", "too many failed logins")
        self.assertEqual(self.passwords.verifications, verifications)
        [after] = self.find("rate_limits", {"_id": "login:account:ada@example.com"})
        self.assertEqual(after["expires"], before["expires"])
        self.assertEqual(after["count"], 6)

    def test_a_new_window_opens_once_the_last_one_has_passed(self):
        """The application's clock is moved past the window: no waiting on the real one."""
        self.signup(email="ada@example.com", password=PASSWORD)
        for _ in range(3):
            self.login("wrong password")
        # Ten seconds before the window ends (nx-27017 compares dates to the second).
        self.clock.advance(self.config.login_window - 10)
        status, body, response = self.request(
            "POST", "/auth/login", {"email": "ada@example.com", "password": PASSWORD})
        self.assertError((status, body), 429, "TooManyRequests")
        self.assertLessEqual(int(response.headers["Retry-After"]), 11)  # its last seconds
        self.clock.advance(11)
        self.assertEqual(self.login()[0], 200)
        self.assertError(self.login("wrong password"), 401, "Unauthorized")
        [counter] = self.find("rate_limits", {"_id": "login:account:ada@example.com"})
        self.assertEqual(counter["count"], 1)
        self.assertGreater(counter["expires"], self.clock.now())


class TokenPasswordGuessingTest(RateLimitTest):
    """user/password and user/delete count wrong passwords against the login limit."""

    settings = {"login_max_failures": 3, "login_address_max_failures": 1000}

    def setUp(self):
        super().setUp()
        self.token = self.signup(email="ada@example.com", password=PASSWORD)

    def change(self, current, new="battery staple"):
        return self.post("/user/password", {"current_password": current, "new_password": new},
                         token=self.token)

    def delete(self, password):
        return self.post("/user/delete", {"password": password}, token=self.token)

    def assertThrottled(self, answer):
        error = self.assertError(answer, 429, "TooManyRequests", "too many wrong passwords")
        self.assertGreaterEqual(error["retry_after"], 1)
        return error

    def test_wrong_current_passwords_on_user_password_reach_429(self):
        for number in range(3):
            error = self.assertError(self.change(f"wrong password {number}"), 403, "Forbidden",
                                     "password is wrong")
            self.assertEqual(error["field"], "current_password")
        before = self.snapshot("users", "sessions")
        verifications = self.passwords.verifications
        status, body, response = self.request(
            "POST", "/user/password", {"current_password": PASSWORD,
                                       "new_password": "battery staple"}, token=self.token)
        self.assertThrottled((status, body))
        self.assertEqual(int(response.headers["Retry-After"]), body["error"]["retry_after"])
        self.assertEqual(self.passwords.verifications, verifications)
        self.assertEqual(self.snapshot("users", "sessions"), before)
        # The same account limit as login's.
        self.assertError(self.post("/auth/login", {"email": "ada@example.com",
                                                   "password": PASSWORD}),
                         429, "TooManyRequests", "too many failed logins")

    def test_wrong_passwords_on_user_delete_reach_429(self):
        for number in range(3):
            error = self.assertError(self.delete(f"wrong password {number}"), 403, "Forbidden",
                                     "password is wrong")
            self.assertEqual(error["field"], "password")
        self.assertThrottled(self.delete(PASSWORD))
        self.assertEqual(len(self.find("users")), 1)

    def test_a_login_lockout_covers_the_token_actions(self):
        for number in range(3):
            self.assertError(self.post("/auth/login", {"email": "ada@example.com",
                                                       "password": f"wrong password {number}"}),
                             401, "Unauthorized")
        verifications = self.passwords.verifications
        self.assertThrottled(self.change(PASSWORD))
        self.assertThrottled(self.delete(PASSWORD))
        self.assertEqual(self.passwords.verifications, verifications)
        self.assertEqual(len(self.find("users")), 1)

    def test_concurrent_guesses_with_a_token_get_at_most_the_limit_of_checks(self):
        self.passwords.verifications = 0
        answers = self.burst(
            [(None, "/user/password", {"current_password": f"wrong password {number}",
                                       "new_password": "battery staple"}, self.token)
             for number in range(BURST // 2)]
            + [(None, "/user/delete", {"password": f"wrong password {number}"}, self.token)
               for number in range(BURST // 2)])
        self.assertEqual(len(self.assertLimited(answers, 403, "Forbidden", 3)), 3)
        self.assertEqual(self.passwords.verifications, 3)

    def test_a_right_password_resets_the_counters(self):
        for number in range(2):
            self.assertError(self.change(f"wrong password {number}"), 403, "Forbidden")
        self.assertEqual(self.change(PASSWORD)[0], 200)
        self.assertEqual(self.count_of("login:account:ada@example.com"), 0)
        for number in range(2):
            self.assertError(self.change(f"wrong password {number}"), 403, "Forbidden")
        self.assertEqual(self.change("battery staple", PASSWORD)[0], 200)

    def test_a_new_email_does_not_reset_the_count(self):
        """The token's holder cannot buy more guesses by changing the account's email."""
        for number in range(3):
            self.assertError(self.change(f"wrong password {number}"), 403, "Forbidden")
        status, body = self.post("/user/update", {"update_user": {"email": "new@example.com"}},
                                 token=self.token)
        self.assertEqual(status, 200, body)
        self.assertThrottled(self.change(PASSWORD))
        self.assertThrottled(self.delete(PASSWORD))
