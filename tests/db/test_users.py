"""The users collection: records with string ids and UTC datetimes, also as nx-27017 stores them."""

import datetime

from indico.db import users
from indico.db.records import Account, User
from indico.db.util import is_embedded
from tests.harness import ServerTest


class UserRecordTest(ServerTest):

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(self.db, *args, **kwargs))

    def assertUtc(self, moment):
        self.assertIsInstance(moment, datetime.datetime)
        self.assertEqual(moment.utcoffset(), datetime.timedelta(0))

    def create(self, email="ada@example.com"):
        return self.run_async(users.create_user, email, "$argon2id$hash", "Ada")

    def test_created_user_is_an_account_with_a_string_id(self):
        account = self.create()
        self.assertIsInstance(account, Account)
        self.assertIsInstance(account.id, str)
        self.assertEqual(len(account.id), 24)
        self.assertEqual((account.email, account.name, account.password_hash),
                         ("ada@example.com", "Ada", "$argon2id$hash"))
        self.assertEqual((account.preferences, account.password_version), ({}, 0))
        self.assertUtc(account.created)
        self.assertEqual(account.updated, account.created)
        [stored] = self.find("users")
        self.assertEqual(str(stored["_id"]), account.id)  # an ObjectId in the database
        self.assertEqual(self.run_async(users.get_user, account.id), account)
        self.assertEqual(self.run_async(users.get_user_by_email, "ada@example.com"), account)

    def test_public_users_have_no_hash_and_unknown_ids_are_none(self):
        account = self.create()
        found = self.run_async(users.get_public_users,
                               [account.id, "not an id", "0" * 24, account.id])
        self.assertEqual(found[1:3], [None, None])
        self.assertEqual(found[0], found[3])
        self.assertIs(type(found[0]), User)
        self.assertFalse(hasattr(found[0], "password_hash"))
        self.assertEqual(found[0].id, account.id)
        self.assertIsNone(self.run_async(users.get_user, "not an id"))
        self.assertEqual(self.run_async(users.get_public_users, ["nope"]), [None])

    def test_a_profile_change_stored_by_set_reads_back_as_a_datetime(self):
        """``updated`` is written by ``$set``: nx-27017 stores it as a string."""
        account = self.create()
        later = account.created + datetime.timedelta(seconds=5)
        self.assertTrue(self.run_async(users.update_user, account.id,
                                       {"name": "Countess", "preferences": {"currency": "EUR"}},
                                       lambda: later))
        self.run_async(users.set_password, account.id, "$argon2id$new", lambda: later)
        [stored] = self.find("users")
        embedded = self.io_loop.run_sync(lambda: is_embedded(self.db))
        self.assertIsInstance(stored["updated"], str if embedded else datetime.datetime)
        read = self.run_async(users.get_user, account.id)
        self.assertUtc(read.updated)
        self.assertEqual(read.updated, later)
        self.assertEqual(read.created, account.created)
        self.assertEqual((read.name, read.preferences, read.password_hash, read.password_version),
                         ("Countess", {"currency": "EUR"}, "$argon2id$new", 1))
        [public] = self.run_async(users.get_public_users, [account.id])
        self.assertEqual(public.updated, later)

    def test_writes_take_string_ids(self):
        account = self.create()
        other = self.create("bob@example.com")
        failures = self.run_async(users.update_users, [(account.id, {"name": "A"}),
                                                        (other.id, {"email": "ada@example.com"})])
        self.assertIsNone(failures[0])
        self.assertEqual(type(failures[1]).__name__, "DuplicateKeyError")
        self.assertFalse(self.run_async(users.update_user, "not an id", {"name": "X"}))
        self.assertEqual(self.run_async(users.delete_user, "not an id"), 0)
        self.assertEqual(self.run_async(users.delete_user, account.id), 1)
        self.assertIsNone(self.run_async(users.get_user, account.id))
