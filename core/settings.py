"""Every setting of the router in one table, read the same way by the API, the workers and
the CLI.

    settings = Settings.load(os.environ)                   # a worker, the CLI
    settings = Settings.load(os.environ, {"JOB_TTL": 60})  # create_app(config)
    settings.job_ttl, settings.heartbeat_ttl
    app.config.update(settings.as_config())                # app.config["JOB_TTL"]

Each field of `Settings` is one setting: its type says how its variable is read, its
default is written here and nowhere else, and its metadata gives a one-line doc and, when
it is not `ROUTER_<NAME>`, its environment variable (`REDIS_URL`, `LOCAL_*`, `FLOWER_*`).
NAME is the field's name in upper case, the key the API reads in `app.config`.

`load` applies, in order: the defaults, the environment, then a mapping keyed by NAME
(what `create_app(config)` is given). Values are read by type, never JSON-decoded:

- a boolean is 1/true/yes/on or 0/false/no/off (or empty: off), in any case;
- an integer or a number must be one (`ROUTER_JOB_TTL=1h` stops the process, naming the
  variable), and so must a value of the mapping;
- text is taken as written: an admin key `0` is the text `0`. An empty variable is unset
  (compose passes `ROUTER_ADMIN_KEY=` for a blank `.env` entry), so its default applies.

Not here: what differs per backend is named by `workers/providers.json` (`<PREFIX>_API_KEY`,
`<PREFIX>_BASE_URL`, `_HEADERS`, `_TIMEOUT`, `LLMD_*`) along with the keys' allowlist
(`ROUTER_KEY_ENV_ALLOWLIST`); `workers/providers.py` reads them from the environment a
worker is given, per backend. `ROUTER_PORT` is the Makefile's and the Procfile's, and
`PROMETHEUS_MULTIPROC_DIR` prometheus_client's.

A new setting is one field below and one row of the configuration table in
docs/operations.md; `tests/core/test_settings.py` checks that the two agree.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: Boolean words, compared after strip() and lower(); nothing else is a boolean.
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """A setting whose value cannot be used; the message names its variable."""


def parse_bool(text: str, variable: str) -> bool:
    """`text` as a boolean (see TRUE_WORDS, FALSE_WORDS); anything else is an error that
    names `variable`, so that a typo does not quietly mean off."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingsError(
        f"{variable} must be one of 1, true, yes, on or 0, false, no, off (empty: off); "
        f"got {text!r}"
    )


def setting(default: Any, doc: str, *, env: str | None = None, shown: str | None = None) -> Any:
    """A field of Settings: its default, a one-line doc, its variable when not
    `ROUTER_<NAME>`, and how docs/operations.md shows its default when that is not the
    value itself (`shown`: "threads 8, gevent 1000" for a concurrency that depends on the
    pool)."""
    return field(default=default, metadata={"doc": doc, "env": env, "shown": shown})


@dataclass(frozen=True)
class Settings:
    """The router's settings; `Settings()` is the defaults, `Settings.load` reads them."""

    # -- where things are ------------------------------------------------------------------
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0", "broker, job hashes and token streams", env="REDIS_URL"
    )
    redis_maxmemory: str = setting(
        "1gb", "most data `irouter redis` keeps (0: no limit)", env="REDIS_MAXMEMORY"
    )
    database_url: str = setting("sqlite:///.run/router.db", "the registry", env="DATABASE_URL")

    # -- the API ---------------------------------------------------------------------------
    host: str = setting(
        "127.0.0.1", "where the API binds; on loopback it answers only to loopback names"
    )
    #: a comma list from the environment; create_app may also be given a list of names
    allowed_hosts: str | tuple[str, ...] | None = setting(
        None, "Host names the API answers to (unset: loopback names on loopback, else any)"
    )
    allowed_origins: str | tuple[str, ...] | None = setting(
        None, "origins besides the router's own whose pages may open WebSockets and POST"
    )
    admin_key: str | None = setting(
        None, "bearer key for /admin, taken as written (unset: loopback clients only)"
    )
    auth: str = setting(
        "auto", "API keys on /v1: auto (once a key exists, or off loopback), required, off"
    )
    worker_wait: float = setting(30.0, "seconds to wait for a live worker before 503")
    request_timeout: float = setting(
        600.0, "seconds before a completion gets 504 and is cancelled; Celery's time limits"
    )
    job_ttl: int = setting(3600, "seconds a finished job's hash and stream stay readable")
    idempotency_ttl: int = setting(86400, "seconds an Idempotency-Key is remembered")
    registry_ttl: float = setting(1.0, "the API re-reads the registry at most this often")
    keepalive: float = setting(15.0, "seconds between SSE keep-alives and WebSocket pings")
    ws_idle_timeout: float = setting(300.0, "seconds a /v1/ws socket may sit without a request")
    max_content_length: int = setting(1024 * 1024, "request body limit in bytes (413 above)")
    forward_headers: str = setting(
        "x-session-token", "client request headers passed on to backends (comma list)"
    )
    queue_limit: int = setting(
        200, "most jobs of one API key waiting on a queue before it is skipped (0: any)"
    )
    dispatch_ahead: int = setting(
        2, "task messages a queue's list holds; beyond them jobs wait their key's turn"
    )
    queue_wait: float = setting(
        20.0, "seconds a job may stay queued before it moves to another deployment (0: never)"
    )
    queue_timeout: float = setting(
        30.0, "a synchronous request expected to wait longer is refused at once (0: never)"
    )
    heartbeat_interval: float = setting(
        2.0, "seconds between worker and API heartbeats; dead after three missed beats"
    )
    log_json: bool = setting(False, "one JSON object per log line, with request and job ids")
    log_level: str = setting("INFO", "the API's root log level with JSON log lines")
    request_log: bool = setting(True, "record each completion in the registry's request log")
    request_log_queue: int = setting(10_000, "request-log entries waiting; more are dropped")
    request_log_batch: int = setting(500, "request-log entries per INSERT transaction")
    request_log_retention: float = setting(30.0, "days a request-log entry is kept (0: all)")

    # -- circuit breakers (API and workers) ------------------------------------------------
    breaker_failures: int = setting(5, "consecutive failures that open a backend's circuit")
    breaker_error_rate: float = setting(0.5, "... or this share of failures in the window")
    breaker_window: float = setting(60.0, "seconds of outcomes the error rate looks at")
    breaker_min_requests: int = setting(10, "fewest outcomes in the window before the rate counts")
    breaker_cooldown: float = setting(10.0, "seconds a circuit stays open before one probe")

    # -- workers ---------------------------------------------------------------------------
    worker_concurrency: int | None = setting(
        None, "jobs per worker process (unset: by pool)", shown="threads 8, gevent 1000"
    )
    task_events: bool = setting(False, "workers send Celery task events from the start")
    task_log: bool = setting(False, "workers log Celery's received/succeeded line per task")
    redeliver_after: float = setting(
        30.0, "seconds before a queued job whose broker message was lost is published again"
    )
    redis_timeout: float = setting(10.0, "seconds a worker's Redis command waits for an answer")
    upstream_retries: int = setting(2, "retries of a failed upstream call before its first token")
    upstream_backoff: float = setting(0.5, "exponential backoff base, seconds (full jitter)")
    upstream_backoff_max: float = setting(8.0, "exponential backoff cap, seconds")
    upstream_max_retry_after: float = setting(
        30.0, "a longer upstream Retry-After is returned to the client, not waited out"
    )

    # -- the local worker ------------------------------------------------------------------
    local_model: str | None = setting(
        None,
        "one model: a .gguf file, a model directory or hub id",
        env="LOCAL_MODEL",
        shown="the SmolLM2 GGUF",
    )
    local_models: str | None = setting(
        None, "several models: name=ref,name2=ref2", env="LOCAL_MODELS", shown="`smollm2-135m=`"
    )
    local_device: str = setting("auto", "mps > cuda > cpu, or a torch device", env="LOCAL_DEVICE")
    local_dtype: str = setting("auto", "the weights' precision", env="LOCAL_DTYPE")
    local_max_batch: int | None = setting(
        None,
        "requests per model decoded together",
        env="LOCAL_MAX_BATCH",
        shown="the worker's concurrency",
    )
    local_temperature: float = setting(0.2, "default temperature", env="LOCAL_TEMPERATURE")
    local_top_p: float = setting(0.5, "default top_p", env="LOCAL_TOP_P")
    local_repetition_penalty: float = setting(
        1.1, "default repetition penalty (1: none)", env="LOCAL_REPETITION_PENALTY"
    )
    local_penalty_window: int = setting(
        64, "last generated tokens the penalty looks at", env="LOCAL_PENALTY_WINDOW"
    )
    local_loop_window: int = setting(64, "loop guard window (0: none)", env="LOCAL_LOOP_WINDOW")
    model_cache: str = setting("~/.cache/inference-router", "where converted models are kept")

    # -- irouter flower --------------------------------------------------------------------
    flower_address: str = setting("127.0.0.1", "where Flower listens", env="FLOWER_ADDRESS")
    flower_port: int = setting(5555, "Flower's port", env="FLOWER_PORT")
    flower_events_idle: float = setting(
        60.0, "seconds without a look at Flower before task events go off", env="FLOWER_EVENTS_IDLE"
    )
    flower_basic_auth: str | None = setting(
        None, "user:password; required off loopback (Flower reads it)", env="FLOWER_BASIC_AUTH"
    )

    @property
    def heartbeat_ttl(self) -> float:
        """Seconds a heartbeat stays valid: three missed beats and a process is dead."""
        return 3 * self.heartbeat_interval

    @classmethod
    def load(cls, env: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
        """The defaults, then each setting's variable in `env`, then `overrides` by NAME
        (keys that name no setting, such as Flask's own TESTING, are left to the caller).
        Raises SettingsError, naming the variable, for a value of the wrong kind."""
        values: dict[str, Any] = {}
        for spec in specs():
            text = env.get(spec.variable)
            if text is not None:
                values[spec.field] = spec.from_text(text)
        for name, value in (overrides or {}).items():
            found = _BY_NAME.get(name)
            if found is not None:
                values[found.field] = found.from_value(value)
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """The settings a Flask config holds (what `as_config` put there)."""
        return cls.load({}, config)

    def as_config(self) -> dict[str, Any]:
        """Every setting by NAME, for `app.config` (`config["JOB_TTL"]`)."""
        return {spec.name: getattr(self, spec.field) for spec in specs()}


@dataclass(frozen=True)
class Spec:
    """How one setting is named, read and documented."""

    field: str  # the attribute of Settings: job_ttl
    name: str  # its key in app.config and in create_app's mapping: JOB_TTL
    variable: str  # its environment variable: ROUTER_JOB_TTL
    kind: type  # bool, int, float or str: how its text is read
    also: tuple[type, ...]  # further types create_app's mapping may give (a list of hosts)
    default: Any
    doc: str
    shown: str | None  # the default as docs/operations.md words it, when not the value

    def from_text(self, text: str) -> Any:
        """The value of the variable's `text`."""
        if self.kind is bool:
            return parse_bool(text, self.variable)
        if text == "":
            return self.default
        if self.kind is str:
            return text
        try:
            return self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise SettingsError(f"{self.variable} must be {what}; got {text!r}") from None

    def from_value(self, value: Any) -> Any:
        """A value given in create_app's mapping: text is read as the variable's would be;
        None is unset; any other value must already be of the setting's type."""
        if value is None:
            return self.default
        if isinstance(value, str):
            return self.from_text(value)
        if self.kind is bool and value in (0, 1):  # True, False, and LOG_JSON=1
            return bool(value)
        if self.kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if self.kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if tuple in self.also and isinstance(value, list | tuple):
            return tuple(value)
        raise SettingsError(
            f"{self.variable} ({self.name}) must be {self.kind.__name__}; got {value!r}"
        )


def _spec(f: Any, hint: Any) -> Spec:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = [a for a in args if a is not type(None)]
    kind, *also = kinds
    name = f.name.upper()
    return Spec(
        field=f.name,
        name=name,
        variable=f.metadata["env"] or f"ROUTER_{name}",
        kind=kind,
        also=tuple(typing.get_origin(a) or a for a in also),
        default=f.default,
        doc=f.metadata["doc"],
        shown=f.metadata["shown"],
    )


_HINTS = typing.get_type_hints(Settings)
_SPECS = tuple(_spec(f, _HINTS[f.name]) for f in fields(Settings))
_BY_NAME = {spec.name: spec for spec in _SPECS}


def specs() -> tuple[Spec, ...]:
    """Every setting, in the order of the table above."""
    return _SPECS


def spec(field_name: str) -> Spec:
    """The setting stored as `field_name` (`spec("job_ttl").variable` is ROUTER_JOB_TTL)."""
    return next(s for s in _SPECS if s.field == field_name)


#: The defaults, for code that needs one without loading anything (a keyword's default).
DEFAULTS = Settings()
