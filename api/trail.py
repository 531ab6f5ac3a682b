"""``GET /identitypools/{pool}/identities/{identity}/trail`` (and ``.../datasets/{dataset}/trail``):
the identity's trail, as `pushsync trace --json` prints it (admin scope)."""

from __future__ import annotations

import threading
from typing import Any

from api.auth import Principal, require
from api.errors import Unavailable
from pushsync.settings import get_settings

_client = None
_lock = threading.Lock()


def _redis():
    global _client
    with _lock:
        if _client is None:
            from pushsync.broker import redis_client

            _client = redis_client(get_settings(), socket_connect_timeout=1, socket_timeout=2)
        return _client


def trail(p: Principal, pool_id: str, identity_id: str, body: Any, dataset: str | None = None) -> dict:
    import redis

    from pushsync.trail import read
    from store import repo
    from store.db import session_scope

    require(p, "admin")
    with session_scope() as s:
        repo.require_pool(s, pool_id)
    try:
        return read(_redis(), pool_id, identity_id, dataset)
    except redis.RedisError:
        raise Unavailable("Redis, which keeps the trail, is out of reach; try again shortly", retry_after=5) from None


def dataset_trail(p: Principal, pool_id: str, identity_id: str, dataset: str, body: Any) -> dict:
    return trail(p, pool_id, identity_id, body, dataset)
