"""Counters and the latency histogram, kept in Redis so that every worker process and
container adds to the same figures; `pushsync metrics` serves them to Prometheus and
`pushsync stats` prints them. Labels are platforms, reasons and queue names: never a token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis

from worker.trail import Trail

COUNTERS_KEY = "pushsync:metrics:counters"
LATENCY_KEY = "pushsync:metrics:latency"
# seconds from event enqueued to push accepted by FCM or APNs
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
SEP = "|"


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
        for key, n in other.latency.items():
            self.latency[key] = self.latency.get(key, 0) + n
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
    if batch.enqueued_at is not None:
        rec.observe(platform, accepted_at - batch.enqueued_at, n=result.sent)


def snapshot(client: redis.Redis, queues: Iterable[str], dead_letters: int | None) -> dict:
    """Everything `pushsync stats` shows and `pushsync metrics` serves."""
    counters = {k.decode(): int(v) for k, v in client.hgetall(COUNTERS_KEY).items()}
    raw_latency = {k.decode(): float(v) for k, v in client.hgetall(LATENCY_KEY).items()}
    out: dict = {"sent": {}, "failed": {}, "invalidated": {}, "events": {}, "dead_lettered": {}, "skipped": {},
                 "latency": {}}
    for key, n in counters.items():
        kind, *labels = key.split(SEP)
        if kind == "sent":
            out["sent"][labels[0]] = n
        elif kind == "failed":
            out["failed"].setdefault(labels[0], {})[labels[1]] = n
        elif kind == "invalidated":
            out["invalidated"][labels[0]] = n
        elif kind == "events":
            out["events"][labels[0]] = n
        elif kind == "dead_lettered":
            out["dead_lettered"][labels[0]] = n
        elif kind == "skipped":
            out["skipped"][labels[0]] = n
    for key, v in raw_latency.items():
        platform, what = key.split(SEP, 1)
        out["latency"].setdefault(platform, {})[what] = v
    out["queues"] = queue_depths(client, queues)
    out["dead_letters"] = dead_letters
    out["at"] = time.time()
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
    if snap.get("skipped"):
        lines.append("skipped:       " + ", ".join(f"{k} {v}" for k, v in sorted(snap["skipped"].items())))
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
    scheduled (flushes)."""
    from worker import retry
    from worker.coalesce import FLUSH
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
    depths.update(in_flight=int(in_flight), flushes=int(flushes))
    return depths


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _states(snap: dict, family) -> None:
    """The gauges of what is up: the store, the workers, the scheduler's lock."""
    if "store" in snap:
        family("pushsync_store_up", "gauge", "1 if the store answered a query within a few seconds at this scrape, "
               "else 0 (workers defer their events meanwhile; nothing is lost, nothing is pushed).",
               [({}, int(snap["store"]["up"]))])
    if "workers" in snap:
        family("pushsync_workers_alive", "gauge", "Workers whose heartbeat is recent (PUSHSYNC_HEALTH_STALL).",
               [({}, snap["workers"]["alive"])])
        family("pushsync_workers_stuck", "gauge", "Live workers whose queues hold messages but that finished "
               "no task for PUSHSYNC_HEALTH_STALL seconds.", [({}, snap["workers"]["stuck"])])
    if "scheduler_lock_held" in snap:
        family("pushsync_scheduler_lock_held", "gauge", "1 while a scheduler holds its Redis lock (it renews "
               "it every few seconds), 0 when none does.", [({}, snap["scheduler_lock_held"])])


def prometheus(snap: dict) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")

    family("pushsync_pushes_sent_total", "counter", "Pushes accepted by FCM or APNs.",
           [({"platform": p}, n) for p, n in sorted(snap["sent"].items())])
    family("pushsync_pushes_failed_total", "counter", "Push attempts that failed, by platform and reason.",
           [({"platform": p, "reason": r}, n)
            for p, rs in sorted(snap["failed"].items()) for r, n in sorted(rs.items())])
    family("pushsync_tokens_invalidated_total", "counter", "Devices deactivated because their token is dead.",
           [({"platform": p}, n) for p, n in sorted(snap["invalidated"].items())])
    family("pushsync_events_total", "counter", "Change events by what became of them at ingest.",
           [({"outcome": o}, n) for o, n in sorted(snap["events"].items())])
    family("pushsync_dead_lettered_total", "counter", "Items written to the dead-letter store, by kind.",
           [({"kind": k}, n) for k, n in sorted(snap["dead_lettered"].items())])
    family("pushsync_pushes_skipped_total", "counter", "Pushes not sent at send time: the device is no longer "
           "the batch identity's (not_owned), or a newer sync count was planned since (stale); and messages "
           "an older pushsync sent to events, skipped (old_task).",
           [({"why": k}, n) for k, n in sorted(snap.get("skipped", {}).items())])
    if snap.get("dead_letters") is not None:
        family("pushsync_dead_letters", "gauge", "Items in the dead-letter store now.", [({}, snap["dead_letters"])])
    _states(snap, family)
    family("pushsync_queue_depth", "gauge", "Messages waiting, per queue (retry: in the retry set).",
           [({"queue": q}, n) for q, n in sorted(snap["queues"].items())])
    lines.append("# HELP pushsync_push_latency_seconds Time from event enqueued to push accepted by FCM or APNs.")
    lines.append("# TYPE pushsync_push_latency_seconds histogram")
    for raw_platform, h in sorted(snap["latency"].items()):
        platform = _esc(raw_platform)
        cumulative = 0
        for bound in BUCKETS:
            cumulative += int(h.get(f"le={bound}", 0))
            lines.append(f'pushsync_push_latency_seconds_bucket{{platform="{platform}",le="{bound}"}} {cumulative}')
        cumulative += int(h.get("le=+Inf", 0))
        lines.append(f'pushsync_push_latency_seconds_bucket{{platform="{platform}",le="+Inf"}} {cumulative}')
        lines.append(f'pushsync_push_latency_seconds_sum{{platform="{platform}"}} {h.get("sum", 0.0):g}')
        lines.append(f'pushsync_push_latency_seconds_count{{platform="{platform}"}} {int(h.get("count", 0))}')
    return "\n".join(lines) + "\n"


def serve(host: str, port: int, collect) -> None:
    """A small HTTP server for Prometheus: GET /metrics."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            try:
                body = prometheus(collect()).encode()
                status = 200
            except Exception as exc:  # Redis or the store out of reach: say so, keep serving
                body = f"# pushsync metrics unavailable: {type(exc).__name__}: {exc}\n".encode()
                status = 503
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    print(f"serving metrics on http://{host}:{server.server_address[1]}/metrics", flush=True)
    server.serve_forever()
