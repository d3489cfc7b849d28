"""services.auth: sign-up, login limits, logout and token checks, called directly.

The routes' tests (tests/routes/test_auth.py) see these over HTTP with the
request field named; here the service's own answers are checked, which name
no field (the routes add it: :func:`indico.routes.actions.naming`).
:class:`ServiceTest` is the base of the other service modules of accounts
and results too.
"""

import shutil
import tempfile
import unittest
import uuid

from indico import error
from indico.db import open_database
from indico.services import open_services
from indico.services.auth import INVALID_CREDENTIALS
from tests.harness import CPU_EXECUTOR, FakeClock, shared_pool, test_config

ADDRESS = "192.0.2.1"
PASSWORD = "correct horse"


class ServiceTest(unittest.IsolatedAsyncioTestCase):
    """The services on a database of their own, opened as the server opens them.

    ``self.services`` come from :func:`indico.services.open_services` (the run's
    executor and pool, no job runner) on :func:`indico.db.open_database`;
    ``self.clock`` is the :class:`FakeClock` of the session store and the rate
    limits. Subclasses may set ``settings`` (Config overrides).
    """

    settings = {}

    async def asyncSetUp(self):
        self.clock = FakeClock()
        name = f"test_{uuid.uuid4().hex[:20]}"
        data_dir = tempfile.mkdtemp(prefix="indico-services-")
        self.addCleanup(shutil.rmtree, data_dir, True)
        self.config = test_config(database=name, data_dir=data_dir, db_timeout=30.0,
                                  **self.settings)
        database = await self.enterAsyncContext(open_database(self.config))
        self.addAsyncCleanup(database.client.drop_database, name)
        self.db = database.db
        self.services = await self.enterAsyncContext(open_services(
            self.config, self.db, cpu_executor=CPU_EXECUTOR, pool=shared_pool(),
            run_jobs=False, clock=self.clock))

    async def signup(self, email="ada@example.com", password=PASSWORD, name="Ada"):
        """Create an account through the service; return its NewSession."""
        return await self.services.auth.signup(email, password, name, ADDRESS)

    async def count(self, collection, query=None):
        """How many documents of ``collection`` match ``query``."""
        return await self.db[collection].count_documents(query or {})

    def assertServiceError(self, caught, error_class, status, message):
        """Assert the error of ``assertRaises``: its class, status, message and no ``field``.

        A service names no request field: the route that called it adds ``field``.
        Other details (a 429's ``retry_after``) are the service's to give.
        """
        exc = caught.exception
        self.assertIs(type(exc), error_class)
        self.assertEqual(exc.status, status)
        self.assertEqual(exc.message, message)
        self.assertNotIn("field", exc.to_dict())
        return exc


class SignupTest(ServiceTest):

    settings = {"signup_max_per_address": 2}

    async def test_a_taken_email_is_a_conflict_naming_no_field_and_creates_nothing(self):
        first = await self.signup()
        with self.assertRaises(error.Conflict) as caught:
            await self.signup(password="another password", name="Other")
        exc = self.assertServiceError(caught, error.Conflict, 409,
                                      "an account with this email exists")
        self.assertEqual(exc.details, {})
        self.assertEqual(await self.count("users"), 1)
        self.assertEqual(await self.count("sessions"), 1)
        [stored] = await self.db.users.find().to_list()
        self.assertEqual((str(stored["_id"]), stored["name"]), (first.user.id, "Ada"))
        # The first account's password is still the one that logs in.
        opened = await self.services.auth.login("ada@example.com", PASSWORD, ADDRESS)
        self.assertEqual(opened.user.id, first.user.id)

    async def test_a_refused_signup_counts_against_the_address(self):
        await self.signup()
        with self.assertRaises(error.Conflict):
            await self.signup()
        with self.assertRaises(error.TooManyRequests) as caught:
            await self.signup(email="bob@example.com")
        exc = self.assertServiceError(caught, error.TooManyRequests, 429,
                                      "too many sign-ups from this address; try later")
        self.assertEqual(await self.count("users"), 1)
        self.assertGreaterEqual(exc.retry_after, 1)
        self.assertLessEqual(exc.retry_after, self.config.signup_window + 1)
        # Another address has a count of its own; the window's end gives this one back.
        await self.services.auth.signup("carol@example.com", PASSWORD, None, "192.0.2.2")
        self.clock.advance(self.config.signup_window + 1)
        opened = await self.signup(email="bob@example.com")
        self.assertEqual(opened.user.email, "bob@example.com")


class LoginTest(ServiceTest):

    settings = {"login_max_failures": 3, "login_window": 60}

    async def login(self, password, email="ada@example.com"):
        return await self.services.auth.login(email, password, ADDRESS)

    async def wrong(self, password="wrong password", email="ada@example.com"):
        with self.assertRaises(error.Unauthorized) as caught:
            await self.login(password, email)
        self.assertServiceError(caught, error.Unauthorized, 401, INVALID_CREDENTIALS)

    async def test_wrong_passwords_lock_the_account_and_the_right_one_waits_for_the_window(self):
        ada = await self.signup()
        for _ in range(3):
            await self.wrong()
        with self.assertRaises(error.TooManyRequests) as caught:
            await self.login(PASSWORD)
        exc = self.assertServiceError(caught, error.TooManyRequests, 429,
                                      "too many failed logins; try later")
        self.assertTrue(1 <= exc.retry_after <= 61, exc.retry_after)
        self.assertEqual(await self.count("sessions"), 1)  # the sign-up's only
        self.clock.advance(30)
        with self.assertRaises(error.TooManyRequests):
            await self.login(PASSWORD)
        self.clock.advance(31)
        opened = await self.login(PASSWORD)
        self.assertEqual(opened.user.id, ada.user.id)
        self.assertEqual((await self.services.auth.authenticate(opened.token)).id, ada.user.id)

    async def test_an_unknown_email_counts_and_answers_like_a_wrong_password(self):
        for _ in range(3):
            await self.wrong(email="nobody@example.com")
        with self.assertRaises(error.TooManyRequests):
            await self.login(PASSWORD, email="nobody@example.com")

    async def test_the_right_password_forgives_the_failures_before_it(self):
        await self.signup()
        for _ in range(2):
            await self.wrong()
        await self.login(PASSWORD)
        for _ in range(3):  # a fresh count: three more wrong ones before the lock
            await self.wrong()
        with self.assertRaises(error.TooManyRequests):
            await self.login(PASSWORD)


class LogoutTest(ServiceTest):

    async def test_logout_revokes_that_session_and_no_other(self):
        auth = self.services.auth
        ada = await self.signup()
        other = await auth.login("ada@example.com", PASSWORD, ADDRESS)
        # Both read once, so the store's cache holds them when one is revoked.
        self.assertEqual((await auth.authenticate(other.token)).id, ada.user.id)
        self.assertEqual((await auth.authenticate(ada.token)).id, ada.user.id)
        await auth.logout(other.token, ada.user.id)
        with self.assertRaises(error.Unauthorized) as caught:
            await auth.authenticate(other.token)
        exc = self.assertServiceError(caught, error.Unauthorized, 401,
                                      "the token is invalid, expired or revoked")
        self.assertEqual(exc.bearer_error, "invalid_token")
        self.assertEqual(await self.count("sessions"), 1)
        self.assertEqual((await auth.authenticate(ada.token)).id, ada.user.id)

    async def test_a_session_past_its_lifetime_is_refused(self):
        ada = await self.signup()
        self.clock.advance(self.config.session_ttl + 1)
        with self.assertRaises(error.Unauthorized) as caught:
            await self.services.auth.authenticate(ada.token)
        self.assertServiceError(caught, error.Unauthorized, 401,
                                "the token is invalid, expired or revoked")
