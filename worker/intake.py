"""Taking work off Redis: ingest messages from ``events`` and due coalescing flushes, each in one
atomic step, held under a lease until the run that took them is done.

Celery's consumer never reads ``events``: kombu's Redis transport takes a message with ``BRPOP``
and records it as unacknowledged in a second command, so a Redis crash between the two loses an
acknowledged change event. Here every message leaves the list in the same Lua step that records
it in pushsync's own in-flight records (``INFLIGHT``: id -> the message as it came; ``DUE``: id ->
when it is due again), so at any instant a message is either on the list or in flight:

- ``take``: due in-flight messages first (a retry whose wait is over, or one whose lease ran out
  because its run died), then new ones, oldest first, through kombu's priority lists in kombu's
  order; the lease is the visibility timeout, longer than a run may last. A message whose run died
  (its lease ran out) is taken again alone, so that a message that kills its runs takes no
  neighbours with it; after ``MAX_ABANDONS`` such deaths it is dead-lettered as it is.
- ``defer``: a run that could not finish (the store out of reach) gives its messages a later due
  time, counting the try; nothing is published again, so nothing can exist twice.
- ``ack``: the run is done; the records go.

``ack`` and ``defer`` are fenced by the lease: they touch a record only while its lease is still
the caller's, so a run that outlived its lease cannot undo what the run that took over does. Ids
are each take's own (a random prefix), unique whatever Redis forgot. Times are Redis's own
(``TIME`` in the scripts), one clock for every host. Due flushes ride along: ``take`` leases the
due members of the flush set (``coalesce.FLUSH``) with the same lease, and ``ack`` removes each
only if its score is still that lease (a held event that scheduled it again meanwhile keeps it).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from pushsync.messages import RAW_KEPT
from pushsync.queues import EVENTS_QUEUE, RUNS_QUEUE
from worker.coalesce import FLUSH

INFLIGHT = "pushsync:inflight"
DUE = "pushsync:inflight:due"
ATTEMPTS = "pushsync:inflight:attempts"
ABANDONS = "pushsync:inflight:abandons"
LEASED = "pushsync:inflight:leased"
# the pools' backlogs (worker.lanes): a list per pool, and pool -> when its lane was last served
LANE = "pushsync:lane:"
LANES = "pushsync:lanes"
# kombu's Redis transport keeps a priority's messages in "<queue>\x06\x16<step>" (steps 0, 3, 6, 9;
# step 0 is the queue itself) and takes them in this order; a test pins it
PRIORITY_LISTS = (EVENTS_QUEUE, *(f"{EVENTS_QUEUE}\x06\x16{step}" for step in (3, 6, 9)))
# Runs that may die holding a message before it is dead-lettered (a run that can still reach Redis
# defers what it holds instead: only a killed process, or Redis away for longer than the run's own
# tries, counts).
MAX_ABANDONS = 5
# What a Celery message's bytes say of its events: about 1.2 kB of envelope (headers with the
# arguments' repr, properties, base64) and 230 to 400 bytes per event (measured with the producer
# client). Only the take's arithmetic uses it.
ENVELOPE_BYTES, EVENT_BYTES = 1200, 230
# A message larger than this is never handed to Python whole (a run reading it could run out of
# memory on every try): the take returns its first RAW_KEPT bytes, and the run dead-letters it.
MAX_MESSAGE_BYTES = 4 << 20

# Every script takes the time from Redis (ARGV[1] < 0) or from the caller's clock (tests): one
# clock for every host, so that windows, leases and due times agree whatever the hosts' clocks say.
_NOW = """
local now = tonumber(ARGV[1])
if now < 0 then local t = redis.call('TIME') now = t[1] * 1000 + math.floor(t[2] / 1000) end
"""

# KEYS: inflight, due, attempts, abandons, leased, flush, lanes, the queue's priority lists.
# ARGV: now, lease (ms), events wanted, flushes wanted, this take's id prefix, the envelope's bytes,
# bytes per event, the largest message handed over whole, the bytes kept of a larger one, then
# how far new messages are looked at past the events wanted (worker.lanes): events, messages. A
# message weighs what its size says it holds (at least one event), so that a run of single-event
# messages takes ~200 of them and one of 100-event messages two; the message that crosses the
# limit is the last. Ids are the take's own prefix and a number: unique whatever Redis forgot.
_TAKE = _NOW + """
local lease, limit, flimit, prefix = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local envelope, per_event, biggest, kept = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local window, most, fresh = math.max(limit, tonumber(ARGV[10])), tonumber(ARGV[11]), 0
local till = now + lease
local msgs, n, weight, alone = {}, 0, 0, false
local function hand(id, raw, tries, ab, fresh)
  msgs[#msgs + 1] = id
  msgs[#msgs + 1] = #raw <= biggest and raw or string.sub(raw, 1, kept)
  msgs[#msgs + 1] = tries
  msgs[#msgs + 1] = ab
  msgs[#msgs + 1] = #raw
  msgs[#msgs + 1] = fresh
  n = n + 1
  weight = weight + math.max(1, math.floor((math.min(#raw, biggest) - envelope) / per_event))
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)) do
  if weight >= limit then break end
  local raw = redis.call('HGET', KEYS[1], id)
  if not raw then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('SREM', KEYS[5], id)
  else
    local abandoned = redis.call('SISMEMBER', KEYS[5], id) == 1
    if abandoned and n > 0 then break end
    local ab = tonumber(redis.call('HGET', KEYS[4], id)) or 0
    if abandoned then
      ab = ab + 1
      redis.call('HSET', KEYS[4], id, ab)
    end
    redis.call('SADD', KEYS[5], id)
    redis.call('ZADD', KEYS[2], till, id)
    hand(id, raw, tonumber(redis.call('HGET', KEYS[3], id)) or 0, ab, 0)
    if abandoned then alone = true break end
  end
end
if not alone then
  for q = 8, #KEYS do
    while weight < limit or (weight < window and fresh < most) do
      local raw = redis.call('RPOP', KEYS[q])
      if not raw then break end
      fresh = fresh + 1
      local id = prefix .. n
      redis.call('HSET', KEYS[1], id, raw)
      redis.call('ZADD', KEYS[2], till, id)
      redis.call('SADD', KEYS[5], id)
      hand(id, raw, 0, 0, 1)
    end
  end
end
local flushes = {}
if flimit > 0 and not alone then
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, flimit)) do
    redis.call('ZADD', KEYS[6], till, k)
    flushes[#flushes + 1] = k
  end
end
local more = 0
if #redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1) > 0
   or #redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 1) > 0 then
  more = 1
else
  for q = 8, #KEYS do
    if redis.call('LLEN', KEYS[q]) > 0 then more = 1 break end
  end
end
return {msgs, flushes, till, more, alone and 1 or 0, redis.call('ZRANGE', KEYS[7], 0, -1)}
"""

# Fencing: a record is touched only while its lease is still the caller's (another run that took
# it over after the lease ran out holds it now). KEYS: due, attempts, leased, flush.
# ARGV: now, lease, count a try (1/0), n, (id, wait ms) x n, then (flush member, wait ms)...
_DEFER = _NOW + """
local lease, count, n = tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])
for i = 5, 4 + 2 * n, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == lease then
    if count then redis.call('HINCRBY', KEYS[2], ARGV[i], 1) end
    redis.call('SREM', KEYS[3], ARGV[i])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
  end
end
for i = 5 + 2 * n, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[4], ARGV[i])) == lease then
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[i + 1]), ARGV[i])
  end
end
return 1
"""

# KEYS: inflight, due, attempts, abandons, leased, flush.
# ARGV: lease, n, ids x n, m, flush members done x m, then (member, due ms) to schedule again
_ACK = """
local lease, n = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, n + 2 do
  if tonumber(redis.call('ZSCORE', KEYS[2], ARGV[i])) == lease then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
    redis.call('SREM', KEYS[5], ARGV[i])
  end
end
local m = tonumber(ARGV[n + 3])
for i = n + 4, n + 3 + m do
  if tonumber(redis.call('ZSCORE', KEYS[6], ARGV[i])) == lease then redis.call('ZREM', KEYS[6], ARGV[i]) end
end
for i = n + 4 + m, #ARGV, 2 do
  redis.call('ZADD', KEYS[6], 'LT', tonumber(ARGV[i + 1]), ARGV[i])
end
return 1
"""

# Is there work, how many run triggers wait, and in how many ms is the next retry or flush due?
# KEYS: due, flush, the runs queue, lanes, the queue's priority lists.
_STATUS = _NOW + """
local work = 0
if redis.call('ZCARD', KEYS[4]) > 0 then work = 1 end
for q = 5, #KEYS do
  if redis.call('LLEN', KEYS[q]) > 0 then work = 1 break end
end
local nxt = -1
for _, z in ipairs({KEYS[1], KEYS[2]}) do
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = (tonumber(first[2]) or 0) - now
    if wait <= 0 then work = 1 elseif nxt < 0 or wait < nxt then nxt = wait end
  end
end
return {work, redis.call('LLEN', KEYS[3]), math.floor(nxt)}
"""


@dataclass(frozen=True)
class InFlight:
    """A message as ``take`` returned it: its in-flight id, its bytes (the first RAW_KEPT of a
    message over MAX_MESSAGE_BYTES), the tries so far (0: first), how many runs that took it died,
    and its size in Redis."""

    id: str
    raw: bytes
    attempts: int
    abandons: int
    size: int = 0
    fresh: bool = False  # new off ``events`` in this take (worker.lanes files it or keeps it)

    @property
    def oversize(self) -> bool:
        return self.size > MAX_MESSAGE_BYTES


@dataclass
class Taken:
    messages: list[InFlight] = field(default_factory=list)
    flushes: list[bytes] = field(default_factory=list)
    lease: int = 0  # the lease's end (ms): what ``ack`` and ``defer`` recognise the flushes by
    more: bool = False  # work was left behind: another run should start
    alone: bool = False  # a message whose run died, taken alone: nothing else may join it
    lanes: list[str] = field(default_factory=list)  # pools with a backlog in a lane (worker.lanes)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class Intake:
    """``clock``: None for Redis's own time (production); a function for a test's clock."""

    def __init__(self, client: redis.Redis, lease: float, clock=None):
        self.client, self.lease_ms, self.clock = client, _ms(lease), clock
        self._take = client.register_script(_TAKE)
        self._defer = client.register_script(_DEFER)
        self._ack = client.register_script(_ACK)
        self._status = client.register_script(_STATUS)

    def _now(self) -> int:
        return -1 if self.clock is None else _ms(self.clock())

    def take(self, events: int, flush_limit: int, window: int = 0, most: int = 0) -> Taken:
        """Messages until they hold about ``events`` events (by their size), new ones until
        ``window`` events or ``most`` messages (worker.lanes chooses among them), and up to
        ``flush_limit`` due flushes. A message whose run died is taken alone."""
        msgs, flushes, lease, more, alone, lanes = self._take(
            keys=[INFLIGHT, DUE, ATTEMPTS, ABANDONS, LEASED, FLUSH, LANES, *PRIORITY_LISTS],
            args=[self._now(), self.lease_ms, max(1, events), max(0, flush_limit), f"{uuid.uuid4().hex}:",
                  ENVELOPE_BYTES, EVENT_BYTES, MAX_MESSAGE_BYTES, RAW_KEPT, max(events, window), most])
        messages = [InFlight(msgs[i].decode(), msgs[i + 1], int(msgs[i + 2]), int(msgs[i + 3]), int(msgs[i + 4]),
                             msgs[i + 5] == 1) for i in range(0, len(msgs), 6)]
        laned = [p.decode(errors="replace") for p in lanes]  # a member not ours must not fail every run
        return Taken(messages, list(flushes), int(lease), bool(more), bool(alone), laned)

    def defer(self, waits: dict[str, float], lease: int, flushes: dict[bytes, float] | None = None,
              count: bool = True) -> None:
        """Messages (id -> seconds) and leased flushes (member -> seconds) due again later, the try
        counted (``count``) or not (a message put back untried)."""
        args: list = [self._now(), lease, int(count), len(waits)]
        for mid, wait in waits.items():
            args += [mid, _ms(wait)]
        for member, wait in (flushes or {}).items():
            args += [member, _ms(wait)]
        if waits or flushes:
            self._defer(keys=[DUE, ATTEMPTS, LEASED, FLUSH], args=args)

    def ack(self, ids: list[str], lease: int, flushes: Sequence[bytes] = (), again: dict[bytes, int] | None = None):
        """The run is done with these messages and flushes (while its lease on them holds);
        ``again`` schedules flushes (member -> due ms) unless they are due sooner already."""
        args: list = [lease, len(ids), *ids, len(flushes), *flushes]
        for member, due in (again or {}).items():
            args += [member, due]
        if ids or flushes or again:
            self._ack(keys=[INFLIGHT, DUE, ATTEMPTS, ABANDONS, LEASED, FLUSH], args=args)

    def status(self) -> tuple[bool, int, float | None]:
        """(work waiting now, run triggers waiting, seconds until the next retry or flush is due)."""
        work, triggers, nxt = self._status(keys=[DUE, FLUSH, RUNS_QUEUE, LANES, *PRIORITY_LISTS], args=[self._now()])
        return bool(work), int(triggers), (None if int(nxt) < 0 else int(nxt) / 1000)

    def wait(self, timeout: float) -> bool:
        """Block until a message waits on ``events`` (True) or ``timeout`` passes. BLMOVE from the
        list's tail to its tail leaves the list as it was, atomically: nothing is taken."""
        # redis-py annotates the timeout as int; BLMOVE takes a double (Redis >= 6), and redis-py sends it as is
        return self.client.blmove(EVENTS_QUEUE, EVENTS_QUEUE, max(0.01, timeout),  # type: ignore[arg-type]
                                  "RIGHT", "RIGHT") is not None
