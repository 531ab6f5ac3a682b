"""Coalescing windows: per (pool, identity, dataset), at most one push at the start of a window and
one at its end, however often the dataset changes in between.

APNs throttles background pushes and FCM keeps at most four collapse keys per device, so a
dataset that changes 100 times a second must not cost 100 pushes a second. The first change opens
a window of PUSHSYNC_COALESCE_WINDOW seconds (1; 0 turns coalescing off) and is pushed at once
(the leading edge); changes inside the window are held, and the window's flush pushes at its end.

Redis decides only *when*: ``pushsync:window:<key>`` holds the open window's end, and the flush
set ``FLUSH`` (member: the key, score: when its flush is due) says when a flush runs. *What* is
pushed is the store's: a flush, like a leading edge, plans whatever count the store accepted and
has not planned yet (``store.repo.counts``). So nothing Redis holds can hide a count: a stale or
duplicate event changes nothing in the store, a transaction that failed after its window opened
leaves the count unplanned for the flush to find, and if Redis loses every key, the scheduler's
sweep finds the datasets whose accepted count is above the planned one.

The promise, tested with the default window (tests/worker/test_coalescing_property.py): once
changes to a key stop, the newest count accepted for it reaches every device subscribed to it at
that time within the window plus a bounded delay (a run's time, the retry of a failed transaction,
or at worst the sweep), and no push carries a count older than one already planned for the key.
"""

from __future__ import annotations

import redis

from pushsync.contract import Key

WINDOW = "pushsync:window:"
FLUSH = "pushsync:flush"
# A window key outlives its window by this much (ms): the window's end is the value, not the TTL,
# so the clock the caller passes decides, and the key still goes away by itself.
KEEP_MS = 60_000

# KEYS: window prefix, flush set. ARGV: now (ms; below 0: Redis's own clock, one for every host),
# then (key text, width ms) per key, then KEEP_MS. Returns per key 0 (it opened a window: the
# leading edge) or the open window's end (held; its flush is scheduled for that end unless one is
# due sooner).
_ENTER = """
local now = tonumber(ARGV[1])
if now < 0 then local t = redis.call('TIME') now = t[1] * 1000 + math.floor(t[2] / 1000) end
local out = {}
for i = 2, #ARGV - 1, 2 do
  local k, width = ARGV[i], tonumber(ARGV[i + 1])
  local wkey = KEYS[1] .. k
  local ends = tonumber(redis.call('GET', wkey) or '')
  -- a value that is not a time, or a window longer than its width, is not ours: a new window
  if ends and ends > now and ends <= now + width then
    redis.call('ZADD', KEYS[2], 'LT', ends, k)
    out[#out + 1] = ends
  else
    redis.call('SET', wkey, now + width, 'PX', width + tonumber(ARGV[#ARGV]))
    out[#out + 1] = 0
  end
end
return out
"""


class Windows:
    """``clock``: None for Redis's own time (production); a function for a test's clock."""

    def __init__(self, client: redis.Redis, clock=None):
        self.client, self.clock = client, clock
        self._enter = client.register_script(_ENTER)

    def enter(self, widths: dict[Key, float], now: float | None = None) -> dict[Key, int]:
        """Open the keys' windows (width in seconds; 0: none) in one round trip; returns the keys
        whose window was open already, each with its end (ms): their changes are held, and a flush
        is scheduled for that end (before the transaction: a crash after the commit still leaves
        one pending; an extra flush is harmless)."""
        now = now if now is not None else (self.clock() if self.clock else None)
        args: list = [-1 if now is None else int(now * 1000)]
        for key, width in widths.items():
            if width > 0:
                args += [key.text(), int(width * 1000)]
        if len(args) == 1:
            return {}
        args.append(KEEP_MS)
        ends = self._enter(keys=[WINDOW, FLUSH], args=args)
        keys = [k for k, w in widths.items() if w > 0]
        return {k: int(e) for k, e in zip(keys, ends, strict=True) if int(e)}

    def depth(self) -> dict[str, int]:
        return {"flushes": int(self.client.zcard(FLUSH))}
