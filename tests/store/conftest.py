"""The store tests' pools, and racing processes (each with its own engine, started together)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from store import repo
from store.db import session_scope

from ..conftest import POOL, POOL2


@pytest.fixture
def pools(engine):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL)
        repo.upsert_pool(s, POOL2)
    return engine


def run_racers(target, args_list):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, out)) for args in args_list]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results
