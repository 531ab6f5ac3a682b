"""Counters and the latency histogram, kept in Redis so that every worker process and
container adds to the same figures; `pushsync metrics` serves them to Prometheus
(``worker.exporter``) and `pushsync stats` prints them. Labels are platforms, reasons, queue
and worker names: never a token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import redis

from worker.trail import Trail

COUNTERS_KEY = "pushsync:metrics:counters"
LATENCY_KEY = "pushsync:metrics:latency"
# seconds from event enqueued to push accepted by FCM or APNs
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
SEP = "|"
# per worker node, "<pools whose credentials it cannot open> <when it last checked>" (worker.pools.KeyCheck)
POOL_KEYS_KEY = "pushsync:workers:pool_keys"
# a figure older than this is a gone worker's (a live one writes it every minute)
POOL_KEYS_FRESH = 180.0


def _field(*parts: str) -> str:
    return SEP.join(p.replace(SEP, "/") for p in parts)


class Recorder:
    """Collects one task's figures, and its trail (``worker.trail``), and writes them in one round trip."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.latency: dict[str, float] = {}
        self.trail = Trail()

    def add(self, *parts: str, n: int = 1) -> None:
        if n:
            key = _field(*parts)
            self.counts[key] = self.counts.get(key, 0) + n

    def observe(self, platform: str, seconds: float, n: int = 1) -> None:
        if n <= 0:
            return
        seconds = max(0.0, seconds)
        for bound in BUCKETS:
            if seconds <= bound:
                self._lat(platform, f"le={bound}", n)
                break
        else:
            self._lat(platform, "le=+Inf", n)
        self._lat(platform, "count", n)
        self.latency[_field(platform, "sum")] = self.latency.get(_field(platform, "sum"), 0.0) + seconds * n

    def merge(self, other: Recorder) -> None:
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        for key, seconds in other.latency.items():
            self.latency[key] = self.latency.get(key, 0.0) + seconds
        self.trail.merge(other.trail)

    def _lat(self, platform: str, what: str, n: int) -> None:
        key = _field(platform, what)
        self.latency[key] = self.latency.get(key, 0) + n

    def flush(self, client: redis.Redis) -> None:
        if not self.counts and not self.latency and not self.trail:
            return
        pipe = client.pipeline(transaction=False)
        self.trail.write(pipe)
        for key, n in self.counts.items():
            pipe.hincrby(COUNTERS_KEY, key, n)
        for key, v in self.latency.items():
            if key.endswith(SEP + "sum"):
                pipe.hincrbyfloat(LATENCY_KEY, key, v)
            else:
                pipe.hincrby(LATENCY_KEY, key, int(v))
        pipe.execute()
        self.counts.clear()
        self.latency.clear()


def record_delivery(rec: Recorder, batch, result, outcomes, accepted_at: float) -> None:
    """One delivery task's figures: pushes sent, failed by reason, skipped, dead-lettered, and
    the enqueue-to-accepted latency of those sent."""
    platform = batch.platform
    rec.add("sent", platform, n=result.sent)
    for o in outcomes:
        if o.kind.value != "ok":
            rec.add("failed", platform, o.reason or o.kind.value)
    rec.add("invalidated", platform, n=result.deactivated)
    rec.add("dead_lettered", "delivery", n=result.dead_lettered)
    rec.add("skipped", "not_owned", n=result.skipped)
    rec.add("skipped", "stale", n=result.stale + batch.duplicates)
    rec.add("held", "fcm_budget", n=result.held)
    rec.add("held", "window", n=result.paced)
    if batch.enqueued_at is not None:
        rec.observe(platform, accepted_at - batch.enqueued_at, n=result.sent)


def _text(raw: bytes | str, errors: str = "strict") -> str:
    """A Redis reply as text (the project's clients answer bytes; a str passes as it is)."""
    return raw.decode(errors=errors) if isinstance(raw, bytes) else raw


# counters with one label (the platform, or the reason of a skip); "failed" has two
_ONE_LABEL = ("sent", "invalidated", "events", "dead_lettered", "skipped", "held")


def _fields(client: redis.Redis, key: str, parse, bad: list[int]):
    """(field, number) of a hash of ours; a field that is not ours (not text, not a number) is counted in
    ``bad`` and left out, so that one stray field does not take the whole page down."""
    for k, v in client.hgetall(key).items():
        try:
            yield _text(k), parse(_text(v))
        except (ValueError, UnicodeDecodeError):
            bad[0] += 1


def snapshot(client: redis.Redis, queues: Iterable[str], dead_letters: int | None) -> dict:
    """Everything `pushsync stats` shows and `pushsync metrics` serves."""
    out: dict = {"sent": {}, "failed": {}, "invalidated": {}, "events": {}, "dead_lettered": {}, "skipped": {},
                 "held": {}, "latency": {}}
    bad = [0]
    for key, n in _fields(client, COUNTERS_KEY, int, bad):
        kind, *labels = key.split(SEP)
        if kind in _ONE_LABEL and len(labels) == 1:
            out[kind][labels[0]] = n
        elif kind == "failed" and len(labels) == 2:
            out["failed"].setdefault(labels[0], {})[labels[1]] = n
        else:
            bad[0] += 1
    for key, v in _fields(client, LATENCY_KEY, float, bad):
        platform, sep, what = key.partition(SEP)
        if sep and math.isfinite(v):
            out["latency"].setdefault(platform, {})[what] = v
        else:
            bad[0] += 1
    out["unreadable_fields"] = bad[0]
    out["queues"] = queue_depths(client, queues)
    out["dead_letters"] = dead_letters
    out["at"] = time.time()
    out["pools_key_unreadable"] = pool_keys(client, out["at"])
    return out


def pool_keys(client: redis.Redis, now: float) -> dict[str, int]:
    """Worker node -> pools whose credentials it cannot open, for the workers that said so lately;
    a field that is not two finite numbers is ignored, not a failed page."""
    out: dict[str, int] = {}
    for node, raw in client.hgetall(POOL_KEYS_KEY).items():
        try:
            count, at = (float(x) for x in _text(raw).split())
        except (ValueError, UnicodeDecodeError):
            continue
        if math.isfinite(count) and count >= 0 and math.isfinite(at) and now - at <= POOL_KEYS_FRESH:
            out[_text(node, errors="replace")] = int(count)
    return out


def summary_lines(snap: dict) -> list[str]:
    """`pushsync stats` without --json: a few lines a person reads."""
    lines = ["queues:        " + ", ".join(f"{q} {n}" for q, n in snap["queues"].items()),
             "events:        " + (", ".join(f"{k} {v}" for k, v in sorted(snap["events"].items())) or "none yet")]
    for platform in sorted(set(snap["sent"]) | set(snap["failed"])):
        failed = snap["failed"].get(platform, {})
        lat = snap["latency"].get(platform, {})
        mean = lat.get("sum", 0.0) / lat["count"] if lat.get("count") else None
        lines.append(f"{platform + ':':<14} sent {snap['sent'].get(platform, 0)}, failed {sum(failed.values())}"
                     + (f" ({', '.join(f'{r} {n}' for r, n in sorted(failed.items()))})" if failed else "")
                     + f", tokens invalidated {snap['invalidated'].get(platform, 0)}"
                     + (f", mean enqueue-to-accepted {mean:.3f} s" if mean is not None else ""))
    if snap.get("held"):
        lines.append("held:          " + ", ".join(f"{k} {v}" for k, v in sorted(snap["held"].items())))
    if snap.get("skipped"):
        lines.append("skipped:       " + ", ".join(f"{k} {v}" for k, v in sorted(snap["skipped"].items())))
    unreadable = {w: n for w, n in sorted(snap.get("pools_key_unreadable", {}).items()) if n}
    if unreadable:
        lines.append("pool keys:     " + ", ".join(f"{w} cannot open the credentials of {n} pool(s)"
                                                   for w, n in unreadable.items()) + " (its log names them)")
    if "workers" in snap:
        lines.append(f"workers:       {snap['workers']['alive']} alive, {snap['workers']['stuck']} stuck; "
                     f"scheduler lock {'held' if snap.get('scheduler_lock_held') else 'NOT HELD'}")
    if "store" in snap:
        lines.append("store:         " + ("answering" if snap["store"]["up"]
                                          else f"NOT ANSWERING ({snap['store']['error']})"))
    dead = snap["dead_letters"] if snap["dead_letters"] is not None else "unknown (store)"
    lines.append(f"dead letters:  {dead} in the store; written so far: "
                 + (", ".join(f"{k} {v}" for k, v in sorted(snap["dead_lettered"].items())) or "none"))
    return lines


def queue_depths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting per queue; in the retry set; ingest messages taken by a run and not yet
    done with (in_flight: a run has them, or a retry waits for its time); coalescing flushes
    scheduled (flushes); in the pools' lanes (laned)."""
    from worker import retry
    from worker.coalesce import FLUSH
    from worker.health import lane_depth
    from worker.intake import DUE

    pipe = client.pipeline(transaction=False)
    names = list(queues)
    for q in names:
        pipe.llen(q)
    pipe.zcard(DUE)
    pipe.zcard(FLUSH)
    *lengths, in_flight, flushes = pipe.execute()
    depths = dict(zip(names, map(int, lengths), strict=True))
    depths.update(retry.depth(client))
    depths.update(in_flight=int(in_flight), flushes=int(flushes), laned=lane_depth(client))
    return depths


