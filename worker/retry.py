"""Retry policy and the retry set.

Backoff is exponential with full jitter (a random wait between 0 and min(cap, base * 2^n)),
and never shorter than the Retry-After the service asked for. Short waits go back to the
queue with a Celery countdown; longer ones wait in a Redis sorted set (score: when due) that
the scheduler moves back to the queue, because Redis re-delivers countdown/ETA messages that
a worker holds longer than the visibility timeout.

The set is drained in two steps so that nothing is lost and nothing is taken twice: a Lua
script moves due entries to a "claimed" set in one atomic step; they are removed from it only
after they are back on their queue. Entries claimed longer than ``CLAIM_TIMEOUT`` ago (the
pumping process died) return to the retry set.
"""

from __future__ import annotations

import json
import random
import time
import uuid

import redis

RETRY_KEY = "pushsync:retry"
CLAIMED_KEY = "pushsync:retry:claimed"
CLAIM_TIMEOUT = 60.0

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], ARGV[3], member)
end
return due
"""

_RECLAIM = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, member in ipairs(stale) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZADD', KEYS[1], ARGV[2], member)
end
return #stale
"""


def backoff(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
            rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    wait = (rng or random).uniform(0, ceiling)
    return max(wait, retry_after or 0.0)


def schedule(client: redis.Redis, kind: str, payload: dict, due: float) -> None:
    """Put ``payload`` (a task argument) in the retry set until ``due`` (epoch seconds)."""
    member = json.dumps({"id": uuid.uuid4().hex, "kind": kind, "payload": payload}, separators=(",", ":"))
    client.zadd(RETRY_KEY, {member: due})


def claim_due(client: redis.Redis, now: float | None = None, limit: int = 500) -> list[bytes | str]:
    """Atomically take up to ``limit`` due entries, as raw members (``done`` takes them back
    as they came): parsing them, and dealing with one that does not parse, is the caller's
    part (``pushsync.messages.RetryEntry``)."""
    now = time.time() if now is None else now
    client.eval(_RECLAIM, 2, RETRY_KEY, CLAIMED_KEY, now - CLAIM_TIMEOUT, now)
    members = client.eval(_CLAIM, 2, RETRY_KEY, CLAIMED_KEY, now, limit, now)
    return list(members)


def done(client: redis.Redis, member: bytes | str) -> None:
    client.zrem(CLAIMED_KEY, member)


def depth(client: redis.Redis) -> dict[str, int]:
    return {"retry": client.zcard(RETRY_KEY), "retry_claimed": client.zcard(CLAIMED_KEY)}
