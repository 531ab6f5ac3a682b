"""An identity's trail (``worker.trail`` writes it) read back: the events newest first, each with
its fate and its pushes, as `pushsync trace` and the API's trail path show them; and the format
both sides share (the key, the fates and outcomes).

Whatever Redis holds under the key is untrusted: an entry or a line that is not one the worker
writes is skipped and counted (``skipped``), a key that is not a list is one skipped entry,
and every string shown is bounded and made printable.
"""

from __future__ import annotations

import time

import redis

from pushsync import contract

TRAIL = "pushsync:trail:"
DETAIL_MAX = 200
TOKEN_SHOWN = 8  # as worker.logs.short_token shows a token
# what an event's line says became of it at ingest, and what a push's line says became of it
FATES = ("pushed", "held", "coalesced", "stale", "duplicate", "dead", "again")
OUTCOMES = ("sent", "invalid", "retry", "waiting", "paced", "skipped", "stale", "dead")
# entries read at most (a trail is capped at PUSHSYNC_TRAIL_ENTRIES; this bounds a key someone else filled)
READ_MAX = 10_000


def key(pool: str, identity: str) -> str:
    return f"{TRAIL}{pool}/{identity}"


def _iso(ms: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms % 1000):03d}Z"


def _text(value: str, limit: int = DETAIL_MAX) -> str:
    return contract.printable(value, limit)


def _count(value: str) -> int:
    if not value.isdigit() or len(value) > 19:
        raise ValueError("not a sync count")
    return int(value)


def _number(value: str) -> float:
    number = float(value)
    if not 0 <= number < 1e14:
        raise ValueError("not a time")
    return number


def event_text(fate: str, detail: str) -> str:
    if fate == "pushed":
        return f"pushed to {detail} devices"
    if fate == "held":
        return f"held by a coalescing window until {_iso(_number(detail))}"
    if fate == "coalesced":
        return f"coalesced: count {_count(detail)} of the same run was pushed instead"
    if fate == "stale":
        return "stale: a newer count was accepted already" + (f" ({_count(detail)})" if detail else "")
    if fate == "duplicate":
        return "duplicate: this count was accepted already"
    if fate == "again":
        return f"pushed again to {detail} devices (the run that took it first died)"
    if fate == "flushed":
        return f"pushed by a window's flush to {detail} devices"
    return f"dead-lettered: {detail}"


def device_text(outcome: str, detail: str) -> str:
    if outcome == "sent":
        return "sent"
    if outcome == "invalid":
        return f"token invalid ({detail}): the device is deactivated"
    if outcome == "retry":
        return f"retried: next attempt at {_iso(_number(detail) * 1000)}"
    if outcome == "waiting":
        return f"waiting for its slot in the FCM budget: goes at {_iso(_number(detail) * 1000)}"
    if outcome == "paced":
        return f"held by the pool's window for the platform: goes at {_iso(_number(detail) * 1000)}"
    if outcome == "skipped":
        return ("skipped: the device moved to another identity" if detail == "moved"
                else "skipped: the device is no longer subscribed to the dataset (unsubscribed, moved to another "
                     "identity, deactivated or removed)")
    if outcome == "stale":
        return f"skipped: count {_count(detail)} was planned since"
    return f"dead-lettered: {detail}"


def _line(ms: int, line: str) -> dict:
    """One line of an entry, checked; ValueError for anything the worker does not write."""
    kind, *f = line.split("\t")
    if kind == "e" and len(f) == 4 and f[2] in FATES:
        count = f[1] if f[2] == "dead" and not f[1].isdigit() else _count(f[1])
        return {"kind": "event", "time": _iso(ms), "dataset": _text(f[0], 128), "count": count if
                isinstance(count, int) else _text(count, 20), "fate": f[2], "detail": _text(f[3]),
                "text": _text(event_text(f[2], f[3]), 400), "flushed": None, "devices": []}
    if kind == "f" and len(f) == 3:
        n = _count(f[2])
        return {"kind": "flush", "time": _iso(ms), "dataset": _text(f[0], 128), "count": _count(f[1]), "devices": n}
    if kind == "d" and len(f) == 6 and f[4] in OUTCOMES:
        return {"kind": "device", "time": _iso(ms), "dataset": _text(f[0], 128), "count": _count(f[1]),
                "device": _text(f[2], 64), "token": _text(f[3], TOKEN_SHOWN) + "…" if f[3] else None,
                "outcome": f[4], "detail": _text(f[5]), "text": _text(device_text(f[4], f[5]), 400)}
    raise ValueError("not a trail line")


def _lines(entries) -> tuple[list[dict], int, int]:
    """Every line of every entry (oldest first), how many were skipped, and how many the worker
    left out (an entry's lines past its cap)."""
    out, skipped, omitted = [], 0, 0
    for entry in entries:
        try:
            stamp, _, text = (entry.decode() if isinstance(entry, bytes) else str(entry)).partition("\n")
            if not stamp.isdigit() or len(stamp) > 15 or not text:
                raise ValueError("not a trail entry")
            ms = int(stamp)
        except (ValueError, UnicodeDecodeError):
            skipped += 1
            continue
        for line in text.split("\n"):
            if line.startswith("x\t") and line[2:].isdigit() and len(line) < 12:
                omitted += int(line[2:])
                continue
            try:
                out.append(_line(ms, line))
            except (ValueError, OverflowError):
                skipped += 1
    return out, skipped, omitted


def _events(lines: list[dict]) -> list[dict]:
    """Flushes and pushes joined to the event of their dataset and count (the newest before them)."""
    events: list[dict] = []
    latest: dict[tuple, dict] = {}
    for line in lines:
        where = (line["dataset"], line["count"])
        kind = line.pop("kind")
        if kind == "event":
            events.append(line)
            latest[where] = line
            continue
        owner = latest.get(where)
        if owner is None:  # its event's entry is gone (trimmed) or came before the trail was on
            owner = {"time": line["time"], "dataset": line["dataset"], "count": line["count"],
                     "fate": "flushed" if kind == "flush" else "unknown", "detail": "",
                     "text": "the event's own entry is not on the trail", "flushed": None, "devices": []}
            events.append(owner)
            latest[where] = owner
        if kind == "flush":
            owner["flushed"] = {"time": line["time"], "devices": line["devices"],
                                "text": event_text("flushed", str(line["devices"]))}
        else:
            owner["devices"].append(line)
    return events


def read(client: redis.Redis, pool: str, identity: str, dataset: str | None = None) -> dict:
    """The identity's trail, newest event first (only ``dataset``'s when given)."""
    k = key(pool, identity)
    skipped = 0
    try:
        raw = client.lrange(k, 0, READ_MAX - 1)
    except redis.ResponseError:  # not a list: nothing the worker wrote
        raw, skipped = [], 1
    ttl = client.ttl(k)
    lines, bad, omitted = _lines(reversed(raw if isinstance(raw, list) else []))
    events = [e for e in _events(lines) if dataset is None or e["dataset"] == dataset]
    return {"pool": pool, "identity": identity, "dataset": dataset, "entries": len(raw), "skipped": skipped + bad,
            "omitted": omitted, "expires_in": ttl if isinstance(ttl, int) and ttl >= 0 else None,
            "events": events[::-1]}
