"""Structured logging: one JSON object per line, with the request id.

``setup_logging`` installs the formatter on the root logger once, in
``main()``; modules only call ``logging.getLogger(__name__)``. The request id
travels in a context variable, so log lines written anywhere while a request
is served carry it without being passed around.
"""

import contextvars
import json
import logging
import time

import orjson

request_id_var = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("indico.access")


class JsonFormatter(logging.Formatter):
    """Format a record as a JSON object: time, level, logger, message, request id.

    It runs for every access line, so it keeps what it can between records
    (the formatted second: ``strftime`` once a second, not once a line), and
    orjson encodes the line (0.5 µs where ``json`` took 4 µs): compact JSON,
    UTF-8 as is, datetimes in ISO 8601, any other value orjson cannot encode
    as its ``str``. What orjson refuses outright (an integer over 64 bits) is
    encoded by ``json`` instead.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fallback = json.JSONEncoder(default=str).encode
        self._second = (None, "")

    def _encode(self, entry: dict) -> str:
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:
            return self._fallback(entry)

    def _time(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._second  # read once: other threads format too
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int(msecs):03d}Z"

    def format(self, record):
        entry = {
            "time": self._time(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return self._encode(entry)


def describe_database_error(exc: Exception) -> str:
    """One line saying how a database call failed: for a warning, instead of a traceback.

    Args:
        exc: the driver's error (a ``pymongo.errors.PyMongoError``); its
            ``timeout`` attribute tells an operation or selection timeout.

    Returns:
        for example ``"AutoReconnect: ..."`` or ``"ServerSelectionTimeoutError
        (timeout): ..."``, without the driver's topology description.
    """
    reason = str(exc).split(", Timeout:")[0]
    kind = type(exc).__name__ + (" (timeout)" if getattr(exc, "timeout", False) else "")
    return f"{kind}: {reason}"


def setup_logging(level="INFO"):
    """Send every logger's records to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The lines name no thread or process: LogRecord need not look them up
    # (for every logger of the process: a handler added later that prints
    # %(threadName)s or %(process)d would print None).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Tornado's own access log is replaced by log_request below.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def log_request(handler):
    """Tornado ``log_function``: one access line per request, with latency."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    latency_ms = 1000.0 * handler.request.request_time()
    access_log.log(level, "%s %s %d", handler.request.method, handler.request.path, status,
                   extra={
                       "request_id": getattr(handler, "request_id", "-"),
                       "fields": {
                           "method": handler.request.method,
                           "path": handler.request.path,
                           "status": status,
                           "latency_ms": round(latency_ms, 2),
                           "remote": handler.request.remote_ip,
                       },
                   })
