"""services.portfolio: a caller's saved results, paged newest first, scoped to their owner.

Jobs are written with :func:`indico.db.jobs.create_job` (as the job service
writes them); the engine is not needed to read, list or delete them.
"""

import base64
import datetime
import json
import unittest

from indico import error
from indico.db import jobs
from indico.db.records import Job
from indico.services.portfolio import decode_cursor, encode_cursor
from tests.services.test_auth import ServiceTest

ADA, BOB = "a" * 24, "b" * 24


def cursor_of(value):
    """A cursor-shaped string (unpadded url-safe base64 of JSON) holding ``value``."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


class ResultsTest(ServiceTest):

    settings = {"list_limit_max": 3}

    async def create_jobs(self, owner, count):
        """Write ``count`` jobs of ``owner``; return their ids, oldest first."""
        created = []
        for number in range(count):
            job = await jobs.create_job(self.db, owner, {"number": number}, 10)
            created.append(job.id)
        return created

    async def test_pages_are_newest_first_and_follow_the_returned_cursor(self):
        portfolio = self.services.portfolio
        ids = await self.create_jobs(ADA, 5)
        await self.create_jobs(BOB, 2)
        newest_first = ids[::-1]
        page, cursor = await portfolio.list_results(ADA, 2)
        self.assertEqual([job.id for job in page], newest_first[:2])
        # The cursor points after the page's last job, as listed.
        self.assertEqual(cursor, encode_cursor(page[-1]))
        self.assertEqual(decode_cursor(cursor), (page[-1].created, page[-1].id))
        page, cursor = await portfolio.list_results(ADA, 2, decode_cursor(cursor))
        self.assertEqual([job.id for job in page], newest_first[2:4])
        page, cursor = await portfolio.list_results(ADA, 2, decode_cursor(cursor))
        self.assertEqual([job.id for job in page], newest_first[4:])
        self.assertIsNone(cursor)
        self.assertTrue(all(job.owner == ADA for job in page))

    async def test_a_page_that_ends_the_list_has_no_cursor(self):
        ids = await self.create_jobs(ADA, 2)
        page, cursor = await self.services.portfolio.list_results(ADA, 2)
        self.assertEqual([job.id for job in page], ids[::-1])
        self.assertIsNone(cursor)
        self.assertEqual(await self.services.portfolio.list_results(BOB, 2), ([], None))

    async def test_the_limit_is_capped_at_list_limit_max(self):
        ids = await self.create_jobs(ADA, 5)
        page, cursor = await self.services.portfolio.list_results(ADA, 100)
        self.assertEqual([job.id for job in page], ids[::-1][:3])
        self.assertEqual(decode_cursor(cursor)[1], ids[2])
        page, cursor = await self.services.portfolio.list_results(ADA, 100, decode_cursor(cursor))
        self.assertEqual([job.id for job in page], ids[1::-1])
        self.assertIsNone(cursor)

    async def test_someone_elses_job_is_not_found_for_get_and_delete(self):
        portfolio = self.services.portfolio
        [job_id] = await self.create_jobs(ADA, 1)
        for call in (portfolio.get_result, portfolio.delete_result):
            for owner, wanted in ((BOB, job_id), (ADA, "c" * 24)):
                with self.subTest(call=call.__name__, owner=owner, job=wanted):
                    with self.assertRaises(error.NotFound) as caught:
                        await call(owner, wanted)
                    self.assertServiceError(caught, error.NotFound, 404, "no such result")
        self.assertEqual(await self.count("jobs"), 1)  # Bob's delete left it
        self.assertEqual((await portfolio.get_result(ADA, job_id)).id, job_id)
        await portfolio.delete_result(ADA, job_id)
        self.assertEqual(await self.count("jobs"), 0)
        for call in (portfolio.get_result, portfolio.delete_result):
            with self.assertRaises(error.NotFound):
                await call(ADA, job_id)


class CursorTest(unittest.TestCase):

    def test_a_cursor_round_trips_and_is_unpadded(self):
        created = datetime.datetime(2024, 2, 29, 23, 59, 58, 123000, tzinfo=datetime.UTC)
        job = Job("d" * 24, ADA, "done", {}, created, created)
        cursor = encode_cursor(job)
        self.assertNotIn("=", cursor)
        self.assertEqual(decode_cursor(cursor), (created, "d" * 24))

    def test_garbage_is_a_value_error(self):
        garbage = ["", "not a cursor!", "e30", cursor_of(5), cursor_of(["2020-01-01"]),
                   cursor_of(["yesterday", "x"]), cursor_of([123, "x"]),
                   cursor_of({"created": "2020-01-01", "id": "x"}), "\u00e9",
                   # Dates the driver cannot encode once in UTC (the route answered
                   # 500 for these), and one without the offset encode_cursor writes.
                   cursor_of(["0001-01-01T00:00:00+05:00", "x"]),
                   cursor_of(["9999-12-31T23:59:59-05:00", "x"]),
                   cursor_of(["2020-01-01T00:00:00", "x"])]
        for cursor in garbage:
            with self.subTest(cursor=cursor):
                with self.assertRaisesRegex(ValueError, "^not a cursor from portfolio/list$"):
                    decode_cursor(cursor)
