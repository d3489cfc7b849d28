"""The rate_limits collection: counts come back as Window records with UTC datetimes."""

import datetime

from indico.db import rate_limits
from indico.db.records import Window
from indico.db.util import now
from tests.harness import ServerTest


class WindowRecordTest(ServerTest):

    def run_async(self, function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: function(self.db, *args, **kwargs))

    def test_counts_in_one_window_then_a_new_one(self):
        moments = [now()]

        def clock():  # stands still until the test moves it
            return moments[-1]
        minute = datetime.timedelta(seconds=60)
        first = self.run_async(rate_limits.increment, "k", 60, clock)
        self.assertEqual(first, Window(1, clock() + minute))
        second = self.run_async(rate_limits.increment, "k", 60, clock)
        self.assertEqual(second, Window(2, first.expires))
        self.assertEqual(second.expires.utcoffset(), datetime.timedelta(0))
        self.run_async(rate_limits.give_back, "k", second.expires)
        self.assertEqual(self.run_async(rate_limits.increment, "k", 60, clock).count, 2)
        moments.append(clock() + datetime.timedelta(seconds=61))
        third = self.run_async(rate_limits.increment, "k", 60, clock)
        self.assertEqual(third, Window(1, clock() + minute))
        self.run_async(rate_limits.reset, "k")
        self.assertEqual(self.find("rate_limits"), [])
