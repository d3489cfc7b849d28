"""The jobs collection: atomic claims, leases, completion only by the lease holder, paging."""

import asyncio
import datetime
import json
import time

from indico.db import jobs
from indico.db.records import Job, JobEvent, JobKind
from indico.db.util import now
from tests.harness import ServerTest, needs_embedded

PARAMS = {"symbols": ["AAPL", "MSFT"], "objective": "max_sharpe"}


class JobsTest(ServerTest):

    def run_async(self, coroutine_function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: coroutine_function(self.db, *args, **kwargs))

    def expire_lease(self, job):
        """Move ``job``'s lease into the past in the database: no waiting on the clock."""
        self.io_loop.run_sync(lambda: self.db.jobs.update_one(
            {"_id": job.id}, {"$set": {"lease_expires": time.time() - 1}}))

    def test_claim_is_atomic_between_racing_workers(self):
        for _ in range(3):
            self.run_async(jobs.create_job, "owner", PARAMS, 10)

        async def race():
            return await asyncio.gather(*[jobs.claim_job(self.db, f"w{n}", 30) for n in range(6)])
        claimed = [job for job in self.io_loop.run_sync(race) if job]
        self.assertEqual(len({job.id for job in claimed}), len(claimed))
        stored = self.find("jobs")
        running = [job for job in stored if job["status"] == "running"]
        self.assertEqual(len(running), len(claimed))
        self.assertTrue(all(job["attempts"] == 1 for job in running))

    def test_oldest_queued_job_first_then_nothing(self):
        first = self.run_async(jobs.create_job, "owner", PARAMS, 10)
        self.run_async(jobs.create_job, "owner", PARAMS, 10)
        claimed = self.run_async(jobs.claim_job, "w1", 30)
        self.assertEqual(claimed.id, first.id)
        self.assertEqual([event.event for event in claimed.events], ["queued", "running"])
        self.run_async(jobs.claim_job, "w1", 30)
        self.assertIsNone(self.run_async(jobs.claim_job, "w1", 30))

    def test_expired_lease_is_claimed_again_and_the_old_worker_cannot_complete(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="dead", lease=30)
        self.assertIsNone(self.run_async(jobs.claim_job, "w2", 30))  # lease still live
        self.expire_lease(job)
        taken = self.run_async(jobs.claim_job, "w2", 30)
        self.assertEqual((taken.id, taken.lease_owner, taken.attempts),
                         (job.id, "w2", 2))
        self.assertFalse(self.run_async(jobs.renew_lease, job.id, "dead", 30))
        late = self.run_async(jobs.complete_job, job, "dead", jobs.DONE, result={"x": 1})
        self.assertIsNone(late)
        done = self.run_async(jobs.complete_job, taken, "w2", jobs.DONE, result={"x": 2})
        self.assertEqual(done.status, "done")
        [stored] = self.find("jobs")
        self.assertEqual(done, Job.from_document(stored))  # the write answers with the stored job
        # The result is stored as its JSON text, and read back as the document it was.
        self.assertEqual((stored["status"], stored["result"]), ("done", '{"x":2}'))
        self.assertEqual(done.result, {"x": 2})
        self.assertEqual([event["event"] for event in stored["events"]],
                         ["queued", "running", "running", "done"])

    def test_a_failed_job_as_answered_is_the_job_as_stored(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30)
        self.assertTrue(self.run_async(jobs.renew_lease, job.id, "w1", 30))  # lease moved
        failed = self.run_async(jobs.complete_job, job, "w1", jobs.FAILED, error="no luck")
        [stored] = self.find("jobs")
        self.assertEqual(failed, Job.from_document(stored))
        self.assertEqual((failed.error, failed.result, failed.slot, failed.lease_owner),
                         ("no luck", None, None, None))
        self.assertEqual(self.run_async(jobs.get_job, "owner", job.id), failed)

    def test_a_result_stored_as_a_document_still_reads(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30)
        self.run_async(jobs.complete_job, job, "w1", jobs.DONE, result={"x": 3})
        self.io_loop.run_sync(lambda: self.db.jobs.update_one(
            {"_id": job.id}, {"$set": {"result": {"x": 3, "series": [1.5, None]}}}))
        self.assertEqual(self.run_async(jobs.get_job, "owner", job.id).result,
                         {"x": 3, "series": [1.5, None]})

    def test_renewal_keeps_the_job(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30)
        self.expire_lease(job)  # the first lease ran out before its renewal landed
        self.assertTrue(self.run_async(jobs.renew_lease, job.id, "w1", 30))
        self.assertIsNone(self.run_async(jobs.claim_job, "w2", 30))

    def test_paging_newest_first_is_owner_scoped(self):
        created = [self.run_async(jobs.create_job, owner, PARAMS, 10)
                   for owner in ("a", "b", "a", "a", "b", "a")]
        mine = [job.id for job in reversed(created) if job.owner == "a"]
        first = self.run_async(jobs.list_jobs, "a", 2)
        self.assertEqual([job.id for job in first], mine[:2])
        after = (first[-1].created, first[-1].id)
        second = self.run_async(jobs.list_jobs, "a", 5, after)
        self.assertEqual([job.id for job in second], mine[2:])
        self.assertEqual(self.run_async(jobs.get_job, "b", mine[0]), None)
        self.assertEqual(self.run_async(jobs.delete_job, "b", mine[0]), 0)
        self.assertEqual(self.run_async(jobs.delete_job, "a", mine[0]), 1)

    def test_slots_cap_active_jobs_and_completion_frees_one(self):
        first = self.run_async(jobs.create_job, "a", PARAMS, 2, worker="w1", lease=30)
        self.run_async(jobs.create_job, "a", PARAMS, 2)
        self.assertIsNone(self.run_async(jobs.create_job, "a", PARAMS, 2))
        self.assertIsNotNone(self.run_async(jobs.create_job, "b", PARAMS, 2))  # per user
        self.run_async(jobs.complete_job, first, "w1", jobs.DONE, result={})
        again = self.run_async(jobs.create_job, "a", PARAMS, 2)
        self.assertEqual(again.slot, "a:0")
        done = [job for job in self.find("jobs") if job["_id"] == first.id][0]
        self.assertNotIn("slot", done)
        self.assertEqual(sorted(job["slot"] for job in self.find("jobs") if "slot" in job),
                         ["a:0", "a:1", "b:0"])


class KindProgressCancelTest(ServerTest):
    """A job's kind, a backtest's progress, and cancellation by its owner."""

    run_async = JobsTest.run_async

    def test_a_job_stored_without_a_kind_is_an_optimization(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10)
        self.assertEqual((job.kind, self.find("jobs")[0]["kind"]), (JobKind.OPTIMIZE, "optimize"))
        self.io_loop.run_sync(lambda: self.db.jobs.update_one({"_id": job.id},
                                                              {"$unset": {"kind": ""}}))
        self.assertEqual(self.run_async(jobs.get_job, "owner", job.id).kind, JobKind.OPTIMIZE)
        [listed] = self.run_async(jobs.list_jobs, "owner", 5)
        self.assertEqual(listed.kind, JobKind.OPTIMIZE)

    def test_progress_is_an_event_written_only_by_the_lease_holder(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30,
                             kind=JobKind.BACKTEST)
        self.assertIsNone(self.run_async(jobs.record_progress, job, "w2", 1, 10))
        first = self.run_async(jobs.record_progress, job, "w1", 2, 10)
        second = self.run_async(jobs.record_progress, first, "w1", 5, 10)
        [stored] = self.find("jobs")
        self.assertEqual(second, Job.from_document(stored))  # the write answers the stored job
        self.assertEqual((stored["kind"], stored["progress"]), ("backtest", {"done": 5,
                                                                              "total": 10}))
        self.assertEqual([(event["event"], event.get("done"), event.get("total"))
                          for event in stored["events"]],
                         [("queued", None, None), ("running", None, None),
                          ("progress", 2, 10), ("progress", 5, 10)])
        done = self.run_async(jobs.complete_job, second, "w1", jobs.DONE, result={"x": 1})
        self.assertEqual([event.event for event in done.events],
                         ["queued", "running", "progress", "progress", "done"])
        self.assertEqual(done, self.run_async(jobs.get_job, "owner", job.id))
        self.assertIsNone(self.run_async(jobs.record_progress, done, "w1", 10, 10))

    def test_cancel_ends_a_queued_or_running_job_of_the_owner_only(self):
        queued = self.run_async(jobs.create_job, "owner", PARAMS, 10)
        self.assertEqual(self.run_async(jobs.cancel_job, "other", queued.id), (None, False))
        self.assertEqual(self.run_async(jobs.cancel_job, "owner", "0" * 24), (None, False))
        cancelled, done = self.run_async(jobs.cancel_job, "owner", queued.id)
        self.assertTrue(done)
        [stored] = self.find("jobs")
        self.assertEqual(cancelled, Job.from_document(stored))
        self.assertEqual((cancelled.status, cancelled.error, cancelled.slot),
                         ("failed", "cancelled", None))
        self.assertEqual([event.event for event in cancelled.events], ["queued", "failed"])
        self.assertIsNone(self.run_async(jobs.claim_job, "w1", 30))
        # Once ended, it stays as it ended.
        self.assertEqual(self.run_async(jobs.cancel_job, "owner", queued.id), (cancelled, False))
        running = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30,
                                 kind=JobKind.BACKTEST)
        progressed = self.run_async(jobs.record_progress, running, "w1", 1, 4)
        cancelled, done = self.run_async(jobs.cancel_job, "owner", running.id)
        self.assertTrue(done)
        self.assertEqual([event.event for event in cancelled.events],
                         ["queued", "running", "progress", "failed"])
        self.assertEqual((cancelled.lease_owner, cancelled.progress), (None, {"done": 1,
                                                                              "total": 4}))
        # Its runner can neither renew, nor write progress, nor complete it.
        self.assertFalse(self.run_async(jobs.renew_lease, running.id, "w1", 30))
        self.assertIsNone(self.run_async(jobs.record_progress, progressed, "w1", 2, 4))
        self.assertIsNone(self.run_async(jobs.complete_job, progressed, "w1", jobs.DONE,
                                         result={}))
        self.assertEqual(self.run_async(jobs.get_job, "owner", running.id), cancelled)


class JobRecordTest(ServerTest):
    """Jobs come back as records: string ids, UTC datetimes, typed events."""

    def run_async(self, coroutine_function, *args, **kwargs):
        return self.io_loop.run_sync(lambda: coroutine_function(self.db, *args, **kwargs))

    def assertUtc(self, moment):
        self.assertIsInstance(moment, datetime.datetime)
        self.assertEqual(moment.utcoffset(), datetime.timedelta(0))

    def test_every_write_and_read_answers_a_record(self):
        created = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30)
        done = self.run_async(jobs.complete_job, created, "w1", jobs.DONE, result={"x": 1})
        read = self.run_async(jobs.get_job, "owner", created.id)
        [listed] = self.run_async(jobs.list_jobs, "owner", 5)
        [changed] = self.run_async(jobs.list_changed_jobs, ["owner"],
                                   created.updated - datetime.timedelta(seconds=1))
        for job in (created, done, read, listed, changed):
            self.assertIsInstance(job, Job)
            self.assertIsInstance(job.id, str)
            self.assertEqual(len(job.id), 24)
            self.assertUtc(job.created)
            self.assertUtc(job.updated)
            self.assertEqual(job.params, PARAMS)
        self.assertEqual(listed.events, ())  # a listing leaves the events out
        for job in (done, read, changed):
            self.assertEqual([event.event for event in job.events],
                             ["queued", "running", "done"])
            for event in job.events:
                self.assertIsInstance(event, JobEvent)
                self.assertUtc(event.at)
        self.assertEqual(read, done)
        self.assertEqual(done.result, {"x": 1})
        self.assertGreaterEqual(done.updated, created.updated)
        self.assertUtc(created.lease_expires)
        self.assertGreater(created.lease_expires, created.updated)

    def test_stored_times_are_epoch_seconds_read_back_exactly(self):
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10, worker="w1", lease=30)
        [stored] = self.find("jobs")
        self.assertIsInstance(stored["updated"], float)
        self.assertEqual(job.updated.timestamp(), stored["updated"])
        self.assertEqual([event.at.timestamp() for event in job.events],
                         [event["at"] for event in stored["events"]])

    def test_quirky_stored_shapes_are_decoded(self):
        """What nx-27017 makes of a ``$set`` date (a string) and a ``$push``ed event (JSON)."""
        job = self.run_async(jobs.create_job, "owner", PARAMS, 10)
        at = round(time.time(), 3)
        self.io_loop.run_sync(lambda: self.db.jobs.update_one({"_id": job.id}, {"$set": {
            "created": "2026-12-01 23:53:39.123000", "updated": at,
            "events": [json.dumps({"id": "e1", "event": "queued", "at": at})],
        }}))
        read = self.run_async(jobs.get_job, "owner", job.id)
        self.assertEqual(read.created,
                         datetime.datetime(2026, 12, 1, 23, 53, 39, 123000, datetime.UTC))
        self.assertEqual(read.events, (JobEvent("e1", "queued", read.updated),))
        # A later write stores the events as documents again.
        claimed = self.run_async(jobs.claim_job, "w1", 30)
        [stored] = self.find("jobs")
        self.assertEqual([event["id"] for event in stored["events"]],
                         ["e1", claimed.events[-1].id])


@needs_embedded("reads nx-27017's query plans")
class QueryPlanTest(ServerTest):
    """The hot queries of the jobs use an index on nx-27017, not a scan of every job."""

    def plan(self, command):
        command = {key: command[key] for key in ("find", "filter", "sort") if key in command}
        answer = self.io_loop.run_sync(lambda: self.db.command("explain", command))
        return " ".join(step.get("detail", "") for step in answer["queryPlanner"]["winningPlan"])

    def sent_finds(self, coroutine_function, *args):
        """The ``find`` commands that ``coroutine_function(db, *args)`` sent."""
        self.counter.commands.clear()
        self.io_loop.run_sync(lambda: coroutine_function(self.db, *args))
        return [command for command in self.counter.commands if "find" in command]

    def assertSearchesAnIndex(self, finds):
        self.assertTrue(finds)
        for command in finds:
            with self.subTest(filter=command["filter"]):
                plan = self.plan(command)
                self.assertIn("SEARCH jobs USING INDEX", plan)
                self.assertNotIn("SCAN jobs", plan)

    def test_both_looks_of_claim_job_search_an_index(self):
        # The job runner's looks for work; before the status index, both were "SCAN jobs".
        self.io_loop.run_sync(lambda: jobs.create_job(self.db, "a", PARAMS, 10, worker="w0",
                                                      lease=30))
        self.assertSearchesAnIndex(self.sent_finds(jobs.claim_job, "w1", 30))

    def test_the_event_pollers_look_at_several_owners_searches_an_index(self):
        for owner in ("a", "b"):
            self.io_loop.run_sync(lambda owner=owner: jobs.create_job(self.db, owner, PARAMS, 10))
        since = now() - datetime.timedelta(seconds=5)
        # Before: owner $in [...], "SCAN jobs".
        self.assertSearchesAnIndex(self.sent_finds(jobs.list_changed_jobs, ["a", "b"], since))
