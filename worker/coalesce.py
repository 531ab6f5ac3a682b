"""Coalescing: per (pool, identity, dataset), at most one push at the start of a window and one
at its end, however often the dataset changes in between.

APNs throttles background pushes and FCM keeps at most four collapse keys per device, so a
dataset that changes 100 times a second must not cost 100 pushes a second. The first change
opens a window of PUSHSYNC_COALESCE_WINDOW seconds (1; 0 turns coalescing off) and is pushed at
once. Changes inside the window are held: their counts are recorded in the store as usual, and
when the window ends ``pushsync.flush_windows`` pushes the dataset's last notified count, read
from the store then, to the subscribed devices.

State lives in Redis, not in a worker: ``pushsync:window:<key>`` (the open window, expiring with
it), and the sorted set ``pushsync:held`` (member: key and window, score: when the window ends)
with the held event of each member in the hash ``pushsync:held:events``. Every worker runs a
pump (``Pump``) that moves due members to ``pushsync:held:claimed`` in one Lua step, publishes
a flush task for them, then drops the claim; a claim older than ``CLAIM_TIMEOUT`` (its pump
died) goes back to the due set. A worker killed at any point loses no final count:

- before its run's transaction commits: the message comes back and runs again;
- after the commit: the held member was written before the transaction, so the pump flushes it,
  reading the count the transaction committed;
- a flush that ran before the commit (a transaction slower than the rest of the window) is
  covered by writing the member again after the commit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable

import redis

log = logging.getLogger("pushsync.coalesce")

WINDOW = "pushsync:window:"
HELD = "pushsync:held"
EVENTS = "pushsync:held:events"
CLAIMED = "pushsync:held:claimed"
CLAIM_TIMEOUT = 30.0

Key = tuple[str, str, str]

# ARGV: now (ms), window (ms), then per event: key text, held record (JSON), sync count.
# Returns 1 (lead) / 0 (held) per event. The window key holds "<opened ms>:<lead count>"; a held
# event's member is "<key>|<opened ms>" (one trailing push per window) and its record in the
# hash "<lead count>|<JSON>", so that the flush pushes only a count above the one already pushed.
_ENTER = """
local now, width = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 3 do
  local wkey = KEYS[1] .. ARGV[i]
  if redis.call('SET', wkey, now .. ':' .. ARGV[i + 2], 'NX', 'PX', width) then
    out[#out + 1] = 1
  else
    local value = redis.call('GET', wkey) or (now .. ':-1')
    local sep = string.find(value, ':', 1, true)
    local opened = sep and tonumber(string.sub(value, 1, sep - 1)) or now
    local lead = sep and tonumber(string.sub(value, sep + 1)) or -1
    local member = ARGV[i] .. '|' .. opened
    redis.call('ZADD', KEYS[2], 'NX', opened + width, member)
    redis.call('HSET', KEYS[3], member, lead .. '|' .. ARGV[i + 1])
    out[#out + 1] = 0
  end
end
return out
"""

# ARGV: now (ms), limit, claim timeout (ms). Returns member, event, member, event ...
_CLAIM = """
local now = tonumber(ARGV[1])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]))) do
  redis.call('ZREM', KEYS[3], m)
  redis.call('ZADD', KEYS[1], now, m)
end
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZADD', KEYS[3], now, m)
  out[#out + 1] = m
  out[#out + 1] = redis.call('HGET', KEYS[2], m) or ''
end
return out
"""

# KEYS: window prefix. ARGV: key text, count, ... Raises an open window's lead count to count.
_LEAD = """
for i = 1, #ARGV, 2 do
  local wkey = KEYS[1] .. ARGV[i]
  local value = redis.call('GET', wkey)
  local sep = value and string.find(value, ':', 1, true)
  if sep and (tonumber(string.sub(value, sep + 1)) or -1) < tonumber(ARGV[i + 1]) then
    redis.call('SET', wkey, string.sub(value, 1, sep) .. ARGV[i + 1], 'KEEPTTL')
  end
end
return 1
"""

# After the commit: the members of held winners again (NX: a pending one is left as it is).
_AGAIN = """
for i = 1, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'NX', tonumber(ARGV[i + 1]), ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
end
return 1
"""


# Drop claims; a member written again since (``again``) keeps its held event.
_DONE = """
for _, m in ipairs(ARGV) do
  redis.call('ZREM', KEYS[3], m)
  if not redis.call('ZSCORE', KEYS[1], m) then redis.call('HDEL', KEYS[2], m) end
end
return 1
"""


def _flush_entry(member: str, record: bytes | str | None) -> dict | None:
    """What the flush of one window needs: its key, the count its leading push carried (-1:
    unknown) and the held event's origin device."""
    try:
        pool, identity, dataset = json.loads(member.rsplit("|", 1)[0])
        record = record.decode() if isinstance(record, bytes) else (record or "-1|{}")
        lead, _, held = record.partition("|")
        lead, held = int(lead), json.loads(held)
    except (ValueError, TypeError):
        return None
    if not all(isinstance(x, str) for x in (pool, identity, dataset)):
        return None
    origin = held.get("originDeviceId") if isinstance(held, dict) else None
    return {"identityPoolId": pool, "identityId": identity, "datasetName": dataset, "leadCount": lead,
            "originDeviceId": origin if isinstance(origin, str) else None}


def _record(e: dict) -> str:
    origin = e.get("originDeviceId")
    return json.dumps({"originDeviceId": origin} if isinstance(origin, str) else {}, separators=(",", ":"))


def key_text(key: Key) -> str:
    return json.dumps(list(key), separators=(",", ":"))


def event_key(e: dict) -> Key:
    return (e["identityPoolId"], e["identityId"], e["datasetName"])


class Windows:
    def __init__(self, client: redis.Redis, width: float):
        self.client, self.width_ms = client, int(width * 1000)
        self._enter = client.register_script(_ENTER)
        self._claim = client.register_script(_CLAIM)
        self._again = client.register_script(_AGAIN)
        self._done = client.register_script(_DONE)
        self._lead = client.register_script(_LEAD)

    def enter(self, events: list[dict]) -> set[Key]:
        """Open windows for these events; returns the keys whose events are held (their
        window was already open). One round trip for the micro-batch."""
        if not events or self.width_ms <= 0:
            return set()
        args: list = [int(time.time() * 1000), self.width_ms]
        for e in events:
            args += [key_text(event_key(e)), _record(e), int(e["syncCount"])]
        leads = self._enter(keys=[WINDOW, HELD, EVENTS], args=args)
        return {event_key(e) for e, lead in zip(events, leads, strict=True) if not lead}

    def again(self, held: Iterable[dict]) -> None:
        """After the commit: make sure each held winner's window will be flushed."""
        args: list = []
        now = int(time.time() * 1000)
        for e in held:
            k = key_text(event_key(e))
            value = self.client.get(WINDOW + k)
            opened, _, lead = (value.decode(errors="replace") if value else f"{now}:-1").partition(":")
            opened, lead = (opened, lead) if opened.isdigit() and lead.lstrip("-").isdigit() else (str(now), "-1")
            args += [f"{k}|{opened}", int(opened) + self.width_ms, f"{lead}|{_record(e)}"]
        if args:
            self._again(keys=[HELD, EVENTS], args=args)

    def current_leads(self, keys: list[Key]) -> dict[Key, int]:
        """The count the open window of each key led with (keys without an open window left out)."""
        if not keys:
            return {}
        values = self.client.mget([WINDOW + key_text(k) for k in keys])
        out = {}
        for k, v in zip(keys, values, strict=True):
            if v:
                try:
                    out[k] = int(v.decode().partition(":")[2])
                except ValueError:
                    pass
        return out

    def stale_leads(self, counts: dict[Key, int]) -> None:
        """Windows opened by a stale event: their lead count becomes the count the devices
        already have (the store's), so that their flush sends only something newer."""
        if counts:
            args: list = []
            for key, n in counts.items():
                args += [key_text(key), n]
            self._lead(keys=[WINDOW], args=args)

    def claim(self, limit: int = 500) -> list[tuple[str, dict | None]]:
        """Due windows as (member, what to flush): the key comes from the member itself, the
        origin device from the held event when it is there. A member that is not ours
        (hand-written into Redis) comes back with None, to be dropped and logged."""
        raw = self._claim(keys=[HELD, EVENTS, CLAIMED], args=[int(time.time() * 1000), limit,
                                                              int(CLAIM_TIMEOUT * 1000)])
        out = []
        for member, event in zip(raw[::2], raw[1::2], strict=True):
            member = member.decode() if isinstance(member, bytes) else str(member)
            out.append((member, _flush_entry(member, event)))
        return out

    def done(self, members: list[str]) -> None:
        if members:
            self._done(keys=[HELD, EVENTS, CLAIMED], args=members)

    def depth(self) -> dict[str, int]:
        return {"held": self.client.zcard(HELD), "held_claimed": self.client.zcard(CLAIMED)}


class Pump(threading.Thread):
    """Every ``interval`` seconds: claim the due windows, hand them to ``publish`` (the flush
    task), drop the claims. An error is logged and the next tick tries again; a claim that
    never gets dropped returns after ``CLAIM_TIMEOUT``."""

    def __init__(self, windows: Windows, publish: Callable[[list[dict]], None], interval: float = 0.1):
        super().__init__(name="pushsync-window-pump", daemon=True)
        self.windows, self.publish, self.interval = windows, publish, interval
        self.stopping = threading.Event()

    def tick(self) -> int:
        claimed = self.windows.claim()
        if not claimed:
            return 0
        events = [e for _m, e in claimed if e is not None]
        if len(events) < len(claimed):
            log.warning("window pump: dropped %d held members that do not parse", len(claimed) - len(events))
        if events:
            self.publish(events)
        self.windows.done([m for m, _e in claimed])
        return len(events)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:  # Redis away, a publish refused: the claims come back later
                log.warning("window pump: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
