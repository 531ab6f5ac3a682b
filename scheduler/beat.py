"""The scheduler: Celery beat with the schedule declared here, beside its jobs.

Exactly one scheduler should run per deployment. A second one is harmless: it holds no lock,
so it sends nothing and pumps nothing, and takes over within ``LOCK_TTL`` seconds if the
first one dies.

Besides the periodic tasks below (run by workers), the scheduler itself moves due retries
from the Redis retry set back to their queues, every ``PUMP_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import redis
from celery import beat

from pushsync.settings import get_settings
from worker import retry
from worker.app import app, queue_for

log = logging.getLogger("pushsync.scheduler")

PUMP_INTERVAL = 1.0
LOCK_KEY = "pushsync:scheduler:lock"
LOCK_TTL = 15

BEAT_SCHEDULE = {
    "prune-inactive-devices": {"task": "pushsync.prune_devices", "schedule": 3600.0,
                               "options": {"queue": "events"}},
    "trim-dead-letters": {"task": "pushsync.trim_dead_letters", "schedule": 3600.0,
                          "options": {"queue": "events"}},
    "record-queue-depths": {"task": "pushsync.record_queue_depths", "schedule": 15.0,
                            "options": {"queue": "events"}},
}

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class SchedulerLock:
    def __init__(self, client: redis.Redis, ttl: int = LOCK_TTL):
        self.client = client
        self.ttl = ttl
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False
        self._said: bool | None = None

    def hold(self) -> bool:
        """Take or renew the lock; False while another scheduler holds it."""
        if self.held and self.client.eval(_RENEW, 1, LOCK_KEY, self.token, self.ttl):
            return True
        got = bool(self.client.set(LOCK_KEY, self.token, nx=True, ex=self.ttl))
        if got != self._said:
            log.warning("scheduler lock %s", "taken: this scheduler is active" if got
                        else "held by another scheduler: standing by")
            self._said = got
        self.held = got
        return got

    def release(self) -> None:
        if self.held:
            self.client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                             "end return 0", 1, LOCK_KEY, self.token)
            self.held = False


def pump_retries(client: redis.Redis, send=None, now: float | None = None) -> int:
    """Move due retries back to their queues; returns how many were moved."""
    from worker.app import DELIVER_TASK, INGEST_TASK

    send = send or (lambda name, arg, queue: app.send_task(name, args=[arg], queue=queue))
    moved = 0
    while True:
        batch = retry.claim_due(client, now=now)
        for member, entry in batch:
            payload = entry["payload"]
            if entry["kind"] == "deliver":
                send(DELIVER_TASK, payload, queue_for(payload["platform"]))
            else:
                send(INGEST_TASK, payload, "events")
            retry.done(client, member)
            moved += 1
        if len(batch) < 500:
            return moved


class PushsyncScheduler(beat.Scheduler):
    """In-memory beat schedule (nothing written to disk) guarded by the Redis lock."""

    def __init__(self, *args, **kwargs):
        self.redis = redis.Redis.from_url(get_settings().broker_url)
        self.lock = SchedulerLock(self.redis)
        self._next_pump = 0.0
        super().__init__(*args, **kwargs)

    def setup_schedule(self):
        self.merge_inplace(BEAT_SCHEDULE)

    def tick(self, *args, **kwargs):
        try:
            active = self.lock.hold()
        except redis.RedisError as exc:
            log.warning("scheduler cannot reach Redis: %s", exc)
            return PUMP_INTERVAL
        if not active:
            return PUMP_INTERVAL
        if time.monotonic() >= self._next_pump:
            try:
                moved = pump_retries(self.redis)
                if moved:
                    log.info("moved %d due retries back to their queues", moved)
            except redis.RedisError as exc:
                log.warning("retry pump failed, will try again: %s", exc)
            self._next_pump = time.monotonic() + PUMP_INTERVAL
        return min(super().tick(*args, **kwargs), PUMP_INTERVAL)

    def close(self):
        self.lock.release()
        super().close()


def run() -> int:
    import scheduler.tasks  # noqa: F401 - registers the periodic tasks' names

    app.conf.beat_schedule = BEAT_SCHEDULE
    app.Beat(scheduler=PushsyncScheduler, max_interval=PUMP_INTERVAL, loglevel="INFO").run()
    return 0
