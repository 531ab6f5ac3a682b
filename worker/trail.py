"""The trail: what became of an identity's recent events and their pushes (`pushsync trace`).

Per (pool, identity), Redis keeps a list ``pushsync:trail:<pool>/<identity>``, newest entry first,
of at most PUSHSYNC_TRAIL_ENTRIES entries (100) that expires PUSHSYNC_TRAIL_DAYS (7) after its last
write; either setting 0 turns the trail off. A task collects its lines in a ``Trail`` (on the
task's ``metrics.Recorder``) and writes them in the round trip that writes its figures, one
script call for all of them: one entry per identity per task, its first line the time (Redis's
clock, ms), then its lines, one per fact, tab-separated:

    e  dataset  count  fate  detail                   an event at ingest (``FATES``)
    f  dataset  count  devices                        a count planned by a window's flush (or the sweep)
    d  dataset  count  device  token  outcome  detail one push (``OUTCOMES``); the token's first 8 characters
    x  how many                                       lines of this entry left out (past LINES_MAX)

A list, not a stream: a stream's first node takes about 4.7 kB however small its one entry (Redis
7 allocates the node whole), a list with one entry of an event pushed to five devices about 0.5 kB,
and most identities' trails hold a few entries. Writing the trail never fails a task: a Redis
error is the figures' (logged, the task goes on). Reading it back (``pushsync.trail``) trusts
nothing it finds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from pushsync import contract
from pushsync.contract import ChangeEvent, Key
from pushsync.messages import DeadLetter, DeliveryBatch, MessageError, from_dead_letter
from pushsync.trail import DETAIL_MAX, FATES, OUTCOMES, TOKEN_SHOWN, TRAIL, key
from worker.senders.base import Kind

__all__ = ["FATES", "OUTCOMES", "TRAIL", "Trail", "delivery", "ingest", "key", "letters"]
# the stale events of one run whose accepted count is read to tell a duplicate from a stale one
READ_MAX = 100
# lines of one entry at most (an identity's 20 datasets pushed to its 100 devices in one run would be
# 2,000): the rest is one "x <how many>" line, so an entry stays under about 25 kB
LINES_MAX = 300

# KEYS: the lists; ARGV: entries kept, TTL (s), then one entry's lines per key. pcall: a key that
# is not a list (someone else's) is left as it is, the others are written.
_WRITE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local last = tonumber(ARGV[1]) - 1
for i = 1, #KEYS do
  if type(redis.pcall('LPUSH', KEYS[i], now .. '\\n' .. ARGV[i + 2])) == 'number' then
    redis.pcall('LTRIM', KEYS[i], 0, last)
    redis.pcall('EXPIRE', KEYS[i], ARGV[2])
  end
end
return #KEYS
"""


def clean(text: object) -> str:
    """A detail as one field of one line: no tab, no newline, bounded."""
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")[:DETAIL_MAX]


def limits(settings) -> tuple[int, int]:
    """(entries, TTL seconds); (0, 0) when the trail is off."""
    entries, ttl = int(settings.trail_entries), int(settings.trail_days * 86400)
    return (entries, ttl) if entries > 0 and ttl > 0 else (0, 0)


class Trail:
    """One task's lines per identity, until the task's figures are written."""

    def __init__(self):
        self.lines: dict[str, list[str]] = {}
        self.omitted: dict[str, int] = {}  # lines past LINES_MAX, per key: one "x" line says how many
        self.entries = self.ttl = 0

    def on(self, settings) -> bool:
        """Whether the settings keep a trail (and, if so, its bounds for this task's write)."""
        self.entries, self.ttl = limits(settings)
        return self.entries > 0

    def add(self, pool: str, identity: str, *fields: object) -> None:
        k = key(pool, identity)
        lines = self.lines.setdefault(k, [])
        if len(lines) < LINES_MAX:
            lines.append("\t".join(map(str, fields)))
        else:
            self.omitted[k] = self.omitted.get(k, 0) + 1

    def merge(self, other: Trail) -> None:
        for k, lines in other.lines.items():
            mine = self.lines.setdefault(k, [])
            room = max(0, LINES_MAX - len(mine))
            mine.extend(lines[:room])
            dropped = len(lines) - min(room, len(lines)) + other.omitted.get(k, 0)
            if dropped:
                self.omitted[k] = self.omitted.get(k, 0) + dropped
        other.omitted = {}
        self.entries, self.ttl = max(self.entries, other.entries), max(self.ttl, other.ttl)
        other.lines = {}

    def __bool__(self) -> bool:
        return bool(self.lines)

    def write(self, pipe) -> None:
        """The lines as one script call on ``pipe`` (the figures' pipeline)."""
        lines, omitted = self.lines, self.omitted
        self.lines, self.omitted = {}, {}
        if not lines or self.entries <= 0:
            return
        for k, n in omitted.items():
            lines[k].append(f"x\t{n}")
        pipe.eval(_WRITE, len(lines), *lines, self.entries, self.ttl, *("\n".join(v) for v in lines.values()))


def letters(tr: Trail, written: Iterable[DeadLetter]) -> None:
    """Dead letters that name an identity: an event's (``e ... dead``) or a push's (``d ... dead``)."""
    for d in written:
        if d.kind == "delivery":
            try:
                pool, _platform, item = from_dead_letter(d.payload)
            except MessageError:
                continue
            tr.add(pool, item.identity_id, "d", item.dataset, item.sync_count, item.device_id, "", "dead",
                   clean(d.reason))
        elif d.kind == "event" and isinstance(d.payload, dict):
            p = d.payload
            try:
                pool, identity = contract.pool_id(p.get("identityPoolId")), contract.identity_id(p.get("identityId"))
            except (contract.ValidationError, TypeError):
                continue  # no identity to file it under
            tr.add(pool, identity, "e", clean(p.get("datasetName", "?"))[:128], clean(p.get("syncCount", "?"))[:20],
                   "dead", clean(d.reason))


def ingest(tr: Trail, events: list[ChangeEvent], held: dict[Key, int], seen: dict,
           batches: list[DeliveryBatch], accepted: Callable[[list[Key]], dict[Key, int]]) -> None:
    """Each event's fate in a run that committed: ``seen`` is what ``plan.micro_batch`` saw (the
    keys that moved, those planned, the dead letters written); ``accepted(keys)`` reads the store's
    accepted counts, for the events that moved nothing (a duplicate or a stale one)."""
    moved, planned = seen.get("moved", {}), seen.get("planned", {})
    dead = {_letter_key(d) for d in seen.get("letters", ()) if d.kind == "event"}
    devices = Counter((b.pool, i.identity_id, i.dataset, i.sync_count) for b in batches for i in b.items)
    newest: dict[Key, ChangeEvent] = {}
    for e in events:
        if (e.pool, e.identity, e.dataset, e.sync_count) in dead:
            continue
        old = newest.get(e.key)
        if old is None or e.sync_count > old.sync_count:
            if old is not None:
                tr.add(old.pool, old.identity, "e", old.dataset, old.sync_count, "coalesced", e.sync_count)
            newest[e.key] = e
        else:
            tr.add(e.pool, e.identity, "e", e.dataset, e.sync_count,
                   *(("duplicate", "") if e.sync_count == old.sync_count else ("coalesced", old.sync_count)))
    quiet = [k for k in newest if k not in moved and k not in planned]
    counts = accepted(quiet[:READ_MAX]) if quiet else {}
    for k, e in newest.items():
        n = devices[(k.pool, k.identity, k.dataset, e.sync_count)]
        fate: tuple[str, object]
        if k in moved:
            fate = ("held", held[k]) if k in held else ("pushed", n)
        elif k in planned and planned[k][0] == e.sync_count:
            fate = ("again", n)  # its count pushed again: the run that took it first died
        else:
            now = counts.get(k)
            fate = ("duplicate", "") if now == e.sync_count else ("stale", "" if now is None else now)
        tr.add(k.pool, k.identity, "e", k.dataset, e.sync_count, *fate)
    for k, (count, _origin) in planned.items():
        last = newest.get(k)
        if last is None or last.sync_count != count or k in held:
            tr.add(k.pool, k.identity, "f", k.dataset, count, devices[(k.pool, k.identity, k.dataset, count)])


def _letter_key(d: DeadLetter) -> tuple:
    p = d.payload if isinstance(d.payload, dict) else {}
    values = (p.get("identityPoolId"), p.get("identityId"), p.get("datasetName"), p.get("syncCount"))
    return tuple(v if isinstance(v, (str, int)) else None for v in values)  # untrusted: maybe unhashable


def delivery(tr: Trail, batch: DeliveryBatch, targets: dict, outcomes: list, result, next_at: float,
             unsendable: tuple[str, str] | None = None, now: float = 0.0) -> None:
    """Each push of a delivery batch: what the send-time check, the service or the policy made of it.
    ``next_at``: when a retried push is due again (epoch seconds); a push held for the FCM budget
    or its pool's window goes at ``now`` and its wait."""
    answers = {o.key: o for o in outcomes}
    again = set(result.retry_batch.items) if result.retry_batch is not None else set()
    waiting = {i.key: ("waiting" if held.budgeted else "paced", now + wait) for held, wait in result.later
               for i in held.items}
    for item in batch.items:
        t = targets.get(item.key)
        token = t.token[:TOKEN_SHOWN] if t is not None else ""
        o = answers.get(item.key)
        if t is None:
            fate = ("skipped", "unsubscribed")  # not subscribed, inactive, removed, or of another platform
        elif t.identity_id != item.identity_id:
            fate = ("skipped", "moved")
        elif t.planned_count is not None and item.sync_count < t.planned_count:
            fate = ("stale", t.planned_count)
        elif unsendable is not None:
            fate = ("dead", clean(f"{unsendable[0]}: {unsendable[1]}"))
        elif item.key in waiting:
            fate = (waiting[item.key][0], f"{waiting[item.key][1]:.3f}")
        elif item.key in result.covered:  # its key in worker.pacing sent a newer count
            fate = ("stale", result.covered[item.key])
        elif o is None:
            continue  # not sent: nothing to say (a batch whose send failed is retried whole)
        elif o.kind is Kind.OK:
            fate = ("sent", "")
        elif o.kind is Kind.TOKEN_INVALID:
            fate = ("invalid", clean(o.reason))
        elif item in again:
            fate = ("retry", f"{next_at:.3f}")
        else:
            fate = ("dead", clean(("retries exhausted: " if o.kind is Kind.RETRY else "permanent error: ")
                                  + (o.reason or "")))
        tr.add(batch.pool, item.identity_id, "d", item.dataset, item.sync_count, item.device_id, clean(token),
               *fate)
