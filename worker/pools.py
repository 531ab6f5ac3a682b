"""Per-process cache of pools' push credentials (ARCHITECTURE: loaded and cached per process).

Each lookup asks the store only for the pools' ``updated_at``; the credentials themselves (a
service account, a .p8 key) are read and parsed again only when ``pool create`` changed them.
They live in worker memory (the worker's context holds the cache) and never go into a message.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from pushsync.secrets import SecretError
from store import repo
from store.repo import PoolCredentials


class PoolCache:
    def __init__(self):
        self._cache: dict[str, PoolCredentials] = {}

    def credentials(self, session: Session, pool_ids: Iterable[str]) -> dict[str, PoolCredentials | None]:
        """pool id -> its credentials, or None for a pool the store does not know."""
        ids = list(set(pool_ids))
        versions = repo.pool_versions(session, ids) if ids else {}
        out: dict[str, PoolCredentials | None] = {}
        for pool_id in ids:
            version = versions.get(pool_id)
            if version is None:
                self._cache.pop(pool_id, None)
                out[pool_id] = None
                continue
            cached = self._cache.get(pool_id)
            if cached is None or cached.updated_at != version:
                try:
                    cached = repo.pool_credentials(session, pool_id)
                except SecretError as exc:
                    # not cached: a key file put back, or a worker restarted with the key, heals it
                    self._cache.pop(pool_id, None)
                    out[pool_id] = PoolCredentials(pool_id, version, None, None, None, None, None, None,
                                                   error=f"pool credentials unusable: {exc}")
                    continue
                self._cache[pool_id] = cached
            out[pool_id] = cached
        return out

    def clear(self) -> None:
        self._cache.clear()
