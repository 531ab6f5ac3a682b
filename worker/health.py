"""Is this worker consuming? Heartbeats in Redis, read by `pushsync worker --health`.

A worker process can be up and answer pings while its consumer takes nothing from the queues
(a consumer that did not come back after a broker connection loss, celery/celery#10205 and its
kin; a queue cancelled by a control command). A ping cannot see that; progress can:

- the worker's main process writes a beat every few seconds (``BEAT_KEY``, per node name) and,
  at start, the queues it was told to consume (``QUEUES_KEY``);
- every pool process writes the time it last finished a task (``PROGRESS_KEY``), at most once a
  second;
- the check fails when the beat is older than ``PUSHSYNC_HEALTH_STALL`` (the process is gone or
  hung), or when one of the worker's queues holds messages and the worker finished nothing for
  ``PUSHSYNC_HEALTH_STALL`` seconds (at least the task time limit: ``stall_seconds``). An idle
  worker on empty queues is healthy.

`pushsync metrics` counts the live and the stuck workers from the same keys.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import redis

from pushsync.queues import EVENTS_QUEUE, QUEUES

BEAT_KEY = "pushsync:workers:beat"
PROGRESS_KEY = "pushsync:workers:progress"
QUEUES_KEY = "pushsync:workers:queues"
# a node silent this long is forgotten by the beat writers (it is long dead)
FORGET_AFTER = 24 * 3600

log = logging.getLogger("pushsync.worker")


@dataclass(frozen=True)
class Verdict:
    node: str
    healthy: bool
    reason: str


def node_name(argv: list[str]) -> str:
    """The node name a `pushsync worker` started with these options has (``-n``/``--hostname``,
    with Celery's %h %n %d), ``celery@<hostname>`` by default."""
    from celery.utils.nodenames import default_nodename, host_format

    name = None
    for i, arg in enumerate(argv):
        if arg in ("-n", "--hostname") and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--hostname="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-n") and len(arg) > 2:
            name = arg[2:]
    return host_format(default_nodename(name))


def stall_seconds(settings) -> float:
    """PUSHSYNC_HEALTH_STALL, but never less than the task time limit: a worker whose only task is
    a legitimately long one has finished nothing for up to that long."""
    return max(settings.health_stall, float(settings.task_time_limit))


def judge(client: redis.Redis, node: str, stall: float, now: float | None = None) -> Verdict:
    """The health check's rule, on what the worker wrote to Redis."""
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    pipe.hget(BEAT_KEY, node)
    pipe.hget(PROGRESS_KEY, node)
    pipe.hget(QUEUES_KEY, node)
    beat, progress, queues = pipe.execute()
    if beat is None:
        return Verdict(node, False, f"no heartbeat from {node}: the worker is not running, or has not reached Redis")
    beat_age = now - _float(beat)
    if beat_age > stall:
        return Verdict(node, False, f"{node} last beat {beat_age:.0f} s ago: the worker process is gone or hung")
    idle = now - _float(progress)
    # only the project's queues: a name read back from Redis is not trusted to be a list (LLEN of
    # another key type fails, and one junk entry would take the metrics page down with it)
    names = [q for q in (queues or b"").decode(errors="replace").split(",") if q in QUEUES]
    if idle <= stall:
        return Verdict(node, True, f"{node} finished a task {max(idle, 0):.0f} s ago")
    waiting = {q: n for q, n in zip(names, _depths(client, names), strict=True) if n}
    laned = lane_depth(client) if EVENTS_QUEUE in names else 0
    if laned:  # ingest messages filed by pool (worker.lanes) wait for this worker's runs as well
        waiting["the pools' lanes"] = laned
    if waiting:
        held = ", ".join(f"{q} holds {n}" for q, n in waiting.items())
        return Verdict(node, False, f"{node} is stuck: {held}, and it finished no task for {idle:.0f} s")
    return Verdict(node, True, f"{node} is idle: its queues ({', '.join(names) or 'none'}) are empty")


def census(client: redis.Redis, stall: float, now: float | None = None) -> dict[str, int]:
    """How many workers beat (alive), and how many of those are stuck, by ``judge``'s rule."""
    now = time.time() if now is None else now
    alive = [n.decode() if isinstance(n, bytes) else n for n, t in client.hgetall(BEAT_KEY).items()
             if now - _float(t) <= stall]
    stuck = sum(1 for n in alive if not judge(client, n, stall, now).healthy)
    return {"alive": len(alive), "stuck": stuck}


def lane_depth(client: redis.Redis) -> int:
    """Ingest messages waiting in the pools' lanes (worker.lanes): a backlog filed by its pool."""
    from worker.intake import LANE, LANES

    pools = client.zrange(LANES, 0, 999)
    pipe = client.pipeline(transaction=False)
    for pool in pools:
        pipe.llen(LANE.encode() + (pool if isinstance(pool, bytes) else str(pool).encode()))
    return sum(int(n) for n in pipe.execute()) if pools else 0


def _depths(client: redis.Redis, queues: list[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(q)
    return [int(n) for n in pipe.execute()]


def _float(raw) -> float:
    """A time read back from Redis; anything but a finite number (junk, "nan", "inf") counts as
    never, so that it cannot make a dead node look alive."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


class Heartbeat(threading.Thread):
    """The main process's beat. Redis away: the beat waits for it (logged once a minute)."""

    def __init__(self, client: redis.Redis, node: str, queues: list[str], interval: float):
        super().__init__(name="pushsync-heartbeat", daemon=True)
        self.client, self.node, self.queues, self.interval = client, node, queues, interval
        self.stop_event = threading.Event()
        self._warned = 0.0

    def beat(self) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(BEAT_KEY, self.node, now)
        pipe.hset(QUEUES_KEY, self.node, ",".join(self.queues))
        pipe.execute()
        stale = [n for n, t in self.client.hgetall(BEAT_KEY).items() if now - _float(t) > FORGET_AFTER]
        if stale:
            for key in (BEAT_KEY, PROGRESS_KEY, QUEUES_KEY):
                self.client.hdel(key, *stale)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("health heartbeat cannot reach Redis: %s", exc)
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        """A clean shutdown: this node is gone, not stuck."""
        self.stop_event.set()
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in (BEAT_KEY, PROGRESS_KEY, QUEUES_KEY):
                pipe.hdel(key, self.node)
            pipe.execute()
        except redis.RedisError:
            pass


class Progress:
    """A pool process's record of finishing tasks: at most one write a second."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._last = 0.0

    def finished(self, node: str | None) -> None:
        now = time.time()
        if not node or now - self._last < 1.0:
            return
        self._last = now
        try:
            self.client.hset(PROGRESS_KEY, node, now)
        except redis.RedisError:
            pass
