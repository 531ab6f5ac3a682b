"""In-process runs of the worker's production task bodies (``pushsync.ingest``, ``pushsync.deliver``)
against a real store and a real Redis, with the network replaced by a recording sender.

Only the last hop is replaced: ``worker.delivery._send`` (what ``send_batch`` awaits in the
worker's event loop) records each push and answers as the test says. Everything before it is
the code a worker runs: the ingest task's body with its message parsing, the fan-out and its
transaction, the outbox, inline delivery from the ingest run or a queued batch through the
deliver task, the send-time ownership query, outcomes, deactivations, dead letters, retries.
Queued batches and retries are captured instead of going through Celery, and the test decides
when they run (as a worker would, later)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from sqlalchemy import text

from pushsync.messages import DeliveryBatch
from pushsync.settings import get_settings
from store.db import engine_for
from store.migrate import upgrade
from worker import delivery, pools, tasks
from worker.senders.base import Kind, Outcome

REDIS_URL = "redis://127.0.0.1:6379/7"  # the in-process tests' database (see tests/conftest.store_settings)


@dataclass
class Push:
    pool: str  # the pool whose credentials the sender was given
    platform: str
    token: str
    device_id: str
    data: dict


@dataclass
class Run:
    """One store and what the sender saw; ``answer(push) -> Outcome kind`` decides each answer."""

    url: str
    answer: Callable[[Push], Kind] = lambda _p: Kind.OK
    sent: list[Push] = field(default_factory=list)
    delivered: list[Push] = field(default_factory=list)
    queued: list[dict] = field(default_factory=list)
    retries: list[dict] = field(default_factory=list)
    pools: set = field(default_factory=set)  # pools created and kept across examples

    def reset(self, keep_pools: bool = False) -> None:
        tables = ("outbox", "dead_letters", "subscriptions", "datasets", "devices")
        with engine_for(self.url).begin() as conn:
            for table in tables if keep_pools else (*tables, "pools"):
                conn.execute(text(f"DELETE FROM {table}"))
        if not keep_pools:
            pools._cache.clear()
            self.pools.clear()
        self.sent.clear()
        self.delivered.clear()
        self.queued.clear()
        self.retries.clear()

    def ingest(self, *args, **kwargs) -> dict:
        """The ingest task's body on one message's arguments (anything: they are untrusted)."""
        from worker.ingest import ingest

        return ingest(*args, **kwargs)

    def deliver(self, batch) -> dict:
        """The deliver task's body on one message (anything: it is untrusted)."""
        return tasks.deliver(batch)

    def drain(self) -> None:
        """Run what a push worker would: queued batches, then retries, until none is left."""
        while self.queued or self.retries:
            while self.queued:
                self.deliver(self.queued.pop(0))
            while self.retries:
                self.deliver(self.retries.pop(0))

    async def _send(self, creds, platform, requests, _settings):
        out = []
        for r in requests:
            push = Push(creds.pool_id, platform, r.token, r.device_id, dict(r.data))
            self.sent.append(push)
            kind = self.answer(push)
            if kind is Kind.OK:
                self.delivered.append(push)
            out.append(Outcome(r.device_id, kind, reason={Kind.OK: "", Kind.RETRY: "Unavailable",
                                                          Kind.TOKEN_INVALID: "Unregistered",
                                                          Kind.PERMANENT: "BadTopic"}[kind],
                               status={Kind.OK: 200, Kind.RETRY: 503, Kind.TOKEN_INVALID: 410,
                                       Kind.PERMANENT: 400}[kind], dataset=r.dataset))
        return out


def start(directory, monkeypatch, **settings: str) -> Run:
    """A migrated SQLite store (in memory-backed /dev/shm when there is one) and this process's
    settings pointed at it; coalescing off, so that each message's pushes go out at once."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(directory)
    path = os.path.join(base, f"pushsync-prop-{os.getpid()}-{abs(hash(str(directory)))}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    url = f"sqlite:///{path}"
    upgrade(url)
    env = {"PUSHSYNC_DATABASE_URL": url, "PUSHSYNC_BROKER_URL": REDIS_URL, "PUSHSYNC_COALESCE_WINDOW": "0",
           "PUSHSYNC_MAX_ATTEMPTS": "3", "PUSHSYNC_RETRY_BASE": "0", "PUSHSYNC_RETRY_CAP": "0",
           **settings}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    redis.Redis.from_url(REDIS_URL).flushdb()
    run = Run(url)
    monkeypatch.setattr(delivery, "_send", run._send)
    monkeypatch.setattr(tasks, "enqueue", lambda _platform, batch: run.queued.append(batch))
    monkeypatch.setattr(tasks, "schedule_retry",
                        lambda batch, _wait: run.retries.append(DeliveryBatch.to_json(batch)))
    return run


def stop(run: Run) -> None:
    engine_for(run.url).dispose()
    path = run.url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    redis.Redis.from_url(REDIS_URL).flushdb()
    get_settings.cache_clear()


def run_examples(seed_value: int, examples: int, strategies: dict, body, prepare=None, **settings_env) -> dict:
    """One spawned process's share of a property: ``prepare(run)`` once (returns extra keyword
    arguments for ``body``, and for ``strategies`` when it is a function of them), then
    ``body(run, counts, **drawn, **extra)`` for each example. The
    falsifying example, if any, comes back in ``counts["error"]`` (the exception's notes)."""
    import logging
    import tempfile
    import traceback
    from pathlib import Path

    import pytest
    from hypothesis import HealthCheck, given, seed
    from hypothesis import settings as hyp_settings

    from tests.conftest import TEST_SECRET_KEY

    os.environ["PUSHSYNC_SECRET_KEY"] = TEST_SECRET_KEY
    logging.getLogger("pushsync").setLevel(logging.ERROR)  # thousands of expected warnings
    mp = pytest.MonkeyPatch()
    run = start(Path(tempfile.mkdtemp(prefix="pushsync-prop-")), mp, **settings_env)
    counts: dict = {"examples": 0, "error": None}
    extra = prepare(run) if prepare else {}
    if callable(strategies):  # strategies that draw from what ``prepare`` made (its device ids)
        strategies = strategies(**extra)

    @hyp_settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
    @seed(seed_value)
    @given(**strategies)
    def prop(**drawn):
        body(run, counts, **drawn, **extra)
        counts["examples"] += 1

    try:
        prop()
    except BaseException:
        counts["error"] = traceback.format_exc()
    finally:
        stop(run)
        mp.undo()
    return counts


def run_in_processes(child, total: int, processes: int = 2) -> list[dict]:
    """``total`` examples over ``processes`` spawned processes (this machine's cores: a forked
    child would inherit the parent's threads), each with its own store and seed; the seeds are
    printed so that a failure can be replayed."""
    import multiprocessing
    import random
    from concurrent.futures import ProcessPoolExecutor

    seeds = [random.getrandbits(32) for _ in range(processes)]
    print(f"seeds {seeds}, {total} examples")
    share = -(-total // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(child, seeds, [share] * processes))
    errors = [f"seed {sd}:\n{r['error']}" for sd, r in zip(seeds, results, strict=True) if r["error"]]
    assert not errors, "\n".join(errors)
    return results
