"""Every setting of indico, read from ``INDICO_*`` environment variables.

``Config.from_environ(environ)`` takes any mapping (``os.environ`` by
default), so tests build configurations without touching the process
environment. Each field ``name`` is read from ``INDICO_<NAME>``; a value that
does not parse or is out of range raises :class:`indico.error.ConfigError`
whose message names the variable, so a bad deployment fails at start, not on
the first request.

Defaults are safe for a single machine: bind to 127.0.0.1, no CORS origins,
no trusted proxy, the embedded database under ``./var``.
"""

import os

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from indico.error import ConfigError

ENV_PREFIX = "INDICO_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _split_list(value):
    """Accept a comma-separated string for list settings."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# Seconds of INDICO_SESSION_CACHE when it is not set and the database is the embedded one.
EMBEDDED_SESSION_CACHE = 5.0


class Config(BaseModel):
    """The settings; see the configuration table in README.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # HTTP server
    port: int = Field(8000, ge=1, le=65535)
    address: str = "127.0.0.1"
    debug: bool = False
    log_level: str = "INFO"
    body_limit: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    json_max_depth: int = Field(32, ge=2, le=256)
    cors_origins: list[str] = []
    trusted_proxies: list[str] = []
    shutdown_grace: float = Field(8.0, ge=0, le=60)
    # Largest request head (request line and headers) answered normally; a
    # larger one gets a JSON 431 (see indico.server.SERVER_MAX_HEADER).
    header_limit: int = Field(16 * 1024, ge=1024, le=512 * 1024)
    # Seconds between WebSocket pings on /ws/jobs (0: none); a proxy's read
    # timeout must be longer (deploy/nginx.conf uses 75 s).
    websocket_ping_interval: float = Field(20.0, ge=0, le=3600)

    # database
    mongodb_uri: str = ""
    database: str = Field("indico", pattern=r"^[A-Za-z0-9_-]{1,60}$")
    data_dir: str = "var"
    # Seconds any one database call may take, all included (the driver's
    # operation timeout, timeoutMS): a database that accepts connections but
    # does not answer costs a request this long, then a 503.
    db_timeout: float = Field(2.0, gt=0, le=60)
    # Seconds to wait for a usable server (the primary) and to open a
    # connection; None: db_timeout. Bounds the wait before the long operations
    # (index creation at start, price imports, purges); see README, "MongoDB
    # and replica sets", for how it combines with db_timeout.
    db_selection_timeout: float | None = Field(None, gt=0, le=300)
    embedded_start_timeout: float = Field(20.0, gt=0, le=300)
    load_sample_prices: bool = True
    price_recheck: float = Field(0.5, ge=0, le=60)

    # accounts
    session_ttl: int = Field(7 * 24 * 3600, ge=60)
    # None: 5 s with the embedded database (one host), 0 (off) with a MongoDB URI,
    # whose processes may run on several machines that share no change marks.
    session_cache: float = Field(EMBEDDED_SESSION_CACHE, ge=0, le=300)
    argon2_memory_kib: int = Field(19 * 1024, ge=8, le=4 * 1024 * 1024)
    argon2_time_cost: int = Field(2, ge=1, le=100)
    argon2_parallelism: int = Field(1, ge=1, le=64)
    login_max_failures: int = Field(5, ge=1)
    login_address_max_failures: int = Field(50, ge=1)
    login_window: int = Field(15 * 60, ge=1)
    signup_max_per_address: int = Field(20, ge=1)
    signup_window: int = Field(3600, ge=1)

    # portfolio jobs
    workers: int = Field(2, ge=1, le=64)
    max_symbols: int = Field(100, ge=2, le=1000)
    max_active_jobs: int = Field(5, ge=1)
    max_range_years: int = Field(40, ge=1)
    job_time_limit: float = Field(60.0, gt=0)
    job_wait: float = Field(10.0, ge=0)
    job_lease: float = Field(30.0, gt=0)
    list_limit_max: int = Field(100, ge=1)

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _lists(cls, value):
        return _split_list(value)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins):
        for origin in origins:
            if origin == "*" or "://" not in origin or origin.endswith("/"):
                raise ValueError(
                    f"{origin!r} is not an origin; write scheme://host[:port], "
                    "without a path or a trailing slash ('*' is not allowed)"
                )
        return origins

    @field_validator("db_selection_timeout", mode="before")
    @classmethod
    def _unset(cls, value):
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value):
        value = str(value).upper()
        if value not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _session_cache(cls, values):
        if isinstance(values, dict) and values.get("session_cache") in (None, ""):
            values = {**values, "session_cache": 0.0 if values.get("mongodb_uri")
                      else EMBEDDED_SESSION_CACHE}
        return values

    @classmethod
    def from_environ(cls, environ=None, **overrides):
        """Build the configuration from ``INDICO_*`` variables.

        Args:
            environ: a mapping of environment variables; ``os.environ`` if None.
            **overrides: values that win over the environment (command-line flags).

        Returns:
            a frozen Config.

        Raises:
            ConfigError: a variable is unknown or has a bad value; the message
                names the variable.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for key, value in environ.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in cls.model_fields:
                raise ConfigError(
                    f"{key}: unknown setting (see the configuration table in README.md)")
            values[name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "?"
            raise ConfigError(
                f"{ENV_PREFIX}{name.upper()}: {first['msg']} (got {values.get(name)!r})"
            ) from None

    @property
    def data_path(self):
        """The data directory as an absolute path."""
        return os.path.abspath(self.data_dir)

    @property
    def marks_path(self):
        """The change-marks file the processes of this host share (see indico.utils.marks)."""
        return os.path.join(self.data_path, "change-marks")
