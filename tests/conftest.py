"""Shared fixtures. Stores: a fresh SQLite file per test, and the PostgreSQL database
``pushsync_test`` (created if missing, emptied between tests) on the local server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("PUSHSYNC_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_URL = os.environ.get("PUSHSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/pushsync_test")
ROOT = Path(__file__).resolve().parent.parent
PUSHSYNC = str(Path(sys.executable).with_name("pushsync"))

POOL = "us-east-1:177a950c-2c08-43f0-9983-28727e0e1a11"
POOL2 = "eu-west-1:0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"
IDENT = "us-east-1:23ec4050-6aea-7089-a2dd-08002ec5b1c3"
IDENT2 = "us-east-1:5d1e6c3a-0f0e-4b5d-9a2b-77a0f2c4d111"

# the tests' key for credentials at rest: this process's settings, and every pushsync the
# tests start (their environments are built without the shell's PUSHSYNC_ settings)
TEST_SECRET_KEY = "3kdxUf0lmB1EL3hZ6hTZ9xQnWwV0t9p5h8c8m1y4sX0="
os.environ["PUSHSYNC_SECRET_KEY"] = TEST_SECRET_KEY


def _ensure_pg_database() -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = 'pushsync_test'")).scalar():
            conn.execute(text("CREATE DATABASE pushsync_test"))
    admin.dispose()


_pg_ready = False


def _prepare_pg() -> str:
    global _pg_ready
    from store.db import engine_for
    from store.migrate import upgrade

    if not _pg_ready:
        _ensure_pg_database()
        upgrade(PG_URL)
        _pg_ready = True
    with engine_for(PG_URL).begin() as conn:
        conn.execute(text("TRUNCATE outbox, dead_letters, subscriptions, datasets, devices, pools CASCADE"))
    return PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A migrated, empty store of each supported kind."""
    if request.param == "sqlite":
        from store.migrate import upgrade

        url = f"sqlite:///{tmp_path}/store.db"
        upgrade(url)
        return url
    return _prepare_pg()


@pytest.fixture
def engine(db_url):
    from store.db import engine_for

    return engine_for(db_url)


@pytest.fixture
def store_settings(db_url, monkeypatch):
    """This process's settings pointed at the test store (and Redis database 7), for code that
    opens its own sessions (``store.db.session_scope()`` without an engine)."""
    from pushsync import settings

    monkeypatch.setenv("PUSHSYNC_DATABASE_URL", db_url)
    monkeypatch.setenv("PUSHSYNC_BROKER_URL", "redis://127.0.0.1:6379/7")
    settings.get_settings.cache_clear()
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/7")
    client.flushdb()  # coalescing windows and figures of an earlier test
    yield db_url
    client.flushdb()
    settings.get_settings.cache_clear()


RETRY_REDIS_URL = "redis://127.0.0.1:6379/9"
RETRY_DEV = "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def retry_redis():
    """Redis database 9, empty before and after: the retry set and the scheduler's lock."""
    import redis

    c = redis.Redis.from_url(RETRY_REDIS_URL)
    c.flushdb()
    yield c
    c.flushdb()


def retry_batch(platform: str, n: int, attempt: int = 2) -> dict:
    """A delivery batch as deliver writes it to the retry set; n tells batches apart."""
    return {"pool": POOL, "platform": platform, "items": [[RETRY_DEV, IDENT, "notes", n]], "attempt": attempt}


def notified(session, pool: str, identity: str, dataset: str, count: int) -> None:
    """The store as ingest leaves it once ``count`` of the dataset was accepted and its pushes planned."""
    from pushsync.contract import ChangeEvent
    from store import repo

    event = ChangeEvent(pool, identity, dataset, count)
    repo.accept(session, [event])
    repo.plan(session, [event.key])


def subscriptions_of(session, device_id: str) -> list[str]:
    """The datasets a device is subscribed to, read straight from the store's table."""
    from sqlalchemy import select

    from store.models import Subscription

    return sorted(session.execute(select(Subscription.dataset_name)
                                  .where(Subscription.device_id == device_id)).scalars())


def identity_of(session, device_id: str) -> str:
    from store.models import Device

    return session.get(Device, device_id).identity_id


def cli_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
    env["PUSHSYNC_SECRET_KEY"] = TEST_SECRET_KEY
    env["PUSHSYNC_DATABASE_URL"] = db_url
    env.update(extra)
    return env


def run_cli(db_url: str, *args: str, input: str | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PUSHSYNC, *args], capture_output=True, text=True, input=input,
                          env=env or cli_env(db_url), timeout=timeout)
