"""The worker tests' shared pieces: an ingest run's context on the test store and Redis database 7."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from store import repo
from store.db import session_scope
from worker import ingest, intake, metrics

from ..conftest import IDENT, POOL
from ..e2e.harness import Emulator
from . import harness


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulators in a process of their own, one per test module (the sender tests)."""
    emu = Emulator(tmp_path_factory.mktemp("emulator"))
    yield emu
    emu.stop()

FCM_ONLY = {"type": "service_account", "project_id": "p", "private_key": "k", "client_email": "e",
            "token_uri": "https://t"}


@pytest.fixture
def run(store_settings, engine):
    r = harness.Run(store_settings)
    r.build(harness.Clock())
    r.set(inline_delivery_max=0)  # every batch to the queues, to see them
    r.ctx.redis.flushdb()
    yield r
    r.ctx.redis.flushdb()


def _seeded(engine, count=3):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        idents = [f"{IDENT[:-4]}{n:04d}" for n in range(count)]
        for n, ident in enumerate(idents):
            repo.subscribe(s, POOL, ident, ["notes"], repo.register_device(s, POOL, ident, "GCM", f"tok-{n}"))
    return idents


def _ev(ident, n=4, ds="notes"):
    return {"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": n}


def _once(run) -> dict:
    return ingest.run(run.ctx, metrics.Recorder()).as_dict()


def _nothing_left(run) -> bool:
    c = run.ctx.redis
    return all(c.llen(q) == 0 for q in intake.PRIORITY_LISTS) and c.zcard(intake.DUE) == 0 \
        and c.hlen(intake.INFLIGHT) == 0 and c.scard(intake.LEASED) == 0


def _letters(engine) -> list[dict]:
    with session_scope(engine) as s:
        return repo.list_dead_letters(s)


def repo_device(engine, ident):
    with engine.connect() as conn:
        return conn.execute(text("SELECT id FROM devices WHERE identity_id = :i"), {"i": ident}).scalar_one()


