"""db.records: the decoding of every stored shape of a time, an id and a job event."""

import datetime
import json
import unittest

from bson import ObjectId
from bson.tz_util import utc

from indico.db.records import EPOCH, Account, JobEvent, User, as_datetime, as_epoch, as_id

MOMENT = datetime.datetime(2026, 12, 1, 23, 53, 39, 123000, tzinfo=datetime.UTC)


class DecodingTest(unittest.TestCase):

    def test_every_stored_time_is_an_aware_utc_datetime(self):
        for stored in (MOMENT, MOMENT.replace(tzinfo=utc), MOMENT.replace(tzinfo=None),
                       MOMENT.astimezone(datetime.timezone(datetime.timedelta(hours=2))),
                       MOMENT.timestamp(), "2026-12-01 23:53:39.123000",
                       "2026-12-01T23:53:39.123+00:00"):
            with self.subTest(stored=stored):
                decoded = as_datetime(stored)
                self.assertEqual(decoded, MOMENT)
                self.assertIs(decoded.tzinfo, datetime.UTC)
        self.assertEqual(as_datetime(0), EPOCH)
        self.assertEqual(as_datetime(as_epoch(MOMENT)), MOMENT)
        for bad in (None, True, [1]):
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                as_datetime(bad)
        with self.assertRaises(ValueError):
            as_datetime("yesterday")

    def test_ids_are_strings(self):
        oid = ObjectId()
        self.assertEqual(as_id(oid), str(oid))
        self.assertEqual(as_id("abc"), "abc")
        with self.assertRaises(TypeError):
            as_id(7)

    def test_an_event_pushed_as_json_is_decoded(self):
        stored = {"id": "e1", "event": "done", "at": MOMENT.timestamp()}
        expected = JobEvent("e1", "done", MOMENT)
        self.assertEqual(JobEvent.from_document(stored), expected)
        self.assertEqual(JobEvent.from_document(json.dumps(stored)), expected)
        self.assertEqual(expected.to_document(), stored)

    def test_a_user_record_never_holds_the_hash(self):
        document = {"_id": ObjectId(), "email": "ada@example.com", "name": None,
                    "password_hash": "$argon2id$x", "created": MOMENT}
        user = User.from_document(document)
        self.assertFalse(hasattr(user, "password_hash"))
        self.assertEqual((user.updated, user.preferences, user.password_version), (MOMENT, {}, 0))
        account = Account.from_document(document)
        self.assertEqual(account.password_hash, "$argon2id$x")
        self.assertEqual(account.id, user.id)
