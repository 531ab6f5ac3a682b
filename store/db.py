"""Engines and sessions. SQLite gets WAL and a busy timeout so the CLI, workers and the
scheduler can write at once; PostgreSQL is used as is."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _private_sqlite_file(url: str) -> None:
    """Create the store file 0600 (it holds device tokens, and pool credentials even when they
    are encrypted), and take group and world access away from one that has it. SQLite creates
    the -wal and -shm files with the database file's permissions."""
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:  # no such directory, no permission: SQLite says so in its own words when it connects
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(name, stat.S_IMODE(mode) & 0o700)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # pysqlite's own BEGIN handling defers the write lock; take it at BEGIN instead
            # (BEGIN IMMEDIATE) so that two writers wait on the busy timeout rather than
            # failing with "database is locked" when a read transaction tries to upgrade.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver this project installs; plain postgresql:// would mean psycopg2.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # No server-side prepared statements: after five runs psycopg prepares a statement and
    # PostgreSQL may settle on a generic plan made while a table was small, which turns the
    # token lookups of a bulk import into sequential scans.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         connect_args={"prepare_threshold": None})


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    from pushsync.settings import get_settings

    return engine_for(get_settings().database_url)


@lru_cache(maxsize=16)
def _factory(engine: Engine) -> sessionmaker:
    # one per engine: sessionmaker makes a Session class, and a new class per call cost SQLAlchemy
    # its event set-up on every transaction
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with _factory(engine or get_engine())() as session, session.begin():
        yield session
