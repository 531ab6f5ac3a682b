"""A pool's own coalescing window per platform: the same leading-and-trailing window as ingest's,
wider, per device and dataset, checked at send time.

Ingest coalesces every dataset with PUSHSYNC_COALESCE_WINDOW (1 s). Apple asks for no more than two
or three background pushes an hour per device, so a pool may set a wider window for a platform
(``pool create --apns-window 1200``, ``--fcm-window``). That window sits here, after the send-time
check in ``worker.delivery``: a push to a device whose window for the dataset is closed is sent at
once and opens one (the leading edge); a push while it is open waits in the retry set until its
end (the trailing edge), where the send-time check drops all but the newest planned count, which
goes and opens the next window. So a dataset changing all the time costs each device one push a
window, and the newest count still arrives at most one window after the last change.

Every push goes through the same key, window or none: it also keeps the newest count this pool
sent the device for the dataset, so that a push older than one already on its way is dropped. The
send-time check alone cannot do that: a window's flush and the next window's leading push may run
in two processes, and the flush, having read the store before the lead planned its newer count,
would send its older one after it (the device sees 74, then 73). Without a window of its own
the key lasts at least ``GUARD_MS`` past the check, longer than a store read takes to reach it. And while a
send is on its way (after the check it may still wait for an FCM budget, a token, a connection) the
key says so: another push of the key waits in the retry set (``RECHECK_MS``) until ``done`` says
that send is over, or the send's hold has passed (its process was killed, or the send stalled and
may still be writing: ``Settings.send_bound`` plus 5 s), so a newer count passing
the check cannot overtake an older one on its way (the device saw 70, then 69).

Redis decides only *when* and *in what order*, as for ingest's windows:
``pushsync:pace:<pool>:<platform>:<device>:<identity>:<dataset>`` holds "<window end ms>:<count sent>",
and ":<until ms>:<token>" while that send is on its way (the token: the ``enter`` call that let it go).
*What* goes is the store's (the planned count at send time; the store's counts only rise).
A push whose count is below the one its key sent is dropped (the device has a newer
one). One with the same count waits for the window's end like a newer one: the send that opened
the window may not have happened (a stalled send run again at the same attempt), so it is sent
again then, a push too many at worst. Retries (attempt 2 and later) and
pushes that waited for their FCM budget slots pass an open window (they were let through once
already), but not a newer count. Redis away -> the pushes go without the key (a push too many or
out of order, never one too few).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis

from pushsync.messages import DeliveryBatch
from store.repo import PoolCredentials
from worker import budget
from worker.senders.base import PushRequest

log = logging.getLogger("pushsync.tasks")

PACE = "pushsync:pace:"
# a window key outlives its window by this much (ms), as ingest's do
KEEP_MS = 60_000
# the key of a push sent without a window of its own lasts this long (ms): it only needs to outlast
# the moment between a delivery's store read and its send
GUARD_MS = 10_000
# a window never ends further ahead than the widest window a pool may set (contract.MAX_WINDOW)
MAX_MS = 86_400_000
# a push whose key has a send in flight looks again this soon (ms; the retry set's step is a second)
RECHECK_MS = 1_000

# KEYS: one per push. ARGV: now (ms; below 0: Redis's clock), width (ms; 0: no window, only the
# order), keep (ms), hold (ms: how long a send let go here may take), this call's token, then one
# count per key. Returns now (ms), then per key: 0 (send; with a width it opened a window),
# "-<count>" (drop: its key sent that newer count; as text, which keeps counts near 2^63 exact),
# "b<ms>" (wait until then: another send of the key is on its way) or the open window's end (ms:
# wait until then; the count it sent waits too, since the send that opened the window may have
# failed before it was made).
_ENTER = """
local now = tonumber(ARGV[1])
if now < 0 then local t = redis.call('TIME') now = t[1] * 1000 + math.floor(t[2] / 1000) end
local width, keep, hold, token = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
-- counts compared as decimal text: they reach 2^63, past what a Lua number holds exactly
local function older(a, b) if #a ~= #b then return #a < #b end return a < b end
local till = string.format('%.0f', now + hold) .. ':' .. token
local out = {now}
for i, key in ipairs(KEYS) do
  local count = ARGV[5 + i]
  -- a key of another type than ours is as no key (SET below replaces it)
  local raw = redis.call('TYPE', key).ok == 'string' and redis.call('GET', key) or ''
  -- "<end>:<count sent>", and ":<until>:<token>" while that send is on its way
  local e, sent, b = string.match(raw, '^([^:]*):([^:]*):([^:]*):[^:]+$')
  if not e then e, sent = string.match(raw, '^([^:]*):([^:]*)$') end
  local ends, busy = tonumber(e or ''), b and tonumber(b)
  if sent and not (sent == '0' or (#sent <= 19 and string.match(sent, '^[1-9]%d*$'))) then sent = nil end
  -- bytes that are not ours (no count, an end past any window, a send on its way for longer than one
  -- may take) are as no key
  local ours = ends and sent and ends <= now + """ + str(MAX_MS) + """ and (not b or (busy and busy <= now + hold))
  -- a drop needs a key that will go (our writes all set a TTL): bytes left without one never block a push
  if ours and older(count, sent) and redis.call('PTTL', key) > 0 then
    out[i + 1] = '-' .. sent
  elseif width > 0 and ours and ends > now and ends <= now + width then
    -- (a window longer than its width: the width was lowered, a new window)
    out[i + 1] = ends
  elseif ours and busy and busy > now then
    -- another send of this key is on its way: this one goes after it, however long the first takes
    out[i + 1] = string.format('b%.0f', math.min(busy, now + """ + str(RECHECK_MS) + """))
  elseif width > 0 then
    redis.call('SET', key, string.format('%.0f:%s:', now + width, count) .. till, 'PX', width + math.max(keep, hold))
    out[i + 1] = 0
  elseif ours and ends > now then  -- passing an open window: it keeps its end
    redis.call('SET', key, string.format('%.0f:%s:', ends, count) .. till, 'KEEPTTL')
    out[i + 1] = 0
  else
    redis.call('SET', key, string.format('%.0f:%s:', now, count) .. till, 'PX', math.max(keep, hold))
    out[i + 1] = 0
  end
end
return out
"""

# KEYS: one per push that ``_ENTER`` let go. ARGV: that call's token, then one count per key. Their
# sends are over: each key forgets its send on its way, unless another call's send owns it now.
_DONE = """
for i, key in ipairs(KEYS) do
  local raw = redis.call('TYPE', key).ok == 'string' and redis.call('GET', key) or ''
  local e, sent, token = string.match(raw, '^([^:]*):([^:]*):[^:]*:([^:]+)$')
  if e and sent == ARGV[i + 1] and token == ARGV[1] then redis.call('SET', key, e .. ':' .. sent, 'KEEPTTL') end
end
return 0
"""


@dataclass(frozen=True)
class Covered:
    """A push dropped by its open window, which sent the newer ``count`` already."""

    count: int


@dataclass(frozen=True)
class Busy:
    """A push that waits ``seconds`` because another send of its key is on its way."""

    seconds: float


class Pacing:
    """``clock``: None for Redis's own time (production); a function for a test's clock."""

    def __init__(self, client: redis.Redis, clock=None):
        self.client, self.clock = client, clock
        self._enter = client.register_script(_ENTER)
        self._done = client.register_script(_DONE)

    def enter(self, pool: str, platform: str, pushes: list[tuple[str, str, str, int]], width: float,
              now: float | None = None, hold: float = GUARD_MS / 1000, token: str = "-"
              ) -> list[float | Covered | Busy]:
        """``pushes``: (device id, identity, dataset, count). For each, in order: 0.0 (send now; on its
        way until ``done`` with the same ``token``, or ``hold`` seconds), Covered (drop), Busy (wait:
        another send of the key is on its way) or the seconds until its open window ends (wait; only
        with a ``width``: 0 checks the order alone)."""
        if not pushes:
            return []
        now = now if now is not None else (self.clock() if self.clock else None)
        at = -1 if now is None else int(now * 1000)
        # the identity too: a device that moved to another user starts a window of its own there
        keys = [_key(pool, platform, device, identity, dataset) for device, identity, dataset, _ in pushes]
        keep = KEEP_MS if width else GUARD_MS
        at, *out = self._enter(keys=keys, args=[at, int(width * 1000), keep, max(1, int(hold * 1000)), token,
                                                *(str(n) for *_, n in pushes)])
        at = int(at)
        # a drop's count and a busy wait come as text (bytes, or str from a client that decodes replies)
        texts = [v.decode() if isinstance(v, bytes) else v for v in out]
        return [Covered(int(v[1:])) if isinstance(v, str) and v.startswith("-") else
                Busy(max(0.001, (int(v[1:]) - at) / 1000)) if isinstance(v, str) and v.startswith("b") else
                0.0 if int(v) == 0 else max(0.001, (int(v) - at) / 1000) for v in texts]

    def done(self, pool: str, platform: str, pushes: list[tuple[str, str, str, int]], token: str = "-") -> None:
        """The sends ``enter`` let go with ``token`` are over (sent, failed or handed on): their keys'
        next push may go."""
        if pushes:
            self._done(keys=[_key(pool, platform, *p[:3]) for p in pushes], args=[token, *(str(n) for *_, n in pushes)])


def _key(pool: str, platform: str, device: str, identity: str, dataset: str) -> str:
    return f"{PACE}{pool}:{platform}:{device}:{identity}:{dataset}"


def _pushes(batch: DeliveryBatch, requests: list[PushRequest]) -> list[tuple[str, str, str, int]]:
    """The (device, identity, dataset, count) of each request, as ``enter`` and ``done`` take them."""
    items = {item.key: item for item in batch.items}
    return [(r.device_id, r.identity_id, r.dataset, items[r.key].sync_count) for r in requests]


def width(creds: PoolCredentials, platform: str, ingest_width: float) -> float:
    """The pool's window for the platform where it is wider than ingest's, else 0 (none here)."""
    own = creds.fcm_window if platform == "GCM" else creds.apns_window
    return own if own is not None and own > ingest_width else 0.0


def within(ctx, batch: DeliveryBatch, creds: PoolCredentials | None, requests: list[PushRequest],
           result) -> tuple[list[PushRequest], str]:
    """The pushes that go now, and the token that ``over`` says their sends are over with: those
    older than a count their key sent are dropped; those whose key has a send on its way, and where
    the pool has a window of its own those inside an open one, go to ``result.later`` until it is
    over or the window ends (one batch per second)."""
    token = uuid.uuid4().hex[:16]
    if creds is None or not requests:
        return requests, token
    wide = 0.0 if batch.attempt > 1 or batch.budgeted else width(creds, batch.platform, ctx.settings.coalesce_window)
    items = {item.key: item for item in batch.items}
    try:  # a send may take the send bound, and a few seconds more to say it is over
        verdicts = ctx.pacing.enter(batch.pool, batch.platform, _pushes(batch, requests), wide,
                                    hold=ctx.settings.send_bound + 5, token=token)
    except redis.RedisError as exc:  # the order and the window are worth less than the pushes: they go
        log.warning("could not check the %s send order and windows of %d pushes of pool %s (%s); sent without them",
                    batch.platform, len(requests), batch.pool, exc)
        return requests, token
    going: list[tuple[PushRequest, float | Busy]] = []
    for r, v in zip(requests, verdicts, strict=True):
        if isinstance(v, Covered):  # the device has a newer count than this one: on the trail as stale
            result.stale += 1
            result.covered[r.key] = v.count
        else:
            going.append((r, v))
    for busy in (False, True):  # a push that waited for its budget and now for a send keeps its slot
        mine = [(r, v) for r, v in going if isinstance(v, Busy) == busy]
        groups = budget.slots([v.seconds if isinstance(v, Busy) else v for _, v in mine])
        for wait, indexes in groups.items():
            held = [items[mine[i][0].key] for i in indexes]
            result.later.append((batch.held(held, str(uuid.uuid4()), budgeted=busy and batch.budgeted), wait))
            result.paced += len(held)
    return [r for r, v in going if v == 0], token


def over(ctx, batch: DeliveryBatch, requests: list[PushRequest], token: str) -> None:
    """The sends that ``within`` let go with ``token`` are over. Redis away (or anything else on
    the way) -> their keys forget them by themselves (after the send's bound), and a newer count
    for them waits that long at most; the outcomes are recorded all the same."""
    if not requests:
        return
    try:
        ctx.pacing.done(batch.pool, batch.platform, _pushes(batch, requests), token)
    except Exception as exc:  # noqa: BLE001 - the outcomes of sends that were made are worth more
        log.warning("could not mark %d %s sends of pool %s as over (%s); their keys forget them by themselves",
                    len(requests), batch.platform, batch.pool, exc)
