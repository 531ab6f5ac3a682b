"""A worker process's state, in one object built at start: the Redis client, the store's sessions,
the in-flight records and coalescing windows, the pool credentials and senders with their event
loop, what publishes to the broker; in the main process also the heartbeat and the ingest
dispatcher. ``worker.tasks`` builds one per process (``current``); tests build their own and pass
it to the plain functions (``worker.ingest.run``, ``worker.delivery.deliver``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from pushsync import broker
from pushsync.messages import DeliveryBatch
from pushsync.queues import DELIVER_TASK, RUN_TASK, RUNS_QUEUE, queue_for
from pushsync.settings import Settings, get_settings
from store.db import session_scope
from worker import aio, retry, stages
from worker.budget import Budget
from worker.coalesce import Windows
from worker.dispatch import Dispatcher
from worker.health import PROGRESS_KEY, Heartbeat, Progress
from worker.intake import Intake
from worker.lanes import Lanes
from worker.metrics import Recorder
from worker.pacing import Pacing
from worker.pools import KeyCheck, PoolCache
from worker.senders.cache import Senders
from worker.stages import stage

log = logging.getLogger("pushsync.worker")


class Publisher:
    """What leaves a worker through the broker: delivery batches, their retries, run triggers."""

    def __init__(self, app, client: redis.Redis, settings: Settings):
        self.app, self.client, self.settings = app, client, settings

    def deliver(self, batch: DeliveryBatch) -> None:
        self.app.send_task(DELIVER_TASK, args=[batch.to_json()], queue=queue_for(batch.platform))

    def retry(self, batch: DeliveryBatch, wait: float) -> None:
        """A short wait rides on a Celery countdown; a longer one waits in the retry set, which the
        scheduler pumps, because Redis re-delivers countdown messages held past the visibility
        timeout."""
        if wait <= self.settings.countdown_max:
            self.app.send_task(DELIVER_TASK, args=[batch.to_json()], queue=queue_for(batch.platform), countdown=wait)
        else:
            retry.schedule(self.client, "deliver", batch.to_json(), time.time() + wait)

    def trigger(self) -> bool:
        """Start an ingest run (any free pool process of any worker); False if the broker refused.
        Losing one costs a moment: the dispatcher publishes another while work waits."""
        try:
            self.app.send_task(RUN_TASK, queue=RUNS_QUEUE)
            return True
        except Exception as exc:
            log.warning("could not start an ingest run: %s", exc)
            return False


@dataclass
class Context:
    settings: Settings
    redis: redis.Redis
    publish: Publisher
    session_scope: Callable = session_scope
    # the test's clock; None in production, where windows, leases and due times are Redis's time
    clock: Callable[[], float] | None = None
    pools: PoolCache = field(default_factory=PoolCache)
    loop: aio.Loop = field(default_factory=aio.Loop)
    # None, the default, means: made in __post_init__ (tests pass their own); never None after it
    senders: Senders = None  # type: ignore[assignment]
    intake: Intake = None  # type: ignore[assignment]
    windows: Windows = None  # type: ignore[assignment]
    budget: Budget = None  # type: ignore[assignment]
    pacing: Pacing = None  # type: ignore[assignment]
    lanes: Lanes = None  # type: ignore[assignment]
    progress: Progress = None  # type: ignore[assignment]
    heartbeat: Heartbeat | None = None
    dispatcher: Dispatcher | None = None
    keycheck: KeyCheck | None = None
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self):
        self.senders = self.senders or Senders(self.settings)
        self.intake = self.intake or Intake(self.redis, self.settings.visibility_timeout, self.clock)
        self.windows = self.windows or Windows(self.redis, self.clock)
        self.budget = self.budget or Budget(self.redis, self.clock)
        self.pacing = self.pacing or Pacing(self.redis, self.clock)
        self.lanes = self.lanes or Lanes(self.redis, self.clock)
        self.progress = self.progress or Progress(self.redis)

    def now(self) -> float:
        """Seconds since the epoch, by the test's clock when there is one (what a message's age and
        the latency histogram are measured against)."""
        return self.clock() if self.clock else time.time()

    def flush_metrics(self, rec: Recorder) -> None:
        try:
            with stage("metrics"):
                rec.flush(self.redis)
        except redis.RedisError as exc:  # figures are worth less than the pushes: never fail a task on them
            log.warning("could not record metrics: %s", exc)

    def start_main(self, node: str, queues: list[str], ingests: bool, stall: float) -> None:
        """The main process's threads: the heartbeat, the check of the pools' credentials, and the
        dispatcher when the worker ingests."""
        client = broker.redis_client(self.settings, socket_timeout=5, socket_connect_timeout=3)
        try:
            client.hset(PROGRESS_KEY, node, time.time())  # a fresh start has made progress
        except redis.RedisError:
            pass
        self.heartbeat = Heartbeat(client, node, queues, interval=min(5.0, stall / 4))
        self.heartbeat.start()
        self.keycheck = KeyCheck(client, node, self.settings)
        self.keycheck.start()
        if ingests:
            # its own client: it blocks on Redis for up to a second at a time
            self.dispatcher = Dispatcher(Intake(client, self.settings.visibility_timeout, self.clock),
                                         self.publish.trigger)
            self.dispatcher.start()

    def stop_main(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.keycheck is not None:
            self.keycheck.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()

    def close(self) -> None:
        try:
            self.loop.run(self.senders.close(), timeout=10)
        except Exception:  # the process is going away; nothing to save
            pass


def build(app, settings: Settings | None = None) -> Context:
    settings = settings or get_settings()
    stages.configure(settings.stage_dir)
    client = broker.redis_client(settings)
    return Context(settings, client, Publisher(app, client, settings))


_current: Context | None = None


def current(app) -> Context:
    """This process's context, built on first use (a forked pool process builds its own)."""
    global _current
    if _current is None or _current.pid != os.getpid():
        _current = build(app)
    return _current
