"""Settings from the environment, read once and checked at start-up.

A bad value stops the program with one line naming the variable (see ``SettingsError``);
``Settings.redacted()`` is the only form that may be printed or logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from pushsync.redact import redact_url


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///pushsync.db"
    broker_url: str = "redis://localhost:6379/0"
    fcm_url: str = "https://fcm.googleapis.com"
    apns_production_url: str = "https://api.push.apple.com:443"
    apns_sandbox_url: str = "https://api.sandbox.push.apple.com:443"
    ca_file: str | None = None
    batch_size: int = 500
    ingest_chunk: int = 100
    fcm_connections: int = 8
    apns_connections: int = 4
    send_timeout: float = 10.0
    retry_base: float = 1.0
    retry_cap: float = 300.0
    max_attempts: int = 8
    countdown_max: float = 5.0
    task_time_limit: int = 60
    visibility_timeout: int = 120
    inactive_device_days: float = 30.0
    dead_letter_days: float = 14.0
    publish_timeout: float = 20.0
    max_events_per_message: int = 1000
    ingest_batch_max: int = 200
    coalesce_window: float = 1.0
    # an ingest message whose store is out of reach waits a jittered backoff (at most this many
    # seconds) and tries again, this many times in all, before its events are dead-lettered
    ingest_tries: int = 240
    ingest_retry_cap: float = 30.0
    inline_delivery_max: int = 2000
    # development only: lets the push endpoints and a service account's token_uri be http://
    allow_insecure_endpoints: bool = False
    # Fernet keys for key material at rest, comma-separated; the first encrypts, all decrypt
    secret_key: str | None = None
    max_devices_per_identity: int = 100
    max_datasets_per_identity: int = 20
    max_token_length: int = 4096
    max_datasets_per_line: int = 20
    # the HTTP API: requests per second per API key and per identity (identity tokens)
    api_key_rate: int = 200
    api_identity_rate: int = 5
    api_token_max_ttl: float = 3600.0
    api_publish_wait: float = 5.0
    api_key_cache: float = 5.0
    api_threads: int = 16
    # Redis Sentinel: the master's name when PUSHSYNC_BROKER_URL lists sentinel:// addresses
    sentinel_master: str = "mymaster"
    # the Redis password, for a broker URL written without one (compose keeps it out of the URL)
    broker_password: str | None = None
    # `pushsync worker --health`: a worker whose queues hold messages but that finished no task
    # for this many seconds is reported stuck
    health_stall: float = 120.0
    # the store: the longest a statement may take (0: half the soft time limit, at most 20 s); a
    # lock wait gets half of it, connecting at most 10 s
    store_timeout: float = 0.0
    # how pushes travel: "curl" (libcurl's multi interface, HTTP/2 multiplexed), or the reference
    # transports: APNs "aioapns" (hyper-h2 on asyncio), FCM "aiohttp" (HTTP/1.1)
    apns_transport: str = "curl"
    fcm_transport: str = "curl"
    # a folder: each pool process writes its CPU per stage there (bench/budget.py; off when unset)
    stage_dir: str | None = None
    # `pushsync trace`: the newest entries kept per identity, and for how many days (either 0: off)
    trail_entries: int = 100
    trail_days: float = 7.0

    @property
    def redeliver_after(self) -> float:
        """Seconds after which a delivery batch that no worker settled is sent again: longer than
        a message can be held unacknowledged (the visibility timeout) plus run (the time limit)."""
        return float(self.visibility_timeout + self.task_time_limit)

    @property
    def store_statement_timeout(self) -> float:
        """Seconds a store statement (or a wait for a row lock) may take before the store cancels
        it: well inside the soft time limit, so that a slow store fails a task's transaction
        (transient: retried) before Celery's time limits do."""
        return self.store_timeout or min(20.0, self.soft_time_limit / 2)

    @property
    def soft_time_limit(self) -> int:  # seconds: SoftTimeLimitExceeded is raised in the task
        return max(1, self.task_time_limit - 5)

    @property
    def send_bound(self) -> float:
        """Seconds a delivery waits for its sends (then Stalled), inside the soft time limit."""
        return min(self.send_timeout * 3 + 30, self.soft_time_limit * 0.8)

    def keyring(self):
        """The keys that seal and open push credentials at rest (PUSHSYNC_SECRET_KEY)."""
        from pushsync.secrets import Keyring

        return Keyring.from_setting(self.secret_key)

    def redacted(self) -> dict[str, object]:
        out = asdict(self)
        out["database_url"] = redact_url(self.database_url)
        out["broker_url"] = redact_url(self.broker_url)
        if self.broker_password:
            out["broker_password"] = "***"
        if self.secret_key:
            out["secret_key"] = f"*** ({len(self.secret_key.replace(',', ' ').split())} keys)"
        return out


# the transports each platform's sender can use (PUSHSYNC_*_TRANSPORT)
TRANSPORTS = {"PUSHSYNC_APNS_TRANSPORT": ("aioapns", "curl"), "PUSHSYNC_FCM_TRANSPORT": ("aiohttp", "curl")}

# variable name -> (field, kind, lower bound for numbers)
_VARS: dict[str, tuple[str, str, float | None]] = {
    "PUSHSYNC_DATABASE_URL": ("database_url", "db_url", None),
    "PUSHSYNC_BROKER_URL": ("broker_url", "redis_url", None),
    "PUSHSYNC_FCM_URL": ("fcm_url", "http_url", None),
    "PUSHSYNC_APNS_PRODUCTION_URL": ("apns_production_url", "http_url", None),
    "PUSHSYNC_APNS_SANDBOX_URL": ("apns_sandbox_url", "http_url", None),
    "PUSHSYNC_CA_FILE": ("ca_file", "file", None),
    "PUSHSYNC_BATCH_SIZE": ("batch_size", "int", 1),
    "PUSHSYNC_INGEST_CHUNK": ("ingest_chunk", "int", 1),
    "PUSHSYNC_FCM_CONNECTIONS": ("fcm_connections", "int", 1),
    "PUSHSYNC_APNS_CONNECTIONS": ("apns_connections", "int", 1),
    "PUSHSYNC_SEND_TIMEOUT": ("send_timeout", "float", 0.1),
    "PUSHSYNC_RETRY_BASE": ("retry_base", "float", 0.0),
    "PUSHSYNC_RETRY_CAP": ("retry_cap", "float", 0.0),
    "PUSHSYNC_MAX_ATTEMPTS": ("max_attempts", "int", 1),
    "PUSHSYNC_COUNTDOWN_MAX": ("countdown_max", "float", 0.0),
    "PUSHSYNC_TASK_TIME_LIMIT": ("task_time_limit", "int", 5),
    "PUSHSYNC_VISIBILITY_TIMEOUT": ("visibility_timeout", "int", 6),
    "PUSHSYNC_STORE_TIMEOUT": ("store_timeout", "float", 0),
    "PUSHSYNC_INACTIVE_DEVICE_DAYS": ("inactive_device_days", "float", 0.0),
    "PUSHSYNC_DEAD_LETTER_DAYS": ("dead_letter_days", "float", 0.0),
    "PUSHSYNC_PUBLISH_TIMEOUT": ("publish_timeout", "float", 0.0),
    "PUSHSYNC_MAX_EVENTS_PER_MESSAGE": ("max_events_per_message", "int", 1),
    "PUSHSYNC_INGEST_BATCH_MAX": ("ingest_batch_max", "int", 1),
    "PUSHSYNC_COALESCE_WINDOW": ("coalesce_window", "float", 0.0),
    "PUSHSYNC_INGEST_TRIES": ("ingest_tries", "int", 1),
    "PUSHSYNC_INGEST_RETRY_CAP": ("ingest_retry_cap", "float", 0.0),
    "PUSHSYNC_INLINE_DELIVERY_MAX": ("inline_delivery_max", "int", 0),
    "PUSHSYNC_ALLOW_INSECURE_ENDPOINTS": ("allow_insecure_endpoints", "bool", None),
    "PUSHSYNC_SECRET_KEY": ("secret_key", "secret_key", None),
    "PUSHSYNC_MAX_DEVICES_PER_IDENTITY": ("max_devices_per_identity", "int", 1),
    "PUSHSYNC_MAX_DATASETS_PER_IDENTITY": ("max_datasets_per_identity", "int", 1),
    "PUSHSYNC_MAX_TOKEN_LENGTH": ("max_token_length", "int", 1),
    "PUSHSYNC_MAX_DATASETS_PER_LINE": ("max_datasets_per_line", "int", 1),
    "PUSHSYNC_API_KEY_RATE": ("api_key_rate", "int", 1),
    "PUSHSYNC_API_IDENTITY_RATE": ("api_identity_rate", "int", 1),
    "PUSHSYNC_API_TOKEN_MAX_TTL": ("api_token_max_ttl", "float", 1.0),
    "PUSHSYNC_API_PUBLISH_WAIT": ("api_publish_wait", "float", 0.0),
    "PUSHSYNC_API_KEY_CACHE": ("api_key_cache", "float", 0.0),
    "PUSHSYNC_API_THREADS": ("api_threads", "int", 1),
    "PUSHSYNC_SENTINEL_MASTER": ("sentinel_master", "name", None),
    "PUSHSYNC_BROKER_PASSWORD": ("broker_password", "password", None),
    "PUSHSYNC_HEALTH_STALL": ("health_stall", "float", 1.0),
    "PUSHSYNC_APNS_TRANSPORT": ("apns_transport", "transport", None),
    "PUSHSYNC_FCM_TRANSPORT": ("fcm_transport", "transport", None),
    "PUSHSYNC_STAGE_DIR": ("stage_dir", "name", None),
    "PUSHSYNC_TRAIL_ENTRIES": ("trail_entries", "int", 0),
    "PUSHSYNC_TRAIL_DAYS": ("trail_days", "float", 0.0),
}

# the example values of .env.example: a deployment that kept one is refused at start-up
PLACEHOLDER_MARKS = ("change-me", "changeme", "replace-me")


def is_placeholder(secret: str | None) -> bool:
    return bool(secret and any(mark in secret.lower() for mark in PLACEHOLDER_MARKS))

assert {f for f, _, _ in _VARS.values()} == {f.name for f in fields(Settings)}


def _parse(name: str, kind: str, low: float | None, raw: str) -> object:
    raw = raw.strip()
    if kind == "bool":
        if raw.lower() not in ("0", "1", "true", "false", "yes", "no"):
            raise SettingsError(f"{name}: expected true or false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if kind in ("int", "float"):
        try:
            value = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
        if low is not None and value < low:
            raise SettingsError(f"{name}: must be at least {low}, got {raw!r}")
        return value
    if kind == "secret_key":
        from pushsync.secrets import Keyring, SecretError

        try:
            Keyring.from_setting(raw)
        except SecretError as exc:
            raise SettingsError(str(exc)) from None
        return raw
    if kind == "password":
        if is_placeholder(raw):
            raise SettingsError(f"{name}: still the example's placeholder; set a real one")
        return raw
    if kind == "name":
        if not raw or any(c.isspace() for c in raw):
            raise SettingsError(f"{name}: expected a name without spaces, got {raw!r}")
        return raw
    if kind == "transport":
        if raw not in TRANSPORTS[name]:
            raise SettingsError(f"{name}: expected one of {', '.join(TRANSPORTS[name])}, got {raw!r}")
        return raw
    if kind == "file":
        if not os.path.isfile(raw):
            raise SettingsError(f"{name}: no such file {raw!r}")
        return raw
    return _parse_url(name, kind, raw)


def _parse_url(name: str, kind: str, raw: str) -> str:
    if kind == "redis_url" and raw.lower().startswith("sentinel://"):
        from pushsync.sentinel import parse_sentinel_url

        try:
            addr = parse_sentinel_url(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}: {exc}, in {redact_url(raw)!r}") from None
        if is_placeholder(addr.password):
            raise SettingsError(f"{name}: the password is still the example's placeholder; set a real one")
        return raw
    parts = urlsplit(raw)
    if kind == "redis_url" and parts.scheme not in ("redis", "rediss"):
        raise SettingsError(f"{name}: expected a redis://, rediss:// or sentinel:// URL, got {redact_url(raw)!r}")
    if kind in ("redis_url", "db_url") and is_placeholder(parts.password):
        raise SettingsError(f"{name}: the password is still the example's placeholder; set a real one")
    if kind == "http_url":
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"{name}: expected an https:// URL with a host, got {raw!r}")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise SettingsError(f"{name}: bad port in {raw!r}") from None
        return raw.rstrip("/")
    if kind == "db_url":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(raw)
        except ArgumentError:
            raise SettingsError(f"{name}: not a database URL: {redact_url(raw)!r}") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise SettingsError(f"{name}: only sqlite and postgresql are supported, got {url.drivername!r}")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    source = os.environ if env is None else env
    values: dict[str, Any] = {}  # each parsed to its field's kind by _parse
    for name, (field, kind, low) in _VARS.items():
        raw = source.get(name)
        if raw is None or raw.strip() == "":
            continue
        values[field] = _parse(name, kind, low, raw)
    settings = Settings(**values)
    if settings.visibility_timeout <= settings.task_time_limit:
        raise SettingsError(f"PUSHSYNC_VISIBILITY_TIMEOUT: must be longer than PUSHSYNC_TASK_TIME_LIMIT "
                            f"({settings.task_time_limit} s), or Redis re-delivers tasks that are still running")
    if settings.store_statement_timeout > 0.6 * settings.soft_time_limit:  # store/db.py's client bound < soft
        raise SettingsError(f"PUSHSYNC_STORE_TIMEOUT: must be at most 60 % of the soft time limit "
                            f"({settings.soft_time_limit} s, PUSHSYNC_TASK_TIME_LIMIT less 5), or a "
                            "slow store runs tasks out of time instead of failing their transaction")
    if settings.max_token_length > 4096:
        raise SettingsError("PUSHSYNC_MAX_TOKEN_LENGTH: at most 4096 (the store's column)")
    if settings.retry_cap < settings.retry_base:
        raise SettingsError("PUSHSYNC_RETRY_CAP: must be at least PUSHSYNC_RETRY_BASE")
    if not settings.allow_insecure_endpoints:
        for name, (field, kind, _low) in _VARS.items():
            if kind == "http_url" and getattr(settings, field).lower().startswith("http://"):
                raise SettingsError(f"{name}: must be an https:// URL (device tokens and keys travel on it); "
                                    "http:// is allowed only with PUSHSYNC_ALLOW_INSECURE_ENDPOINTS=true, "
                                    "for development")
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
