"""Reading what producers put on ``events``: kombu's JSON envelope around Celery's task message
(protocol 2, or 1 from old clients), the body maybe in base64. Every byte of it is untrusted, so
``read`` is total: whatever cannot be read becomes an ``Unreadable`` with the reason, never an
exception, and the run it came in goes on without it."""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass

from pushsync.queues import EVENTS_QUEUE, INGEST_TASK
from worker.intake import InFlight


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
