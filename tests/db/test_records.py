"""db.records: the decoding of every stored shape of a time, an id and a job event."""

import datetime
import json
import math
import unittest

import numpy as np
from bson import ObjectId
from bson.tz_util import utc

from indico.db.records import (
    EPOCH,
    Account,
    JobEvent,
    User,
    as_datetime,
    as_epoch,
    as_id,
    decode_result,
    encode_result,
)

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


class ResultTextTest(unittest.TestCase):
    """A job's result is stored as JSON text: what it reads back as."""

    def test_a_result_reads_back_equal_with_numpy_scalars_as_numbers(self):
        result = {"allocations": {"AAPL": np.float64(0.25), "MSFT": 0.75},
                  "shares": {"AAPL": np.int64(3)}, "leftover": 1.5, "objective": "max_sharpe",
                  "performance": {"dates": ["2021-01-04"], "values": [1.0, 2.5e-17]},
                  "nested": [[1, 2], {"a": None, "b": True}]}
        text = encode_result(result)
        self.assertIsInstance(text, str)
        self.assertEqual(decode_result(text), {**result, "allocations": {"AAPL": 0.25,
                                                                          "MSFT": 0.75},
                                               "shares": {"AAPL": 3}})
        self.assertEqual(json.loads(text)["performance"]["values"], [1.0, 2.5e-17])

    def test_nan_and_infinities_are_written_null_as_the_answers_write_them(self):
        text = encode_result({"sharpe": math.nan, "sortino": math.inf, "low": -math.inf})
        self.assertEqual(json.loads(text), {"sharpe": None, "sortino": None, "low": None})

    def test_text_written_by_the_standard_library_with_nan_still_reads(self):
        decoded = decode_result(json.dumps({"sharpe": math.nan, "max": math.inf, "x": 1}))
        self.assertTrue(math.isnan(decoded["sharpe"]))
        self.assertEqual((decoded["max"], decoded["x"]), (math.inf, 1))

    def test_stored_shapes_other_than_an_object(self):
        self.assertIsNone(decode_result(None))
        self.assertIsNone(decode_result("[1, 2]"))
        self.assertEqual(decode_result({"a": 1}), {"a": 1})
        self.assertIsNone(decode_result(7))
