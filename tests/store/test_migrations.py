"""The migrations on SQLite and PostgreSQL: they make exactly the models' schema, and 0005 keeps
a count that an older worker may still have held in a coalescing window."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from store.migrate import upgrade
from store.models import Base, utcnow

from ..conftest import POOL, _ensure_pg_database

PG_MIGRATIONS_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/pushsync_migrations"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/m.db"
    _ensure_pg_database()
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS pushsync_migrations WITH (FORCE)"))
        conn.execute(text("CREATE DATABASE pushsync_migrations"))
    admin.dispose()
    return PG_MIGRATIONS_URL


def test_the_migrations_make_the_models_schema(empty_url):
    upgrade(empty_url)
    engine = create_engine(empty_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_0005_leaves_recent_counts_unplanned_and_the_rest_planned(empty_url):
    upgrade(empty_url, "0004")
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pools (id, created_at, updated_at) VALUES (:p, :t, :t)"),
                     {"p": POOL, "t": utcnow()})
        for name, age in (("old", timedelta(days=1)), ("recent", timedelta(seconds=5))):
            conn.execute(text("INSERT INTO datasets (pool_id, identity_id, dataset_name, sync_count, updated_at) "
                              "VALUES (:p, 'us-east-1:aa', :d, 7, :t)"), {"p": POOL, "d": name, "t": utcnow() - age})
    upgrade(empty_url)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT dataset_name, planned_count FROM datasets")).all())
    engine.dispose()
    # the recent one is pushed again by the scheduler's sweep: a duplicate at worst, never a loss
    assert rows == {"old": 7, "recent": None}
