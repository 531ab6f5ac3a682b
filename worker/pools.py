"""Per-process cache of pools' push credentials (ARCHITECTURE: loaded and cached per process).

Each lookup asks the store only for the pools' ``updated_at``; the credentials themselves (a
service account, a .p8 key) are read and parsed again only when ``pool create`` changed them.
They live in worker memory (the worker's context holds the cache) and never go into a message.

``KeyCheck``: the worker's main process says which pools' credentials it cannot open (a
PUSHSYNC_SECRET_KEY that is not the one they were sealed with, a key file it cannot read), at
start and as the pools change, in its log at ERROR and in Redis for `pushsync metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime

import redis
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from pushsync.messages import exception_text
from pushsync.secrets import SecretError
from store import repo
from store.models import Pool
from store.repo import PoolCredentials
from worker.health import FORGET_AFTER, _float
from worker.metrics import POOL_KEYS_KEY

log = logging.getLogger("pushsync.worker")
# how often the main process looks again (the figure in Redis is fresh for three of these)
CHECK_INTERVAL = 60.0
# sooner when the store did not answer
RETRY_INTERVAL = 10.0
# pools opened per query, and pool ids named per log line
CHUNK = 500
NAMED = 20


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
                    fresh = repo.pool_credentials(session, pool_id)
                except SecretError as exc:
                    # not cached: a key file put back, or a worker restarted with the key, heals it
                    self._cache.pop(pool_id, None)
                    out[pool_id] = PoolCredentials(pool_id, version, None, None, None, None, None, None,
                                                   error=f"pool credentials unusable: {exc}")
                    continue
                if fresh is None:  # deleted since its version was read: unknown, as above
                    self._cache.pop(pool_id, None)
                    out[pool_id] = None
                    continue
                self._cache[pool_id] = cached = fresh
            out[pool_id] = cached
        return out

    def clear(self) -> None:
        self._cache.clear()


class KeyCheck(threading.Thread):
    """A thread of the worker's main process: every ``interval``, the pools whose credentials
    changed since it last opened them (all of them at start) and those that did not open are
    opened again with this worker's keys. What does not open is logged at ERROR, by pool id and
    reason (never key material), when it starts failing; its count goes to Redis every time.

    Its store connection is its own engine's, closed after each look, so the pool processes the
    main process forks later inherit none (and the main process's consumer never waits on it)."""

    def __init__(self, client: redis.Redis, node: str, settings, interval: float = CHECK_INTERVAL):
        super().__init__(name="pushsync-keycheck", daemon=True)
        self.client, self.node, self.settings, self.interval = client, node, settings, interval
        self.stop_event = threading.Event()
        self.opened: dict[str, datetime] = {}  # pool -> the version whose credentials opened
        self.failing: dict[str, str] = {}  # pool -> why its credentials do not open
        self.checked = False
        self._engine: Engine | None = None
        self._warned = 0.0

    def check(self) -> None:
        from store.db import make_engine, session_scope

        if self._engine is None:
            self._engine = make_engine(self.settings.database_url, self.settings.store_statement_timeout)
        engine = self._engine
        keyring = self.settings.keyring()
        before = dict(self.failing)
        try:
            with session_scope(engine) as session:
                self._open(session, keyring)
        finally:
            engine.dispose()
        self._report(before)
        self.checked = True

    def _open(self, session: Session, keyring) -> None:
        versions = dict(session.execute(select(Pool.id, Pool.updated_at)).all())
        todo = [p for p, v in versions.items() if self.opened.get(p) != v]
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            # one query for the chunk: pool_credentials then finds each row in the session
            rows = session.execute(select(Pool).where(Pool.id.in_(chunk))).scalars().all()  # noqa: F841 - held
            for pool_id in chunk:
                try:
                    repo.pool_credentials(session, pool_id, keyring)
                except SecretError as exc:
                    self.opened.pop(pool_id, None)
                    self.failing[pool_id] = str(exc)
                else:
                    self.opened[pool_id] = versions[pool_id]
                    self.failing.pop(pool_id, None)
        for gone in (set(self.opened) | set(self.failing)) - set(versions):
            self.opened.pop(gone, None)
            self.failing.pop(gone, None)

    def _report(self, before: dict[str, str]) -> None:
        by_reason: dict[str, list[str]] = {}
        for pool_id, why in sorted(self.failing.items()):
            if before.get(pool_id) != why:
                by_reason.setdefault(why, []).append(pool_id)
        for why, pools in by_reason.items():
            named = ", ".join(pools[:NAMED]) + (f" and {len(pools) - NAMED} more" if len(pools) > NAMED else "")
            log.error("the push credentials of %d pool(s) do not open in this worker, so their events are "
                      "dead-lettered: %s (%s)", len(pools), named, why)
        healed = sorted(set(before) - set(self.failing))
        if healed:
            log.info("the push credentials of pool(s) %s open again", ", ".join(healed[:NAMED]))
        if not self.checked and not self.failing:
            log.info("the push credentials of all %d pool(s) open with this worker's PUSHSYNC_SECRET_KEY",
                     len(self.opened))

    def publish(self) -> None:
        now = time.time()
        self.client.hset(POOL_KEYS_KEY, self.node, f"{len(self.failing)} {now}")
        stale = [n for n, raw in self.client.hgetall(POOL_KEYS_KEY).items()
                 if now - _float(raw.split()[-1] if raw.split() else b"") > FORGET_AFTER]
        if stale:
            self.client.hdel(POOL_KEYS_KEY, *stale)

    def run(self) -> None:
        while not self.stop_event.is_set():
            wait = self.interval
            try:
                self.check()
            except Exception as exc:  # the store away, most likely: look again soon
                wait = min(self.interval, RETRY_INTERVAL)
                self._warn("cannot check which pools' credentials open: %s", exception_text(exc))
            try:
                if self.checked:
                    self.publish()
            except redis.RedisError as exc:
                self._warn("cannot record the pools whose credentials do not open: %s", exc)
            self.stop_event.wait(wait)

    def _warn(self, text: str, *args) -> None:
        if time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log.warning(text, *args)

    def stop(self) -> None:
        """A clean shutdown: this worker's figure goes with it."""
        self.stop_event.set()
        if self.is_alive():
            self.join(5)  # a look under way ends within the store's bounds; its figure is written before this
        try:
            self.client.hdel(POOL_KEYS_KEY, self.node)
        except redis.RedisError:
            pass
