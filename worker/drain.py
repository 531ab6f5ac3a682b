"""Taking many waiting ingest messages in one Redis round trip, as kombu would take them one by one.

Celery's consumer takes one message per BRPOP and writes its "unacknowledged" record in a second
round trip; with producers that publish one event per message that caps a worker at a few
hundred messages a second, whatever the store and the senders could do. So an ingest run takes,
besides the message Celery handed it, up to PUSHSYNC_INGEST_BATCH_MAX - 1 more ingest messages
straight from the ``events`` list, in one Lua step that records each exactly as kombu does (the
``unacked`` hash and the ``unacked_index`` sorted set, scored with the time taken). From there:

- the run acknowledges them (``ack``) only after their events' outcomes are recorded or their
  pushes queued, as Celery acknowledges the run's own message;
- ``restore`` gives them back to the queue at once (the run could not hand their work on);
- a worker killed in between leaves them in the hash, and kombu's own restore in every worker
  puts them back on the queue after the visibility timeout. Nothing here is needed for that.

The step stops at the first message that is not an ingest task, or that carries an ETA (a
countdown), and leaves it at the head of the list for Celery's consumer.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import redis

from pushsync.queues import EVENTS_QUEUE, INGEST_TASK

UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"

# KEYS: queue, unacked, unacked_index. ARGV: how many, now, task name.
_TAKE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then break end
  local ok, msg = pcall(cjson.decode, raw)
  local headers = ok and type(msg) == 'table' and type(msg['headers']) == 'table' and msg['headers'] or nil
  local props = ok and type(msg) == 'table' and type(msg['properties']) == 'table' and msg['properties'] or nil
  local tag = props and props['delivery_tag']
  if not headers or headers['task'] ~= ARGV[3] or (headers['eta'] and headers['eta'] ~= cjson.null)
     or type(tag) ~= 'string' then
    redis.call('RPUSH', KEYS[1], raw)
    break
  end
  local info = type(props['delivery_info']) == 'table' and props['delivery_info'] or {}
  local ex = type(info['exchange']) == 'string' and info['exchange'] or ''
  local rk = type(info['routing_key']) == 'string' and info['routing_key'] or KEYS[1]
  -- the message as it came (not decoded and encoded again), in kombu's [message, exchange, key]
  redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
  redis.call('ZADD', KEYS[3], ARGV[2], tag)
  out[#out + 1] = raw
end
return out
"""

# KEYS: queue, unacked, unacked_index. ARGV: tags. Puts each back at the head of the queue.
_RESTORE = """
for _, tag in ipairs(ARGV) do
  local rec = redis.call('HGET', KEYS[2], tag)
  if rec then
    local entry = cjson.decode(rec)
    redis.call('RPUSH', KEYS[1], cjson.encode(entry[1]))
  end
  redis.call('HDEL', KEYS[2], tag)
  redis.call('ZREM', KEYS[3], tag)
end
return 1
"""


@dataclass
class Taken:
    """One message taken from the queue: its delivery tag, and its arguments if they parse."""

    tag: str
    args: object = None
    kwargs: object = None
    error: str | None = None
    raw: str = ""  # the message as it came, kept for a dead letter when it does not parse
    redelivered: bool = False  # kombu put it back once already


def parse(raw: bytes | str) -> Taken:
    """A kombu message as the Lua step returned it: Celery's protocol 2 body, JSON, maybe base64."""
    msg = json.loads(raw)
    tag = msg["properties"]["delivery_tag"]
    try:
        body = msg["body"]
        if msg["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        if not (isinstance(decoded, list) and len(decoded) >= 2):
            raise ValueError("the body is not [args, kwargs, embed]")
        info = msg["properties"].get("delivery_info")
        headers = msg.get("headers") if isinstance(msg.get("headers"), dict) else {}
        again = bool(headers.get("redelivered") or (isinstance(info, dict) and info.get("redelivered")))
        return Taken(tag, decoded[0], decoded[1], redelivered=again)
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        return Taken(tag, error=f"the message does not parse: {type(exc).__name__}: {str(exc)[:150]}",
                     raw=(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)[:20000])


class Drain:
    def __init__(self, client: redis.Redis, queue: str = EVENTS_QUEUE):
        self.client, self.queue = client, queue
        self._take = client.register_script(_TAKE)
        self._restore = client.register_script(_RESTORE)

    def take(self, limit: int, now: float) -> list[Taken]:
        if limit <= 0:
            return []
        raws = self._take(keys=[self.queue, UNACKED, UNACKED_INDEX], args=[limit, now, INGEST_TASK])
        return [parse(r) for r in raws]

    def ack(self, tags: list[str]) -> None:
        if tags:
            pipe = self.client.pipeline(transaction=True)
            pipe.hdel(UNACKED, *tags)
            pipe.zrem(UNACKED_INDEX, *tags)
            pipe.execute()

    def restore(self, tags: list[str]) -> None:
        if tags:
            self._restore(keys=[self.queue, UNACKED, UNACKED_INDEX], args=tags)
