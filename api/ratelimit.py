"""Requests per second per API key and per identity, counted in Redis so that every API process
shares the count. Fixed one-second windows: INCR on ``pushsync:rate:<bucket>:<second>``, which
expires after two seconds. When Redis cannot be reached the limit is not applied (logged, at most
once a minute): registration must not fail because the counter is away; /readyz shows it."""

from __future__ import annotations

import logging
import math
import time

import redis

from api.errors import TooManyRequests

log = logging.getLogger("pushsync.api")


class RateLimiter:
    def __init__(self, settings):
        from pushsync.broker import redis_client

        self.redis = redis_client(settings, socket_connect_timeout=1, socket_timeout=1)
        self._warned = 0.0

    def check(self, bucket: str, limit: int) -> None:
        now = time.time()
        window = int(now)
        key = f"pushsync:rate:{bucket}:{window}"
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 2)
            count = pipe.execute()[0]
        except redis.RedisError as exc:
            if now - self._warned > 60:
                self._warned = now
                log.warning("rate limits not applied: Redis unreachable (%s)", type(exc).__name__)
            return
        if count > limit:
            raise TooManyRequests(f"more than {limit} requests per second for this credential; slow down",
                                  retry_after=max(1, math.ceil(window + 1 - now)))
