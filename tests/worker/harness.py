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

    def reset(self) -> None:
        with engine_for(self.url).begin() as conn:
            for table in ("outbox", "dead_letters", "subscriptions", "datasets", "devices", "pools"):
                conn.execute(text(f"DELETE FROM {table}"))
        pools._cache.clear()
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
