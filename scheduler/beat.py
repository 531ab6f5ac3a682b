"""The scheduler: Celery beat with the schedule declared here, beside its jobs.

Exactly one scheduler should run per deployment. A second one is harmless: it holds no lock,
so it sends nothing and pumps nothing, and takes over within ``LOCK_TTL`` seconds if the
first one dies.

Besides the periodic tasks below (run by workers), the scheduler itself moves due retries
from the Redis retry set back to their queues, every ``PUMP_INTERVAL`` seconds, re-sends delivery
batches that no worker settled (``scheduler.outbox``) and schedules the flushes that the store says
are owed and Redis forgot (``scheduler.pending``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import redis
from celery import beat
from kombu.exceptions import OperationalError as KombuOperationalError

from pushsync import broker
from pushsync.messages import DeadLetter, DeliveryBatch, MessageError, RetryEntry
from pushsync.queues import DELIVER_TASK, RUNS_QUEUE, queue_for
from worker import retry
from worker.app import app

log = logging.getLogger("pushsync.scheduler")

PUMP_INTERVAL = 1.0
OUTBOX_INTERVAL = 10.0
LOCK_KEY = "pushsync:scheduler:lock"
LOCK_TTL = 15

BEAT_SCHEDULE = {
    "prune-inactive-devices": {"task": "pushsync.prune_devices", "schedule": 3600.0,
                               "options": {"queue": RUNS_QUEUE}},
    "trim-dead-letters": {"task": "pushsync.trim_dead_letters", "schedule": 3600.0,
                          "options": {"queue": RUNS_QUEUE}},
    "record-queue-depths": {"task": "pushsync.record_queue_depths", "schedule": 15.0,
                            "options": {"queue": RUNS_QUEUE}},
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
            log.info("scheduler lock %s", "taken: this scheduler is active" if got
                        else "held by another scheduler: standing by")
            self._said = got
        self.held = got
        return got

    def release(self) -> None:
        if self.held:
            self.client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                             "end return 0", 1, LOCK_KEY, self.token)
            self.held = False


def pump_retries(client: redis.Redis, send=None, now: float | None = None, dead_letter=None) -> int:
    """Move due retries back to their queues; returns how many were moved.

    An entry that does not parse as a retry of pushsync's is dead-lettered with the reason
    and taken out of the set; the pump goes on with the others."""
    send = send or (lambda name, arg, queue: app.send_task(name, args=[arg], queue=queue))
    dead_letter = dead_letter or _dead_letter
    moved = 0
    while True:
        batch = retry.claim_due(client, now=now)
        for member in batch:
            try:
                parsed = _parse(member)
            except MessageError as exc:
                parsed = None
                reason = str(exc)
            if parsed is not None:  # a failure to send (Redis, the broker) leaves it claimed: it comes back
                send(DELIVER_TASK, parsed.to_json(), queue_for(parsed.platform))
            else:
                try:
                    dead_letter(reason, member)
                except Exception:  # the store is away: leave it claimed, it comes back in a minute
                    log.exception("could not dead-letter a malformed retry-set entry")
                    continue
                log.warning("dead-lettered a malformed retry-set entry: %s", reason)
            retry.done(client, member)
            moved += 1
        if len(batch) < 500:
            return moved


def _parse(member: bytes | str) -> DeliveryBatch:
    """A retry-set entry as a delivery batch, or MessageError: whatever the bytes are, including
    an error of the parser itself (an entry is untrusted; one that crashed the pump would stop
    every retry of the deployment)."""
    try:
        return DeliveryBatch.from_json(RetryEntry.from_json(member).payload)
    except MessageError:
        raise
    except Exception as exc:  # RecursionError, MemoryError of a huge entry, a bug: the entry's fault
        raise MessageError(f"retry-set entry could not be read ({type(exc).__name__})") from None


def _dead_letter(reason: str, member: bytes | str) -> None:
    from store import repo
    from store.db import session_scope

    with session_scope() as session:
        repo.add_dead_letters(session, [DeadLetter.message(member, "unreadable message", f"retry set: {reason}",
                                                           field="retry_entry")])


class PushsyncScheduler(beat.Scheduler):
    """In-memory beat schedule (nothing written to disk) guarded by the Redis lock."""

    def __init__(self, *args, **kwargs):
        self.redis = broker.redis_client()
        self.lock = SchedulerLock(self.redis)
        self._next_pump = 0.0
        self._next_sweep = 0.0
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
            except (redis.RedisError, KombuOperationalError, OSError) as exc:
                # what was claimed but not sent comes back to the retry set after CLAIM_TIMEOUT
                log.warning("retry pump failed, will try again: %s", exc)
            except Exception:  # anything else must not end the scheduler (a restart loop pumps nothing)
                log.exception("retry pump failed unexpectedly, will try again")
            self._next_pump = time.monotonic() + PUMP_INTERVAL
        if time.monotonic() >= self._next_sweep:
            self._sweep_outbox()
            self._next_sweep = time.monotonic() + OUTBOX_INTERVAL
        return min(super().tick(*args, **kwargs), PUMP_INTERVAL)

    def _sweep_outbox(self) -> None:
        from scheduler import outbox, pending

        try:
            outbox.sweep(self.redis, lambda name, arg, queue: app.send_task(name, args=[arg], queue=queue))
        except Exception as exc:  # the store or Redis away: the rows wait for the next sweep
            log.warning("outbox sweep failed, will try again: %s", exc)
        try:
            pending.sweep(self.redis)
        except Exception as exc:  # the same: the datasets stay pending for the next sweep
            log.warning("pending-flush sweep failed, will try again: %s", exc)

    def close(self):
        self.lock.release()
        super().close()


def run() -> int:
    import scheduler.tasks  # noqa: F401 - registers the periodic tasks' names

    app.conf.beat_schedule = BEAT_SCHEDULE
    app.Beat(scheduler=PushsyncScheduler, max_interval=PUMP_INTERVAL, loglevel="INFO").run()
    return 0
