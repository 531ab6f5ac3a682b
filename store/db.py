"""Engines and sessions. SQLite gets WAL and a busy timeout so the CLI, workers and the
scheduler can write at once; PostgreSQL gets a bound on every wait (connect, statements, locks,
a peer gone from the network)."""

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


# What the store may take, when the caller does not say (the settings' store_statement_timeout)
DEFAULT_TIMEOUT = 20.0


def _pg_bounds(timeout: float) -> dict:
    """libpq's bounds: connecting (the whole start-up, not only TCP), TCP keepalives and
    TCP_USER_TIMEOUT (a peer that vanished from the network: unanswered data or probes end the
    connection instead of a wait of many minutes), and the server's statement, lock and idle-in-
    transaction timeouts. A store that accepts and never answers is bounded on this side
    (``client_bound``)."""
    ms = int(timeout * 1000)
    bounds: dict[str, int | str] = {"connect_timeout": max(2, min(10, int(timeout))) if ms > 0 else 10, "keepalives": 1,
              "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": max(ms, 10_000)}
    if ms > 0:  # 0: no bound on statements (migrations, which may rebuild a large table)
        # a lock wait ends first (half the bound), so that it fails as what it is
        bounds["options"] = (f"-c statement_timeout={ms} -c lock_timeout={ms // 2} "
                             f"-c idle_in_transaction_session_timeout={max(ms * 3, 60_000)}")
    return bounds


def client_bound(timeout: float) -> float | None:
    """How long a round trip to PostgreSQL may wait on this side: past the server's own statement
    timeout (which, when the server answers at all, ends a slow statement first and says why), and
    for a server that never answers (frozen, or behind a link that swallows packets: its kernel, or
    a proxy's, still acknowledges them, so neither keepalives nor TCP_USER_TIMEOUT see anything)."""
    # at most 1.5 x the timeout: under the soft time limit, which the settings keep at least
    # 1 / 0.6 times the store timeout
    return timeout * 1.25 + min(1.0, timeout / 4) if timeout > 0 else None


@lru_cache(maxsize=1)
def _bounded_connection_class():
    import psycopg
    from psycopg import errors

    class BoundedConnection(psycopg.Connection):
        """psycopg's connection with a deadline on every wait (a statement, a commit, a rollback);
        past it the connection is closed (its state is unknown) and the caller gets an
        OperationalError, which SQLAlchemy takes as a disconnect and the tasks as transient."""

        wait_timeout: float | None = None

        def wait(self, gen, interval=0.1, timeout=None):
            bound = timeout if timeout is not None else self.wait_timeout
            try:
                return super().wait(gen, interval, bound)
            except errors._WaitTimeout:
                if timeout is not None:  # psycopg's own bounded wait: its own answer
                    raise
                self.pgconn.finish()
                raise psycopg.OperationalError(f"the store did not answer within {bound:g} s") from None

    return BoundedConnection


def make_engine(url: str, timeout: float = DEFAULT_TIMEOUT) -> Engine:
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
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=timeout,
                           connect_args={"prepare_threshold": None, **_pg_bounds(timeout)})
    connection_class, wait = _bounded_connection_class(), client_bound(timeout)

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect, _record, cargs, cparams):
        conn = connection_class.connect(*cargs, **cparams)
        conn.wait_timeout = wait
        return conn

    return engine


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL in a process (two engines on one SQLite file would each hold their own
    connections and locks), bounded by the settings' store timeout."""
    from pushsync.settings import SettingsError, get_settings

    try:
        timeout = get_settings().store_statement_timeout
    except SettingsError:  # the caller meets the settings' error where it reads them
        timeout = DEFAULT_TIMEOUT
    return make_engine(url, timeout)


@contextmanager
def unbounded(conn) -> Iterator[None]:
    """No statement or lock timeout on this connection while the block runs (a migration may
    rebuild a table); the bounds come back after it (RESET: to the connection's start-up values)."""
    pg = conn.dialect.name == "postgresql"
    if pg:  # committed at once: the session keeps them, the block's own transaction starts clean
        conn.exec_driver_sql("SET statement_timeout = 0")
        conn.exec_driver_sql("SET lock_timeout = 0")
        conn.commit()
        driver = conn.connection.driver_connection
        bound, driver.wait_timeout = driver.wait_timeout, None
    try:
        yield
    finally:
        if pg:
            driver.wait_timeout = bound
            conn.rollback()  # what a failed block left (an aborted transaction would refuse the RESET)
            conn.exec_driver_sql("RESET statement_timeout")
            conn.exec_driver_sql("RESET lock_timeout")
            conn.commit()


# how long `pushsync stats` and the metrics exporter wait for the store before they call it down
# (a Prometheus scrape gives up after 10 s)
PROBE_TIMEOUT = 2.0


@lru_cache(maxsize=8)
def _probe_engine(url: str) -> Engine:
    return make_engine(url, PROBE_TIMEOUT)


def probe(url: str) -> str | None:
    """None if the store answers a ``SELECT 1`` within a few seconds, else why not, in one line
    (connect 2 s, the answer about 3.5 s: an operator's view must not hang with the store)."""
    from sqlalchemy import text

    try:
        with _probe_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # anything: the store is not answering as it should
        from pushsync.messages import exception_text

        return exception_text(exc)


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
