"""Every wait on the store is bounded (store/db.py): a statement that runs too long, a lock that is
not given up, a server that accepts a connection and never answers. Each ends within its bound as
an error the tasks treat as transient (retried later), never as a wait without end. PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from pushsync.settings import SettingsError, load_settings
from store.db import make_engine
from worker.errors import TRANSIENT

from ..conftest import PG_URL, _prepare_pg


@pytest.fixture
def bounded():
    _prepare_pg()
    engine = make_engine(PG_URL, timeout=1.0)
    yield engine
    engine.dispose()


def _fails_within(seconds: float, call) -> BaseException:
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError) as err:
        call()
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.1f} s"
    assert isinstance(err.value, TRANSIENT)
    return err.value


def test_a_statement_past_the_bound_is_cancelled_by_the_store(bounded):
    def slow():
        with bounded.connect() as conn:
            conn.execute(text("SELECT pg_sleep(10)"))
    assert "statement timeout" in str(_fails_within(4, slow))
    with bounded.connect() as conn:  # the pool's connection is still good for the next statement
        assert conn.execute(text("SELECT 1")).scalar() == 1


def test_a_lock_that_is_not_given_up_fails_the_waiter_within_the_bound(bounded):
    holder = make_engine(PG_URL, timeout=0)
    try:
        with holder.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(727272)"))

            def waits():
                with bounded.connect() as other:
                    other.execute(text("SELECT pg_advisory_lock(727272)"))
            assert "lock timeout" in str(_fails_within(4, waits))
            conn.execute(text("SELECT pg_advisory_unlock(727272)"))
    finally:
        holder.dispose()


def test_a_server_that_accepts_and_never_answers_fails_the_connect_within_the_bound():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept_and_stay_silent():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/pushsync_test", timeout=2.0)
    try:
        _fails_within(6, lambda: engine.connect().close())
        assert held, "the connection was accepted: the bound is on the start-up, not only on TCP"
    finally:
        stop.set()
        engine.dispose()
        for s in held:
            s.close()
        listener.close()


def test_the_store_timeout_is_checked_against_the_time_limits_at_start():
    assert load_settings({}).store_statement_timeout == 20.0
    assert load_settings({"PUSHSYNC_TASK_TIME_LIMIT": "15"}).store_statement_timeout == 5.0
    assert load_settings({"PUSHSYNC_TASK_TIME_LIMIT": "5"}).store_statement_timeout == 0.5  # the shortest limit
    assert load_settings({"PUSHSYNC_STORE_TIMEOUT": "30"}).store_statement_timeout == 30.0
    with pytest.raises(SettingsError, match="PUSHSYNC_STORE_TIMEOUT: must be at most 60 % of the soft time limit"):
        load_settings({"PUSHSYNC_STORE_TIMEOUT": "34"})
    from store.db import client_bound

    for limit in (5, 10, 15, 60, 600):  # the client-side bound ends before the soft limit, whatever is allowed
        s = load_settings({"PUSHSYNC_TASK_TIME_LIMIT": str(limit), "PUSHSYNC_VISIBILITY_TIMEOUT": str(limit + 60)})
        at_most = load_settings({"PUSHSYNC_TASK_TIME_LIMIT": str(limit), "PUSHSYNC_VISIBILITY_TIMEOUT": str(limit + 60),
                                 "PUSHSYNC_STORE_TIMEOUT": str(0.6 * s.soft_time_limit)})
        assert client_bound(s.store_statement_timeout) < s.soft_time_limit
        assert client_bound(at_most.store_statement_timeout) < s.soft_time_limit


def test_the_processes_engine_is_bounded_and_a_migration_leaves_it_so():
    """Migrations run without a statement bound (one may rebuild a table) on the process's own
    engine; the connection gets its bounds back afterwards, for what the process does next."""
    from store.db import engine_for
    from store.migrate import upgrade

    _prepare_pg()
    upgrade(PG_URL)  # on this process's engine for the URL
    engine = engine_for(PG_URL)
    with engine.connect() as conn:  # the pooled connection the migration ran on
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "20s"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "10s"


def test_a_block_that_fails_without_a_bound_gives_its_connection_back_bounded():
    """The error of a failed migration is the one that surfaces (not a refused RESET), and the
    connection is bounded again afterwards."""
    from store.db import engine_for, unbounded

    _prepare_pg()
    engine = engine_for(PG_URL)
    with engine.connect() as conn:
        with pytest.raises(sqlalchemy.exc.ProgrammingError, match="no_such_table"), unbounded(conn):
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
            conn.execute(text("SELECT * FROM no_such_table"))
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "20s"


def test_a_store_that_stops_answering_mid_connection_fails_the_statement_within_the_bound():
    """A pooled connection whose server goes silent (blackholed: nothing answers, nothing closes,
    this side's TCP sees a live peer): the statement, and the rollback after it, end within the
    client's bound as a transient error, not at a task's time limit; once the server answers
    again the engine serves from a fresh connection."""
    from store.db import client_bound
    from tests.e2e.proxy import CuttableProxy

    _prepare_pg()
    proxy = CuttableProxy(5432)
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{proxy.port}/pushsync_test", timeout=1.0)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        proxy.blackhole(True)
        time.sleep(0.2)

        def stalls():
            with engine.begin() as conn:  # the pooled connection; the failed block rolls back
                conn.execute(text("SELECT 1"))
        # the pool's pre-ping meets the silence first (the client bound), then the new connection
        # it opens (the connect timeout, 2 s)
        err = _fails_within(client_bound(1.0) + 2 + 1.5, stalls)
        assert "did not answer" in str(err) or "timeout" in str(err)
        proxy.blackhole(False)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 2")).scalar() == 2
    finally:
        proxy.blackhole(False)
        engine.dispose()
        proxy.close()


def test_a_block_without_a_statement_bound_has_no_client_bound_either():
    """A migration may wait on a long statement: the client-side deadline is lifted with the
    server's, and comes back after the block."""
    from store.db import unbounded

    _prepare_pg()
    engine = make_engine(PG_URL, timeout=0.5)
    try:
        with engine.connect() as conn:
            with unbounded(conn):
                conn.execute(text("SELECT pg_sleep(1.5)"))  # past both bounds of the engine
            with pytest.raises(sqlalchemy.exc.OperationalError):
                conn.execute(text("SELECT pg_sleep(3)"))
    finally:
        engine.dispose()
