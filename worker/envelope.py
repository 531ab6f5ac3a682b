"""Reading what producers put on ``events``: kombu's JSON envelope around Celery's task message
(protocol 2, or 1 from old clients), the body maybe in base64 and compressed. Every byte of it is
untrusted, so ``read`` is total: whatever cannot be read becomes an ``Unreadable`` with the
reason, never an exception; and ``read_batch`` turns a run's take into typed events, one dead
letter per thing that cannot be used, so that the run goes on with its neighbours."""

from __future__ import annotations

import base64
import bz2
import json
import lzma
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pushsync import contract
from pushsync.contract import ChangeEvent, Key, ValidationError
from pushsync.messages import DeadLetter
from pushsync.queues import EVENTS_QUEUE, INGEST_TASK
from worker.intake import MAX_ABANDONS, MAX_MESSAGE_BYTES, InFlight, Taken
from worker.plan import IngestResult

# Tasks an older pushsync sent to ``events``; skipped (counted) rather than dead-lettered.
OLD_TASKS = ("pushsync.flush_windows", "pushsync.prune_devices", "pushsync.trim_dead_letters",
             "pushsync.record_queue_depths")
# A compressed body may not unpack to more than this (a small message must not become a huge one).
UNPACKED_MAX = 8 << 20


class _Decompressor(Protocol):
    """What zlib's, bz2's and lzma's decompressor objects share: a bounded ``decompress``."""

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


# kombu's compression content types (kombu.compression), each read with a bound on what it unpacks
_UNPACK: dict[str, Callable[[], _Decompressor]] = {
    "application/x-gzip": lambda: zlib.decompressobj(47), "application/x-bz2": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor}


@dataclass
class Message:
    """An ingest message as a producer sent it: its events (still untrusted values) and when it
    was enqueued (for the latency histogram)."""

    id: str
    events: list
    enqueued_at: float
    attempts: int = 0
    abandons: int = 0


@dataclass
class Unreadable:
    """A message that is not a readable ingest task; ``cause`` and ``why`` say so."""

    id: str
    raw: bytes
    cause: str
    why: str
    task: str | None = None


def _finite(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    try:
        number = float(value)
    except OverflowError:
        return default
    return number if math.isfinite(number) else default


def read(taken: InFlight, now: float | None = None) -> Message | Unreadable:
    """A taken message parsed: Celery's protocol 2 (or 1) in kombu's JSON envelope, body maybe in
    base64. Total over any bytes: whatever fails (bad UTF-8, JSON nested past the recursion limit,
    a number only Lua's cjson reads) makes an ``Unreadable``, never an exception."""
    now = time.time() if now is None else now
    try:
        envelope = json.loads(taken.raw)
        headers = envelope.get("headers") or {}
        props = envelope.get("properties") or {}
        content_type = envelope.get("content-type", "application/json")
        if content_type != "application/json":  # pickle from a queue is remote code execution
            return Unreadable(taken.id, taken.raw, "unreadable message",
                              f"content type {str(content_type)[:60]!r}: only JSON is accepted")
        body = envelope["body"]
        if props.get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=True)
        if headers.get("compression"):
            body = _unpack(body, headers["compression"])
            if len(body) > UNPACKED_MAX:
                raise ValueError(f"the body unpacks to more than {UNPACKED_MAX} bytes")
        body = json.loads(body)
        if isinstance(body, dict):  # protocol 1: the task and its arguments in the body
            task, args, kwargs = body.get("task"), body.get("args", []), body.get("kwargs", {})
        else:
            task = headers.get("task")
            args, kwargs = body[0], body[1]
        if task != INGEST_TASK:
            return Unreadable(taken.id, taken.raw, "not an ingest task", f"{str(task)[:100]!r} on {EVENTS_QUEUE}",
                              task if isinstance(task, str) else None)
        m = from_arguments(taken.id, args, kwargs, now)
        m.attempts, m.abandons = taken.attempts, taken.abandons
        return m
    except Exception as exc:  # untrusted bytes: every way of failing ends here, by design
        return Unreadable(taken.id, taken.raw, "unreadable message", f"{type(exc).__name__}: {str(exc)[:150]}")


# The first event's pool where a producer of this project puts it: the first key of the first
# event of a Celery protocol 2 body ([[event, ...]] or [[[event, ...]]]), as a plain JSON string of
# the characters a pool id has. Anchored, so that a pool id anywhere else in the body is not taken
# for it; anything else is no answer (None).
_FIRST_POOL = re.compile(rb'\[\s*\[\s*(?:\[\s*)?\{\s*"identityPoolId"\s*:\s*"([\w:-]{1,100})"\s*[,}]')
PEEK_CHARS = 4096  # of a base64 body: its first 3,072 bytes, where a producer's first event is
PEEK_UNPACKED = 4096  # of a compressed body, the most unpacked to find it


def first_pool(raw: bytes) -> str | None:
    """The pool of a message's first event as a producer of this project writes it (kombu's JSON
    envelope, a base64 JSON body, maybe compressed), from the start of its body alone: what
    ``worker.lanes`` needs to know of a message it files, at a fifth of the cost of ``read`` for
    one of 100 events and a bounded cost for any message. None for any other message. Only
    where a message waits depends on it: the run that works on the message reads it whole and
    checks every event's pool."""
    try:
        envelope = json.loads(raw)
        if (envelope.get("content-type", "application/json") != "application/json"
                or (envelope.get("properties") or {}).get("body_encoding") != "base64"):
            return None
        head = base64.b64decode(envelope["body"][:PEEK_CHARS])
        packed = (envelope.get("headers") or {}).get("compression")
        if packed:
            head = _unpack(head, packed, PEEK_UNPACKED)
        found = _FIRST_POOL.match(head.lstrip())
        return found.group(1).decode() if found else None
    except Exception:  # untrusted bytes (an unknown compression too): no answer
        return None


def _unpack(body, kind, most: int = UNPACKED_MAX) -> bytes:
    """A compressed body unpacked, at most ``most`` bytes and one more (which says it holds more)."""
    unpacker = _UNPACK.get(kind)
    if unpacker is None:
        raise ValueError(f"compression {str(kind)[:40]!r} is not one this worker reads")
    return unpacker().decompress(body.encode() if isinstance(body, str) else body, most + 1)


def from_arguments(mid: str, args: object, kwargs: object, now: float) -> Message:
    """The ingest task's arguments as any producer may have sent them: ``(events[, enqueued_at])``,
    or ``events=`` and ``enqueued_at=`` as keywords."""
    args = list(args) if isinstance(args, (list, tuple)) else [args]
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    events = args[0] if args else kwargs.get("events", [])
    events = events if isinstance(events, list) else [events]
    enqueued = _finite(kwargs.get("enqueued_at", args[1] if len(args) > 1 else None), now)
    # only feeds the latency histogram: a time that cannot be one is read as now
    enqueued = enqueued if 0 < enqueued <= now + 86400 else now
    return Message(mid, events, enqueued)


@dataclass
class Batch:
    """What a take turned into: the events (typed), the messages they came from, the flushes, the
    dead letters so far."""

    taken: Taken
    messages: list[Message] = field(default_factory=list)
    events: list[ChangeEvent] = field(default_factory=list)
    flushes: set[Key] = field(default_factory=set)
    letters: list[DeadLetter] = field(default_factory=list)
    skipped: int = 0
    res: IngestResult = field(default_factory=IngestResult)
    again: set[ChangeEvent] = field(default_factory=set)  # events of messages whose run died
    put_back: list[str] = field(default_factory=list)  # taken past the run's events: untried

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.taken.messages if t.id not in self.put_back]


def read_batch(taken: Taken, *, max_events: int, batch_max: int, now: float) -> Batch:
    """Every message and flush member read once: typed events, and a dead letter for each thing
    that cannot be used. A take weighs messages by their size, so compressed ones can hold more
    than the run wants: those past twice PUSHSYNC_INGEST_BATCH_MAX are put back, untried."""
    batch = Batch(taken)
    for t in taken.messages:
        if len(batch.events) >= 2 * batch_max and not t.abandons:
            batch.put_back.append(t.id)
            continue
        _one(batch, t, max_events, now)
    for member in taken.flushes:
        try:
            batch.flushes.add(Key.from_text(member))
        except ValueError as exc:  # not a member pushsync writes: kept to be read, and gone from the set
            batch.letters.append(DeadLetter.message(member, "unreadable message", f"flush set: {exc}",
                                                    field="flush_member"))
    return batch


def _one(batch: Batch, t: InFlight, max_events: int, now: float) -> None:
    if t.oversize:
        batch.letters.append(DeadLetter.message(t.raw, "unreadable message", f"{t.size} bytes; the largest "
                                                f"message a worker reads is {MAX_MESSAGE_BYTES}"))
        return
    m = read(t, now)
    if isinstance(m, Unreadable):
        if m.task in OLD_TASKS:
            batch.skipped += 1
        else:
            batch.letters.append(DeadLetter.message(m.raw, m.cause, m.why))
        return
    add_message(batch, t, m, max_events)


def add_message(batch: Batch, t: InFlight, m: Message, max_events: int) -> None:
    """A readable message's events into the batch, typed, or dead-lettered with the reason."""
    batch.res.received += len(m.events)
    if t.abandons >= MAX_ABANDONS:
        why = f"taken by {t.abandons} runs that never finished (killed: out of memory, or past the time limit)"
        batch.letters += [DeadLetter.event(e, "run never finished", why) for e in m.events]
        batch.res.dead_lettered += len(m.events)
    elif len(m.events) > max_events:
        # refused whole, each event kept: replayed one by one, none is lost
        batch.letters += [DeadLetter.event(e, "too many events", f"the message holds {len(m.events)} events; the "
                                              f"limit is {max_events} (PUSHSYNC_MAX_EVENTS_PER_MESSAGE)")
                          for e in m.events]
        batch.res.invalid += len(m.events)
        batch.res.dead_lettered += len(m.events)
    else:
        batch.messages.append(m)
        for raw in m.events:
            try:
                batch.events.append(contract.event(raw))
            except ValidationError as exc:
                batch.letters.append(DeadLetter.event(raw, "invalid event", str(exc)))
                batch.res.invalid += 1
                batch.res.dead_lettered += 1
                continue
            if t.abandons:
                batch.again.add(batch.events[-1])
