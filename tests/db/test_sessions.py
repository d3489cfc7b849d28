"""The sessions collection: records with string ids and UTC datetimes."""

import datetime

from indico.db import sessions
from indico.db.records import Session
from indico.db.util import now
from tests.harness import ServerTest


class SessionRecordTest(ServerTest):

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(self.db, *args, **kwargs))

    def test_a_session_reads_back_as_a_record(self):
        moment = now()
        expires = moment + datetime.timedelta(hours=1)
        created = self.run_async(sessions.create_session, "a" * 64, "u" * 24, expires,
                                 lambda: moment)
        self.assertEqual(created, Session("a" * 64, "u" * 24, moment, expires))
        found = self.run_async(sessions.get_sessions, ["a" * 64, "b" * 64, "a" * 64],
                               lambda: moment)
        self.assertEqual(found, [created, None, created])
        for value in (found[0].created, found[0].expires):
            self.assertIsInstance(value, datetime.datetime)
            self.assertEqual(value.utcoffset(), datetime.timedelta(0))
        # Expired at the clock's time: no record.
        self.assertEqual(self.run_async(sessions.get_sessions, ["a" * 64], lambda: expires),
                         [None])
        self.assertEqual(self.run_async(sessions.get_sessions, []), [])

    def test_deletions_keep_the_named_session(self):
        expires = now() + datetime.timedelta(hours=1)
        for key in ("a", "b", "c"):
            self.run_async(sessions.create_session, key * 64, "u" * 24, expires)
        self.assertEqual(self.run_async(sessions.delete_user_sessions, "u" * 24, keep="b" * 64), 2)
        self.assertEqual(self.run_async(sessions.delete_session, "b" * 64), 1)
        self.assertEqual(self.find("sessions"), [])
