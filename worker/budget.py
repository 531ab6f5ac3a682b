"""The FCM rate budget: pushes a minute per Firebase project, shared by every worker (Redis).

FCM refuses a project's messages above its quota (600,000 a minute by default) with 429, and a
refused request counts against the quota too, so a fan-out sent as fast as pushsync can send
would turn into a storm of refusals that the retry path repeats. Every FCM delivery therefore
reserves its pushes first: ``reserve`` hands out one slot per push at the pool's rate
(``pool create --fcm-rate``; pools that share a project share its slots). A push whose slot is now
is sent now; the rest wait in the retry set until their slot (``worker.delivery``), in batches
marked ``budgeted`` that are sent when they come back without reserving again. No worker sleeps.

The reservation is a GCRA (generic cell rate algorithm): ``pushsync:budget:<project>`` holds the
time (ms) when the project's next slot is free. Slots go one interval apart; a project idle for a
while may send ``BURST_S`` seconds' worth at once, no more. The interval is (60 s + BURST_S) / rate,
so that no 60 s window holds more than the rate (and one): a burst is paid for within the minute.

A 429 lowers the project's rate: ``lower`` halves it (``SLOW_FACTOR``) for as long as FCM's
Retry-After asked (at least ``SLOW_MIN_S``), the refused pushes themselves retrying after it.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import timedelta

import redis
from sqlalchemy.orm import Session

from pushsync.messages import DeliveryBatch
from store import repo
from store.models import utcnow
from store.repo import PoolCredentials
from worker import retry
from worker.errors import TRANSIENT
from worker.senders.base import Outcome, PushRequest

log = logging.getLogger("pushsync.tasks")

BUDGET = "pushsync:budget:"
SLOW = "pushsync:budget:slow:"
BURST_S = 1.0
SLOW_FACTOR = 2
SLOW_MIN_S = 10.0
# a project's reservations reach at most this far ahead (s): what would wait longer is sent at
# that edge (a bound, so that a forged rate or a huge backlog cannot park pushes for days)
HORIZON_S = 3600.0

# KEYS: the project's budget, its slow marker. ARGV: now (ms; below 0: Redis's clock), interval
# (ms per push), pushes, burst (ms), horizon (ms). Returns {first slot (ms), interval used (ms as
# text: a float), now (ms)}.
_RESERVE = """
local now = tonumber(ARGV[1])
if now < 0 then local t = redis.call('TIME') now = t[1] * 1000 + math.floor(t[2] / 1000) end
local interval, n, burst, horizon = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local slow = tonumber(redis.call('GET', KEYS[2]) or '')
if slow and slow >= 1 and slow <= 100 then interval = interval * slow end
local free = tonumber(redis.call('GET', KEYS[1]) or '')
-- a value that is not a time, or one beyond the horizon (never stored here), is not ours: start again
if not free or free > now + horizon then free = now - burst end
if free < now - burst then free = now - burst end
-- what would wait past the horizon waits at its edge: the budget stays there, it does not start over
local after = math.min(free + n * interval, now + horizon)
redis.call('SET', KEYS[1], string.format('%.3f', after), 'PX', math.floor(after - now + burst + 60000))
return {string.format('%.3f', free), string.format('%.6f', interval), now}
"""


class Budget:
    """``clock``: None for Redis's own time (production); a function for a test's clock."""

    def __init__(self, client: redis.Redis, clock=None):
        self.client, self.clock = client, clock
        self._reserve = client.register_script(_RESERVE)

    def _now_ms(self, now: float | None) -> int:
        now = now if now is not None else (self.clock() if self.clock else None)
        return -1 if now is None else int(now * 1000)

    def reserve(self, project: str, rate_per_min: int, n: int, now: float | None = None) -> list[float]:
        """One slot for each of ``n`` pushes of ``project`` at ``rate_per_min``: the seconds each
        waits (0: send now), in order."""
        if n <= 0:
            return []
        # one slot every (60 s + the burst) / rate: the burst is paid for inside the same minute, so
        # that no 60 s (FCM's quota is a minute's) holds more than the rate, plus one
        interval = (60_000.0 + BURST_S * 1000) / max(1, rate_per_min)
        free, used, at = self._reserve(keys=[BUDGET + project, SLOW + project],
                                       args=[self._now_ms(now), repr(interval), n, int(BURST_S * 1000),
                                             int(HORIZON_S * 1000)])
        free, used, at = float(free), float(used), float(at)
        return [min(HORIZON_S, max(0.0, (free + i * used - at) / 1000)) for i in range(n)]

    def lower(self, project: str, seconds: float | None) -> None:
        """FCM refused for quota: the project's rate is halved for ``seconds`` (its Retry-After)."""
        wait = seconds if seconds is not None and math.isfinite(seconds) else 0.0
        self.client.set(SLOW + project, SLOW_FACTOR, px=int(max(SLOW_MIN_S, min(wait, HORIZON_S)) * 1000))


def slots(waits: list[float], step: float = 1.0) -> dict[float, list[int]]:
    """The indexes of the pushes that wait, grouped by the second their slot falls in (one retry
    entry per group); those sent now (wait 0) are left out."""
    out: dict[float, list[int]] = {}
    for i, wait in enumerate(waits):
        if wait > 0:
            out.setdefault(math.ceil(wait / step) * step, []).append(i)
    return out


def within(ctx, batch: DeliveryBatch, creds: PoolCredentials | None,
           requests: list[PushRequest], result) -> list[PushRequest]:
    """The FCM pushes whose budget slot is now; the others go to ``result.later``, one batch per
    second of slots (``worker.budget``). A batch that waited for its slots once goes as it is."""
    if batch.platform != "GCM" or batch.budgeted or creds is None or not creds.fcm_project_id:
        return requests
    try:
        waits = ctx.budget.reserve(creds.fcm_project_id, creds.fcm_rate, len(requests))
    except redis.RedisError as exc:  # the budget is worth less than the pushes: they go, a 429 slows them
        log.warning("could not reserve FCM budget for %d pushes of project %s (%s); sent without it",
                    len(requests), creds.fcm_project_id, exc)
        return requests
    groups = slots(waits)
    if not groups:
        return requests
    items = {item.key: item for item in batch.items}
    for wait, indexes in groups.items():
        result.later.append((batch.held([items[requests[i].key] for i in indexes], str(uuid.uuid4())), wait))
        result.held += len(indexes)
    waiting = {i for indexes in groups.values() for i in indexes}
    return [r for i, r in enumerate(requests) if i not in waiting]


def lower_on_quota(ctx, batch: DeliveryBatch, creds: PoolCredentials, outcomes: list[Outcome]) -> None:
    """FCM refused pushes for the project's quota (429): its budget goes slower while FCM asks."""
    refused = [o for o in outcomes if o.status == 429]
    if batch.platform != "GCM" or not refused or not creds.fcm_project_id:
        return
    wait = max((o.retry_after or 0.0) for o in refused)
    try:
        ctx.budget.lower(creds.fcm_project_id, wait)
    except TRANSIENT as exc:  # the refused pushes retry after Retry-After all the same
        log.warning("FCM refused %d pushes of project %s for quota; could not lower its budget: %s",
                    len(refused), creds.fcm_project_id, exc)
        return
    log.warning("FCM refused %d pushes of project %s for quota; its budget is halved for %.0f s",
                len(refused), creds.fcm_project_id, max(SLOW_MIN_S, min(wait, HORIZON_S)))


def hold(ctx, session: Session, later: list[tuple[DeliveryBatch, float]], schedule: bool) -> None:
    """The held pushes: an outbox row each (sent again if their retry entry is lost) and, once, an
    entry in the retry set due at their slots, queued before the outcomes commit, like a retry."""
    for held, wait in later:
        assert held.id is not None  # DeliveryBatch.held gives each an id
        repo.add_outbox(session, [(held.id, held.platform, held.to_json())],
                        due_at=utcnow() + timedelta(seconds=wait + ctx.settings.redeliver_after))
        if schedule:
            retry.schedule(ctx.redis, "deliver", held.to_json(), ctx.now() + wait)
