"""The benchmark's scenarios. Each takes the sink and a work folder and returns its figures."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from bench.env import PLATFORMS, Env, apns_token
from bench.sink import Sink

PRODUCE_ONE = """
import json, sys, time
from pushsync.client import publish
from bench.env import POOL, identity
ids, count = json.loads(sys.stdin.read())
t = time.perf_counter()
for n in ids:
    publish(POOL, identity(n), "notes", count)
print(json.dumps({"us_per_publish": (time.perf_counter() - t) / len(ids) * 1e6}))
"""

PRODUCE_MANY = """
import json, sys, time
from pushsync.client import publish_many
from bench.env import POOL, identity
ids, count = json.loads(sys.stdin.read())
events = [{"identityPoolId": POOL, "identityId": identity(n), "datasetName": "notes", "syncCount": count}
          for n in ids]
t = time.perf_counter()
publish_many(events)
print(json.dumps({"us_per_event": (time.perf_counter() - t) / len(ids) * 1e6}))
"""


def _rate(pushes: list[tuple[float, int, str]]) -> tuple[float, float]:
    """(pushes per second from the first accepted push to the last, seconds)."""
    times = sorted(t for t, status, _uri in pushes if status == 200)
    span = max(times[-1] - times[0], 1e-3)
    return len(times) / span, span


def throughput(sink: Sink, tmp: Path, *, events: int, concurrency: int, many: bool, db: str) -> dict:
    """Queue ``events`` events (one per message, or through publish_many) before any worker
    runs, then start `pushsync worker -c N` and time the pushes at the sink."""
    env = Env(tmp, sink.info, db=db)
    try:
        env.import_devices(range(events))
        sink.reset()
        out = json.loads(env.python(PRODUCE_MANY if many else PRODUCE_ONE, json.dumps([list(range(events)), 1])))
        expected = events * len(PLATFORMS)
        queued = env.queue_depth()
        env.start_worker(concurrency)
        pushes = sink.wait_for(expected, timeout=900)
        rate, span = _rate(pushes)
        return {"events": events, "messages_queued": queued, "pushes": len(pushes), "expected": expected,
                "concurrency": concurrency, "pushes_per_s": round(rate), "seconds": round(span, 2),
                "producer_us": round(out.get("us_per_publish", out.get("us_per_event")), 1), "store": db,
                "worker_rss_mb": round(env.worker_rss_mb(), 1)}
    finally:
        env.close()


def latency(sink: Sink, tmp: Path, *, rate: int, seconds: int, db: str) -> dict:
    """Events offered at a steady ``rate`` per second, one per message, each to a fresh identity,
    with the workers already running: from `publish` to the push accepted by the sink. The sink
    logs an APNs push's device token (an FCM push names its device only in the body), so the
    figures are of the 2 APNs pushes of each event; FCM pushes go through the same runs."""
    n = rate * seconds
    env = Env(tmp, sink.info, db=db)
    try:
        env.import_devices(range(n))
        env.start_worker(2)
        time.sleep(3)
        sink.reset()
        code = PACED.format(rate=rate)
        sent = json.loads(env.python(code, json.dumps(list(range(n)))))
        pushes = sink.wait_for(n * len(PLATFORMS), timeout=600, quiet_for=0.5)
        by_token = {}
        for t, status, uri in pushes:
            if uri.startswith("/3/device/") and status == 200:
                by_token.setdefault(uri.rsplit("/", 1)[1], t)
        lat = []
        for i, published in enumerate(sent):
            for k, plat in enumerate(PLATFORMS):
                if plat != "GCM" and apns_token(i, k) in by_token:
                    lat.append((by_token[apns_token(i, k)] - published) * 1000)
        lat.sort()
        q = statistics.quantiles(lat, n=100)
        return {"rate": rate, "seconds": seconds, "events": n, "samples": len(lat), "p50_ms": round(q[49], 1),
                "p95_ms": round(q[94], 1), "p99_ms": round(q[98], 1), "max_ms": round(lat[-1], 1),
                "cdf_ms": [round(x, 2) for x in lat[:: max(1, len(lat) // 500)]]}
    finally:
        env.close()


PACED = """
import json, sys, time
from pushsync.client import publish
from bench.env import POOL, identity
ids = json.loads(sys.stdin.read())
sent = []
start = time.monotonic()
for i, n in enumerate(ids):
    delay = start + i / {rate} - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    sent.append(time.time())
    publish(POOL, identity(n), "notes", 1)
print(json.dumps(sent))
"""


def coalescing(sink: Sink, tmp: Path, *, per_second: int = 100, seconds: int = 10, db: str) -> dict:
    """One dataset of one identity (5 devices) changed ``per_second`` times a second."""
    env = Env(tmp, sink.info, db=db)
    try:
        env.import_devices(range(1))
        env.start_worker(2)
        time.sleep(3)
        sink.reset()
        code = ("import time\nfrom pushsync.client import publish\nfrom bench.env import POOL, identity\n"
                f"start = time.monotonic()\nfor c in range(1, {per_second * seconds} + 1):\n"
                f"    d = start + c / {per_second} - time.monotonic()\n    time.sleep(max(0, d))\n"
                "    publish(POOL, identity(0), 'notes', c)\n")
        env.python(code)
        time.sleep(3)
        pushes = [p for p in sink.pushes() if p[1] == 200]
        apns = {}
        for _t, _s, uri in pushes:
            if uri.startswith("/3/device/"):
                apns[uri] = apns.get(uri, 0) + 1
        return {"changes": per_second * seconds, "seconds": seconds, "pushes": len(pushes),
                "pushes_per_device": round(len(pushes) / len(PLATFORMS), 1),
                "apns_pushes_per_device": sorted(apns.values())}
    finally:
        env.close()

