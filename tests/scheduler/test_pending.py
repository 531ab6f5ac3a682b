"""The sweep of flushes the store says are owed (scheduler/pending.py), against a real store and
a real Redis (database 9): what Redis lost, the store still knows."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from pushsync.contract import ChangeEvent, Key
from scheduler import pending
from store import repo
from store.db import session_scope
from store.models import Dataset, utcnow
from worker import coalesce

from ..conftest import IDENT, IDENT2, POOL


def _accepted(engine, ident, dataset, count, planned: bool, age: float):
    with session_scope(engine) as s:
        repo.accept(s, [ChangeEvent(POOL, ident, dataset, count)])
        if planned:
            repo.plan(s, [Key(POOL, ident, dataset)])
        s.execute(update(Dataset).where(Dataset.identity_id == ident, Dataset.dataset_name == dataset)
                  .values(updated_at=utcnow() - timedelta(seconds=age)))


def test_the_sweep_schedules_a_flush_for_each_count_accepted_long_ago_and_never_planned(
        store_settings, engine, retry_redis, monkeypatch):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL)
    _accepted(engine, IDENT, "forgotten", 4, planned=False, age=60)  # Redis lost its flush
    _accepted(engine, IDENT, "pushed", 5, planned=True, age=60)
    _accepted(engine, IDENT2, "in-its-window", 6, planned=False, age=0.2)  # its flush is still to come
    _accepted(engine, IDENT2, "due-soon", 7, planned=False, age=60)
    retry_redis.zadd(coalesce.FLUSH, {Key(POOL, IDENT2, "due-soon").text(): 1000})  # due long ago already
    assert pending.sweep(retry_redis) == 2
    flushes = {m.decode(): s for m, s in retry_redis.zrange(coalesce.FLUSH, 0, -1, withscores=True)}
    assert set(flushes) == {Key(POOL, IDENT, "forgotten").text(), Key(POOL, IDENT2, "due-soon").text()}
    assert all(due <= 1000 for due in flushes.values())  # due at once, whatever the hosts' clocks say
