"""services.users: profile updates, password changes and deletion, called directly.

The errors name no request field (the routes add it; tests/routes/test_user.py
checks it over HTTP).
"""

from indico import error
from indico.db import jobs
from tests.services.test_auth import ADDRESS, PASSWORD, ServiceTest

NEW_PASSWORD = "battery staple"


class UpdateTest(ServiceTest):

    async def test_an_email_of_another_account_is_a_conflict_naming_no_field(self):
        await self.signup()
        bob = await self.signup(email="bob@example.com", name="Bob")
        with self.assertRaises(error.Conflict) as caught:
            await self.services.users.update(bob.user, {"email": "ada@example.com",
                                                        "name": "Robert"})
        exc = self.assertServiceError(caught, error.Conflict, 409,
                                      "an account with this email exists")
        self.assertEqual(exc.details, {})
        stored = await self.services.auth.authenticate(bob.token)
        self.assertEqual((stored.email, stored.name), ("bob@example.com", "Bob"))

    async def test_the_answer_is_the_user_as_stored_after_the_change(self):
        ada = await self.signup()
        await self.services.users.update(ada.user, {"preferences": {"currency": "EUR"}})
        updated = await self.services.users.update(
            ada.user, {"email": "countess@example.com", "preferences": {"theme": "dark"}})
        self.assertEqual((updated.id, updated.email, updated.name),
                         (ada.user.id, "countess@example.com", "Ada"))
        self.assertEqual(updated.preferences, {"currency": "EUR", "theme": "dark"})
        self.assertEqual(await self.services.auth.authenticate(ada.token), updated)


class ChangePasswordTest(ServiceTest):

    settings = {"login_max_failures": 2}

    async def test_a_wrong_current_password_is_forbidden_naming_no_field_and_changes_nothing(self):
        users, auth = self.services.users, self.services.auth
        ada = await self.signup()
        other = await auth.login("ada@example.com", PASSWORD, ADDRESS)
        with self.assertRaises(error.Forbidden) as caught:
            await users.change_password(ada.user, "wrong password", NEW_PASSWORD, ada.token)
        exc = self.assertServiceError(caught, error.Forbidden, 403, "the password is wrong")
        self.assertEqual(exc.details, {})
        self.assertEqual((await auth.authenticate(other.token)).id, ada.user.id)
        await auth.login("ada@example.com", PASSWORD, ADDRESS)  # still the password
        with self.assertRaises(error.Unauthorized):
            await auth.login("ada@example.com", NEW_PASSWORD, ADDRESS)

    async def test_wrong_current_passwords_count_toward_the_lockout(self):
        users = self.services.users
        ada = await self.signup()
        for _ in range(2):
            with self.assertRaises(error.Forbidden):
                await users.change_password(ada.user, "wrong password", NEW_PASSWORD, ada.token)
        with self.assertRaises(error.TooManyRequests) as caught:
            await users.change_password(ada.user, PASSWORD, NEW_PASSWORD, ada.token)
        self.assertServiceError(caught, error.TooManyRequests, 429,
                                "too many wrong passwords for this account; try later")
        with self.assertRaises(error.TooManyRequests):  # the login limit is the same count
            await self.services.auth.login("ada@example.com", PASSWORD, ADDRESS)
        self.clock.advance(self.config.login_window + 1)
        await users.change_password(ada.user, PASSWORD, NEW_PASSWORD, ada.token)

    async def test_the_right_one_revokes_the_other_sessions_and_keeps_the_callers(self):
        users, auth = self.services.users, self.services.auth
        ada = await self.signup()
        others = [await auth.login("ada@example.com", PASSWORD, ADDRESS) for _ in range(2)]
        bob = await self.signup(email="bob@example.com")
        for opened in (ada, *others):  # cached before the change
            await auth.authenticate(opened.token)
        await users.change_password(ada.user, PASSWORD, NEW_PASSWORD, ada.token)
        self.assertEqual((await auth.authenticate(ada.token)).id, ada.user.id)
        for opened in others:
            with self.assertRaises(error.Unauthorized):
                await auth.authenticate(opened.token)
        self.assertEqual((await auth.authenticate(bob.token)).id, bob.user.id)
        self.assertEqual(await self.count("sessions"), 2)
        with self.assertRaises(error.Unauthorized):
            await auth.login("ada@example.com", PASSWORD, ADDRESS)
        await auth.login("ada@example.com", NEW_PASSWORD, ADDRESS)


class DeleteTest(ServiceTest):

    async def create_jobs(self, owner, count):
        for _ in range(count):
            self.assertIsNotNone(await jobs.create_job(self.db, owner, {"symbols": ["KO"]}, 5))

    async def test_delete_removes_the_user_its_sessions_and_its_jobs(self):
        auth = self.services.auth
        ada = await self.signup()
        await auth.login("ada@example.com", PASSWORD, ADDRESS)
        bob = await self.signup(email="bob@example.com")
        await self.create_jobs(ada.user.id, 2)
        await self.create_jobs(bob.user.id, 1)
        await auth.authenticate(ada.token)  # cached before the deletion
        await self.services.users.delete(ada.user, PASSWORD)
        with self.assertRaises(error.Unauthorized):
            await auth.authenticate(ada.token)
        self.assertEqual([str(user["_id"]) for user in await self.db.users.find().to_list()],
                         [bob.user.id])
        self.assertEqual(await self.count("sessions"), 1)
        self.assertEqual(await self.count("sessions", {"user_id": bob.user.id}), 1)
        self.assertEqual(await self.count("jobs"), 1)
        self.assertEqual(await self.count("jobs", {"owner": bob.user.id}), 1)
        self.assertEqual((await auth.authenticate(bob.token)).id, bob.user.id)

    async def test_a_wrong_password_is_forbidden_and_deletes_nothing(self):
        ada = await self.signup()
        await self.create_jobs(ada.user.id, 1)
        with self.assertRaises(error.Forbidden) as caught:
            await self.services.users.delete(ada.user, "wrong password")
        self.assertServiceError(caught, error.Forbidden, 403, "the password is wrong")
        self.assertEqual([await self.count(name) for name in ("users", "sessions", "jobs")],
                         [1, 1, 1])
