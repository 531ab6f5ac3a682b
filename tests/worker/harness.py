"""In-process runs of the worker's production code (``worker.ingest.run``, ``worker.delivery``)
against a real store and a real Redis, with the network replaced by a recording sender.

The worker's context (``worker.context.Context``) is built here as a worker builds it, with three
parts of the test's own: the senders (the last hop: each push recorded and answered as the test
says), what publishes to the broker (delivery batches, retries and run triggers are captured, and
the test decides when they run, as a worker would, later) and, where a test wants one, the clock.
Everything else is the code a worker runs: ingest messages published by the real producer onto the
real ``events`` list, taken by the atomic step, read, windowed, the transaction, the outbox, inline
delivery or a queued batch, the send-time ownership query, outcomes, deactivations, dead letters,
retries."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import redis
from sqlalchemy import text

from pushsync.messages import DeliveryBatch
from pushsync.queues import EVENTS_QUEUE, INGEST_TASK, producer_app
from pushsync.settings import get_settings
from store.db import engine_for, session_scope
from store.migrate import upgrade
from worker import delivery, ingest, metrics
from worker.context import Context
from worker.senders.base import Kind, Outcome

REDIS_URL = "redis://127.0.0.1:6379/7"  # the in-process tests' database (see tests/conftest.store_settings)
# the databases of the processes a property runs in side by side (run_in_processes): one each
PROCESS_DBS = (7, 8)


@dataclass
class Push:
    pool: str  # the pool whose credentials the sender was given
    platform: str
    token: str
    device_id: str
    data: dict


class Clock:
    """A clock the test moves: windows, leases and retry waits all read it."""

    def __init__(self, start: float | None = None):
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Publisher:
    """What a worker would publish to the broker, kept for the test to run when it likes."""

    def __init__(self, run: Run):
        self.run = run

    def deliver(self, batch: DeliveryBatch) -> None:
        self.run.queued.append(batch.to_json())

    def retry(self, batch: DeliveryBatch, _wait: float) -> None:
        self.run.retries.append(batch.to_json())

    def trigger(self) -> bool:
        self.run.triggers += 1
        return True


class Senders:
    """The last hop: records each push, answers it as ``run.answer`` says."""

    def __init__(self, run: Run):
        self.run = run

    async def send(self, creds, platform, requests):
        out = []
        for r in requests:
            push = Push(creds.pool_id, platform, r.token, r.device_id, dict(r.data))
            self.run.sent.append(push)
            kind = self.run.answer(push)
            if kind is Kind.OK:
                self.run.delivered.append(push)
            out.append(Outcome(r.device_id, kind, reason={Kind.OK: "", Kind.RETRY: "Unavailable",
                                                          Kind.TOKEN_INVALID: "Unregistered",
                                                          Kind.PERMANENT: "BadTopic"}[kind],
                               status={Kind.OK: 200, Kind.RETRY: 503, Kind.TOKEN_INVALID: 410,
                                       Kind.PERMANENT: 400}[kind], dataset=r.dataset))
        return out

    async def close(self):
        pass


@dataclass
class Run:
    """One store and what the sender saw; ``answer(push) -> Outcome kind`` decides each answer."""

    url: str
    answer: Callable[[Push], Kind] = lambda _p: Kind.OK
    sent: list[Push] = field(default_factory=list)
    delivered: list[Push] = field(default_factory=list)
    queued: list[dict] = field(default_factory=list)
    retries: list[dict] = field(default_factory=list)
    triggers: int = 0
    pools: set = field(default_factory=set)  # pools created and kept across examples
    ctx: Context | None = None
    clock: Clock | None = None
    store_scope: Callable | None = None

    def build(self, clock: Clock | None = None) -> Context:
        self.clock = clock
        client = redis.Redis.from_url(get_settings().broker_url)
        self.store_scope = partial(session_scope, engine_for(self.url))
        self.ctx = Context(get_settings(), client, Publisher(self), session_scope=self.store_scope,
                           clock=clock, senders=Senders(self))
        return self.ctx

    def set(self, **changes) -> None:
        """Other settings for the runs from now on (as a worker restarted with them would have)."""
        self.ctx.settings = dataclasses.replace(self.ctx.settings, **changes)

    def reset(self, keep_pools: bool = False) -> None:
        tables = ("outbox", "dead_letters", "subscriptions", "datasets", "devices")
        with engine_for(self.url).begin() as conn:
            for table in tables if keep_pools else (*tables, "pools"):
                conn.execute(text(f"DELETE FROM {table}"))
        if not keep_pools:
            self.ctx.pools.clear()
            self.pools.clear()
        self.ctx.redis.flushdb()
        self.sent.clear()
        self.delivered.clear()
        self.queued.clear()
        self.retries.clear()

    def publish(self, *args, **kwargs) -> None:
        """One ingest message onto ``events`` as any producer sends it (anything: it is untrusted)."""
        _producer().send_task(INGEST_TASK, args=list(args), kwargs=kwargs, queue=EVENTS_QUEUE)

    def runs(self) -> dict:
        """Ingest runs until one finds nothing to take (what the dispatcher starts): their results."""
        total: dict = {}
        for _ in range(1000):
            out = ingest.run(self.ctx, metrics.Recorder()).as_dict()
            for k, v in out.items():
                total[k] = total.get(k, 0) + v
            if not self._work_waiting():
                return total
        raise AssertionError("ingest runs never ran out of work")

    def _work_waiting(self) -> bool:
        work, _triggers, _next = self.ctx.intake.status()
        return work

    def ingest(self, *args, **kwargs) -> dict:
        """One message published, then the runs a worker would make of it."""
        self.publish(*args, **kwargs)
        return self.runs()

    def deliver(self, batch) -> dict:
        """The deliver task's body on one message (anything: it is untrusted)."""
        return delivery.deliver_message(self.ctx, batch, metrics.Recorder()).as_dict()

    def drain(self) -> None:
        """Run what a push worker would: queued batches, then retries, until none is left."""
        while self.queued or self.retries:
            while self.queued:
                self.deliver(self.queued.pop(0))
            while self.retries:
                self.deliver(self.retries.pop(0))


_producer_app = None


def _producer():
    global _producer_app
    if _producer_app is None:
        _producer_app = producer_app()
    return _producer_app


def start(directory, monkeypatch, clock: Clock | None = None, redis_url: str = REDIS_URL, **settings: str) -> Run:
    """A migrated SQLite store (in memory-backed /dev/shm when there is one), this process's
    settings pointed at it (coalescing off unless ``settings`` says otherwise, so that each
    message's pushes go out at once) and a context built on them."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(directory)
    path = os.path.join(base, f"pushsync-prop-{os.getpid()}-{abs(hash(str(directory)))}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    url = f"sqlite:///{path}"
    upgrade(url)
    env = {"PUSHSYNC_DATABASE_URL": url, "PUSHSYNC_BROKER_URL": redis_url, "PUSHSYNC_COALESCE_WINDOW": "0",
           "PUSHSYNC_MAX_ATTEMPTS": "3", "PUSHSYNC_RETRY_BASE": "0", "PUSHSYNC_RETRY_CAP": "0",
           **settings}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    redis.Redis.from_url(redis_url).flushdb()
    run = Run(url)
    run.build(clock)
    return run


def stop(run: Run) -> None:
    engine_for(run.url).dispose()
    path = run.url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    run.ctx.redis.flushdb()
    get_settings.cache_clear()


def run_examples(seed_value: int, examples: int, strategies: dict, body, prepare=None, redis_db: int = 7,
                 **settings_env) -> dict:
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
    clock = settings_env.pop("clock", None)
    run = start(Path(tempfile.mkdtemp(prefix="pushsync-prop-")), mp, clock=clock,
                redis_url=f"redis://127.0.0.1:6379/{redis_db}", **settings_env)
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
    child would inherit the parent's threads), each with its own store, Redis database and seed:
    ``child(seed, examples, redis_db)``. The seeds are printed so that a failure can be replayed."""
    import multiprocessing
    import random
    from concurrent.futures import ProcessPoolExecutor

    seeds = [random.getrandbits(32) for _ in range(processes)]
    print(f"seeds {seeds}, {total} examples")
    share = -(-total // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(child, seeds, [share] * processes, PROCESS_DBS[:processes]))
    errors = [f"seed {sd}:\n{r['error']}" for sd, r in zip(seeds, results, strict=True) if r["error"]]
    assert not errors, "\n".join(errors)
    return results
