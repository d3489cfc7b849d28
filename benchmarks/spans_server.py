"""indico's server with timing spans around the steps of ``portfolio/optimize`` (benchmark-only).

``python benchmarks/spans_server.py --port=PORT`` runs ``indico.server.main``
after wrapping, in this process only, the functions each step of
``portfolio/optimize`` goes through (the shipped code has no timing code):

=====================  ==========================================================
authentication         ``AuthService.authenticate``
price frame            ``JobService.load_inputs`` (aligned frame and benchmark)
job insert             ``indico.db.jobs.create_job``
pool round trip        ``WorkerPool.run`` less the engine's own time
engine                 the work function, timed inside the worker process
                       (:func:`spans.timed_call`)
completion write       ``indico.db.jobs.complete_job``
serialization          ``JobPublic.from_record`` and ``BaseHandler.write_json``
handler                ``ActionHandler.post`` as a whole (from ``initialize``)
=====================  ==========================================================

On SIGUSR1 it writes the spans of the requests so far (milliseconds, one
dict a request) as JSON to the file named by ``BENCH_SPANS_FILE`` and starts
over. A function that a later version of indico no longer has is skipped
(its span is then missing from the table), so the benchmark degrades rather
than breaks.
"""

import contextvars
import functools
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import spans  # after the path is set

current = contextvars.ContextVar("bench_spans", default=None)
finished = []


def _add(name, seconds):
    record = current.get()
    if record is not None:
        record[name] = record.get(name, 0.0) + 1000.0 * seconds


def _wrap_async(owner, attribute, name):
    original = getattr(owner, attribute, None)
    if original is None:
        print(f"spans_server: {owner.__name__}.{attribute} not found; no {name} span",
              file=sys.stderr)
        return

    @functools.wraps(original)
    async def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - began)

    setattr(owner, attribute, timed)


def _wrap_sync(owner, attribute, name, static=False):
    original = getattr(owner, attribute, None)
    if original is None:
        print(f"spans_server: {owner.__name__}.{attribute} not found; no {name} span",
              file=sys.stderr)
        return

    @functools.wraps(original)
    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - began)

    setattr(owner, attribute, staticmethod(timed) if static else timed)


def install():
    from indico.db import jobs as job_records
    from indico.routes import actions, base, portfolio
    from indico.services import auth, jobs, pool

    _wrap_async(auth.AuthService, "authenticate", "authentication")
    _wrap_async(jobs.JobService, "load_inputs", "price frame")
    _wrap_async(job_records, "create_job", "job insert")
    _wrap_async(job_records, "complete_job", "completion write")
    _wrap_sync(base.BaseHandler, "write_json", "serialization")

    public = getattr(portfolio, "JobPublic", None)
    original_from = getattr(getattr(public, "from_record", None), "__func__", None)
    if original_from is None:
        print("spans_server: JobPublic.from_record not found; serialization is "
              "write_json only", file=sys.stderr)
    else:
        def from_record(cls, *args, **kwargs):
            began = time.perf_counter()
            try:
                return original_from(cls, *args, **kwargs)
            finally:
                _add("serialization", time.perf_counter() - began)

        public.from_record = classmethod(from_record)

    original_run = pool.WorkerPool.run

    async def run(self, function, *args, **kwargs):
        began = time.perf_counter()
        result, engine = await original_run(self, spans.timed_call, function, *args, **kwargs)
        total = time.perf_counter() - began
        _add("engine", engine)
        _add("pool round trip", total - engine)
        return result

    pool.WorkerPool.run = run

    original_post = actions.ActionHandler.post

    async def post(self, name):
        record = {}
        current.set(record)
        try:
            return await original_post(self, name)
        finally:
            record["handler"] = 1000.0 * (time.monotonic() - self.started)
            if name == "optimize":
                finished.append(record)

    actions.ActionHandler.post = post


def dump(signum, frame):
    path = os.environ.get("BENCH_SPANS_FILE")
    if path:
        with open(path + ".tmp", "w") as out:
            json.dump(finished, out)
        os.replace(path + ".tmp", path)
    finished.clear()


if __name__ == "__main__":
    install()
    signal.signal(signal.SIGUSR1, dump)
    from indico.server import main
    sys.exit(main())
