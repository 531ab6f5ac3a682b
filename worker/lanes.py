"""Fairness between pools at ingest: a pool's backlog waits in a lane of its own, so that another
pool's event is not queued behind it.

Producers put every pool's messages on the one ``events`` list, oldest first, and the pool is only
inside each message's body. So a run looks further ahead than it works: ``take`` hands it
up to ``lookahead`` of new messages, and the run reads each one's pool (``choose``):

- a message of a pool that has no lane is *light*: it is worked on in this run, as long as the
  run's events fit PUSHSYNC_INGEST_BATCH_MAX; the first that does not fit, and every later one of
  its pool, opens the pool's lane;
- every other new message is filed in its pool's lane (``pushsync:lane:<pool>``, a list, oldest at
  the right end like ``events``), in one fenced step before the run works on anything;
- a run with room left takes from the lanes (``take``): the pools in turn, the one served
  longest ago first (``pushsync:lanes``, pool -> when it was last served), each an equal share of
  the room. A run with light messages leaves the lanes a tenth of its room at most, and nothing
  while runs without light messages keep taking from them (one did in the last LIGHT_WAIT): light
  pools are served first and their runs stay short, and a flood keeps moving. While light runs
  take (one did in the last LIGHT_RECENT), a run without light messages takes CONTENDED_SHARE of
  its room: the runs a light pool's event may wait for are short.

The bound: an event of a pool without a backlog is worked on by the first run that starts after it
is published and finds a free worker process, whatever another pool has queued; runs are at most
PUSHSYNC_INGEST_BATCH_MAX events, so it waits at most for the runs in progress. A pool with a
backlog gets its share of every run without light messages, and of every light run that starts
LIGHT_WAIT or more after the last of those. Push queues are not laned: a fan-out above
PUSHSYNC_INLINE_DELIVERY_MAX pushes still queues in ``push.*`` behind earlier ones.

Nothing is lost on the way: a message is in ``events``, in flight (under the run's lease) or in a
lane, each move one atomic step, and filing is fenced by the lease like ``ack``. A run killed
between its take and its filing leaves its messages in flight; their lease runs out and they are
taken again, one at a time, as any message whose run died (``worker.intake``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

import redis

from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.messages import RAW_KEPT
from worker import envelope
from worker.intake import (
    ABANDONS,
    ATTEMPTS,
    DUE,
    ENVELOPE_BYTES,
    EVENT_BYTES,
    INFLIGHT,
    LANE,
    LANES,
    LEASED,
    MAX_MESSAGE_BYTES,
    InFlight,
    Taken,
)

log = logging.getLogger("pushsync.tasks")

# How far a run looks ahead for light messages: up to LOOKAHEAD runs' worth of new events, at
# most LOOKAHEAD_EVENTS events (by their size: about 2.3 MB, plus envelopes and a last message) and
# at most LOOKAHEAD_MESSAGES runs' worth of messages. Each message's pool is read from the start of its
# body (envelope.first_pool: about 25 µs for a message of 100 events), so a burst of large
# messages is filed in a few runs, not dozens: a light pool's event published behind 1,000
# messages of 100 events is worked on by the tenth run, not the 500th. A larger look-ahead files a
# burst in fewer runs, but each is longer (about 130 ms for 500 such messages, on an idle machine)
# and holds Redis longer; in the fairness benchmark 50,000 events did no better than 10,000.
LOOKAHEAD = 250
LOOKAHEAD_EVENTS = 10_000
LOOKAHEAD_MESSAGES = 5
# A run with light messages takes from the lanes at most LIGHT_SHARE of its room, and nothing while
# a run without light messages took from them less than LIGHT_WAIT seconds ago: while other runs
# keep the backlogs moving, a light pool's run is as short as it would be without them (a share of
# one 100-event message beside one event doubled its run); when light runs are all there is, each
# takes its share, as many as there are.
LIGHT_WAIT = 0.5
LIGHT_SHARE = 0.1
# A run without light messages takes at most CONTENDED_SHARE of its room from the lanes (one
# message at least: one of publish_many's 100 events) while a light run took from them less than
# LIGHT_RECENT seconds ago. A light pool's event waits for the runs in progress, and a run of 200
# pushes lasts about 90 ms on a busy machine; the backlogs drain more slowly meanwhile (up to a
# third in the fairness benchmark), and a backlog alone keeps whole runs.
CONTENDED_SHARE = 0.1
LIGHT_RECENT = 3.0
# when a run without light messages last took from the lanes, and when a light run last did (ms,
# by the take's clock)
LANES_FULL = "pushsync:lanes:full"
LANES_LIGHT = "pushsync:lanes:light"

# Fenced like ack: only records whose lease is still the caller's move. KEYS: inflight, due,
# attempts, abandons, leased, lanes. ARGV: now, lease, lane prefix, then (id, pool) pairs.
_FILE = """
local now, lease, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if now < 0 then local t = redis.call('TIME') now = t[1] * 1000 + math.floor(t[2] / 1000) end
local filed = 0
for i = 4, #ARGV, 2 do
  local id, pool = ARGV[i], ARGV[i + 1]
  if tonumber(redis.call('ZSCORE', KEYS[2], id)) == lease then
    local raw = redis.call('HGET', KEYS[1], id)
    if raw then
      redis.call('LPUSH', prefix .. pool, raw)
      redis.call('ZADD', KEYS[6], 'NX', now, pool)
      filed = filed + 1
    end
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('SREM', KEYS[5], id)
  end
end
return filed
"""

# KEYS: inflight, due, leased, lanes, lanes:full, lanes:light. ARGV: now, lease (the run's), room
# (events), id prefix, envelope bytes, bytes per event, the largest message handed over whole, the
# bytes kept of a larger one, lane prefix, LIGHT_WAIT in ms for a light run's take (0: a take without
# light messages), then a take without light messages' room and LIGHT_RECENT (ms) while light runs
# take. Returns {messages (id, raw, size) ..., lanes left}.
_TAKE = """
local now = tonumber(ARGV[1])
if now < 0 then local t = redis.call('TIME') now = t[1] * 1000 + math.floor(t[2] / 1000) end
local lease, room, prefix = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local envelope, per_event, biggest, kept, lane = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]),
  tonumber(ARGV[8]), ARGV[9]
-- a light run's take (ARGV[10] > 0) takes nothing while a run without light messages took from the lanes
-- less than ARGV[10] ms ago (a time ahead of now, Redis's clock gone back, is no such take); any other take
-- is one such run's. A mark that is not a time, or not a string at all, is no mark: it cannot fail every take.
local function ago(key)
  local t = redis.call('TYPE', key).ok == 'string' and tonumber(redis.call('GET', key))
  return t and t <= now and now - t or nil
end
local waited = tonumber(ARGV[10])
if waited > 0 then
  local full = ago(KEYS[5])
  redis.call('SET', KEYS[6], now, 'PX', 60000)
  if full and full < waited then return {{}, redis.call('ZCARD', KEYS[4])} end
else
  redis.call('SET', KEYS[5], now, 'PX', 60000)
  -- a light run took from the lanes less than ARGV[12] ms ago: ARGV[11] events at most
  local light = ago(KEYS[6])
  if light and light < tonumber(ARGV[12]) then room = math.min(room, tonumber(ARGV[11])) end
end
-- at most a pool per event of room, those served longest ago: forged pool ids cannot make a take walk them all
local pools = redis.call('ZRANGE', KEYS[4], 0, room - 1)
local msgs, n, weight = {}, 0, 0
local function from(pool, limit, served)
  local got = 0
  while weight < room and (got == 0 or got < limit) do
    local raw = redis.call('RPOP', lane .. pool)
    if not raw then redis.call('ZREM', KEYS[4], pool) return false end
    local id = prefix .. n
    redis.call('HSET', KEYS[1], id, raw)
    redis.call('ZADD', KEYS[2], lease, id)
    redis.call('SADD', KEYS[3], id)
    msgs[#msgs + 1] = id
    msgs[#msgs + 1] = #raw <= biggest and raw or string.sub(raw, 1, kept)
    msgs[#msgs + 1] = #raw
    n = n + 1
    local w = math.max(1, math.floor((math.min(#raw, biggest) - envelope) / per_event))
    weight, got = weight + w, got + w
  end
  -- served last goes last next time; one that also took the room left over, after the others
  redis.call('ZADD', KEYS[4], 'XX', served, pool)
  return true
end
if #pools > 0 then
  local share = math.max(1, math.floor(room / #pools))
  for _, pool in ipairs(pools) do
    if weight >= room then break end
    from(pool, share, now)
  end
  for _, pool in ipairs(pools) do
    if weight >= room then break end
    from(pool, room, now + 1)
  end
end
return {msgs, redis.call('ZCARD', KEYS[4])}
"""


def lookahead(room: int) -> tuple[int, int]:
    """How many new events, and at most how many messages, a run of ``room`` events looks at."""
    return max(room, min(LOOKAHEAD * room, LOOKAHEAD_EVENTS)), LOOKAHEAD_MESSAGES * room


def weight(t: InFlight) -> int:
    """A message's events by its size, as ``intake``'s take counts them."""
    return max(1, (min(t.size, MAX_MESSAGE_BYTES) - ENVELOPE_BYTES) // EVENT_BYTES)


def pool_of(t: InFlight) -> str:
    """The pool of a message's first event (``envelope.first_pool``), or "" for a message whose
    pool cannot be read from the start of its body: one that names none, one that is not from a
    producer of this project. Those share the lane "" and are read whole, and dead-lettered if
    need be, by the run that works on them: the look-ahead never reads a message whole, so its
    cost per message is bounded whatever the message holds."""
    if t.oversize:
        return ""
    try:  # a pool id that cannot be one (its event is dead-lettered) makes no lane of its own
        return contract.pool_id(envelope.first_pool(t.raw))
    except ValidationError:
        return ""


class Lanes:
    """``clock``: None for Redis's own time (production); a function for a test's clock."""

    def __init__(self, client: redis.Redis, clock=None):
        self.client, self.clock = client, clock
        self._file = client.register_script(_FILE)
        self._take = client.register_script(_TAKE)

    def _now(self) -> int:
        return -1 if self.clock is None else int(self.clock() * 1000)

    def file(self, pools: dict[str, str], lease: int) -> int:
        """In-flight messages (id -> pool) into their pools' lanes, while ``lease`` is theirs."""
        if not pools:
            return 0
        args: list = [self._now(), lease, LANE]
        for mid, pool in pools.items():
            args += [mid, pool]
        return int(self._file(keys=[INFLIGHT, DUE, ATTEMPTS, ABANDONS, LEASED, LANES], args=args))

    def take(self, room: int, lease: int, waited: float = 0.0) -> tuple[list[InFlight], bool]:
        """Messages from the lanes, the pools in turn, until they hold about ``room`` events, under
        the run's ``lease``, and whether lanes are left. ``waited``: a light run's take, which
        takes nothing while a take without it was made less than ``waited`` seconds ago; a take
        without it takes CONTENDED_SHARE of ``room`` while light runs take (LIGHT_RECENT)."""
        room = max(1, room)
        msgs, left = self._take(keys=[INFLIGHT, DUE, LEASED, LANES, LANES_FULL, LANES_LIGHT],
                                args=[self._now(), lease, room, f"{uuid.uuid4().hex}:", ENVELOPE_BYTES,
                                      EVENT_BYTES, MAX_MESSAGE_BYTES, RAW_KEPT, LANE, max(0, int(waited * 1000)),
                                      max(1, int(room * CONTENDED_SHARE)), int(LIGHT_RECENT * 1000)])
        return ([InFlight(msgs[i].decode(), msgs[i + 1], 0, 0, int(msgs[i + 2])) for i in range(0, len(msgs), 3)],
                bool(left))

    def depth(self) -> dict[str, int]:
        """Messages waiting per lane."""
        pools = [p.decode(errors="replace") if isinstance(p, bytes) else str(p)
                 for p in self.client.zrange(LANES, 0, -1)]
        return {p: int(self.client.llen(LANE + p)) for p in pools}


def share(ctx, taken: Taken, room: int) -> Taken:
    """This run's share (``choose``); Redis refusing on the way -> the run works on all it took
    (what is past twice its events ``read_batch`` puts back, untried)."""
    try:
        return choose(ctx.lanes, taken, room)
    except redis.RedisError as exc:
        log.warning("could not file ingest messages in their pools' lanes (%s); this run takes them all", exc)
        return taken


def choose(lanes: Lanes, taken: Taken, room: int) -> Taken:
    """What this run works on: its retries, the light messages (the pools without a lane in turn,
    one message each, until the run's events are full), then a share of the lanes; every other new
    message is filed in its pool's lane first."""
    laned = set(taken.lanes)
    keep = [t for t in taken.messages if not t.fresh or taken.alone]
    fresh = [t for t in taken.messages if t.fresh and not taken.alone]
    if fresh:
        groups: dict[str, list[InFlight]] = {}
        for t in fresh:
            groups.setdefault(pool_of(t), []).append(t)
        filed = {t.id: pool for pool in groups.keys() & laned for t in groups.pop(pool)}
        used = sum(weight(t) for t in keep)
        while groups:
            for pool in list(groups):
                t = groups[pool][0]
                if used + weight(t) > room and keep:  # the pool's first message past the room opens its lane
                    filed.update((t.id, pool) for t in groups.pop(pool))
                    laned.add(pool)
                    continue
                keep.append(groups[pool].pop(0))
                used += weight(t)
                if not groups[pool]:
                    del groups[pool]
        lanes.file(filed, taken.lease)
    if taken.alone or not laned:
        return replace(taken, messages=keep)
    used = sum(weight(t) for t in keep)
    light = any(t.fresh for t in keep)
    share = room - used if not light else min(room - used, max(1, int(room * LIGHT_SHARE)))
    more = True  # a lane holds messages still, or did a moment ago: a run too many costs a take
    if share > 0:
        try:  # what was filed is filed: Redis refusing now costs this run its lanes' share only
            got, more = lanes.take(share, taken.lease, LIGHT_WAIT if light else 0.0)
            keep += got
        except redis.RedisError as exc:
            log.warning("could not take ingest messages from the pools' lanes (%s); later runs will", exc)
    return replace(taken, messages=keep, more=taken.more or more)
