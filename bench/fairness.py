"""Fairness between pools: pool B's latency while pool A floods the same workers, against B alone.

Pool A publishes ``flood`` events as fast as its producer can (publish_many, 100 to a message),
each to one FCM device (its identities have ten datasets and one Android device each). Pool B
publishes one event a second to an identity with two iPhones and three Android phones, its events
going round 19 datasets (each changes every 19 s, so B's own coalescing window plays no part); B's latency
is from its `publish` to the sink's acceptance of its two APNs pushes (the sink logs an APNs
push's token; A has no APNs devices, so each APNs line is B's). The same B alone first, then with
A, on the same store and workers (-c 2).

    python -m bench.run --only fairness
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path

from bench.env import POOL, Env, apns_token, identity
from bench.sink import Sink

POOL_B = "us-east-1:0b0b0b0b-0000-4000-8000-00000000000b"
DATASETS = 10

FLOOD = """
import json, sys, time
from pushsync.client import publish_many
from bench.env import POOL, identity
n, datasets = json.loads(sys.stdin.read())
events = [{"identityPoolId": POOL, "identityId": identity(i // datasets), "datasetName": f"ds{i % datasets}",
           "syncCount": 1} for i in range(n)]
t = time.time()
publish_many(events)
print(json.dumps({"start": t, "published": time.time()}))
"""

TRICKLE = """
import json, sys, time
from pushsync.client import prepare, publish
from bench.env import identity
seconds, first = json.loads(sys.stdin.read())
prepare().join(10)  # the producer's connection is open before the first timed publish, as in a server
sent = []
start = time.monotonic()
for i in range(seconds):
    time.sleep(max(0.0, start + i - time.monotonic()))
    sent.append(time.time())
    publish("{pool}", identity(0), f"b{{(first + i) % 19 + 1}}", first + i)
print(json.dumps(sent))
"""


def _devices(env: Env, flood_identities: int) -> None:
    lines = [json.dumps({"identityPoolId": POOL, "identityId": identity(n), "platform": "GCM",
                         "token": f"fcm-a-{n:07d}", "datasets": [f"ds{d}" for d in range(DATASETS)]})
             for n in range(flood_identities)]
    for k, plat in enumerate(("APNS", "APNS", "GCM", "GCM", "GCM")):
        lines.append(json.dumps({"identityPoolId": POOL_B, "identityId": identity(0), "platform": plat,
                                 "token": apns_token(0, k) if plat == "APNS" else f"fcm-b-{k}",
                                 "datasets": [f"b{i}" for i in range(20)]}))
    env.run("device", "import", "-", stdin="\n".join(lines))


def _latencies(sink: Sink, sent: list[float]) -> list[tuple[float, float]]:
    """Per event of B, when it was published and the time until the later of its two APNs pushes
    was accepted (ms)."""
    mine = {apns_token(0, k) for k in (0, 1)}
    accepted = sorted(t for t, status, uri in sink.pushes()
                      if status == 200 and uri.startswith("/3/device/") and uri.rsplit("/", 1)[1] in mine)
    out = []
    for published in sent:
        after = [t for t in accepted if t >= published][:2]
        if len(after) == 2:
            out.append((published, (after[1] - published) * 1000))
    return out


def _figures(lat: list[float], sent: int) -> dict:
    if len(lat) < 2:
        return {"events": sent, "measured": len(lat)}
    q = statistics.quantiles(sorted(lat), n=100, method="inclusive")
    return {"events": sent, "measured": len(lat), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1),
            "max_ms": round(max(lat), 1)}


def fairness(sink: Sink, tmp: Path, *, flood: int, seconds: int, db: str) -> dict:
    env = Env(tmp, sink.info, db=db)
    try:
        info = sink.info
        env.run("pool", "create", POOL_B, "--fcm-service-account", info["service_account"],
                "--apns-key", info["apns_key"], "--apns-key-id", info["apns_key_id"],
                "--apns-team-id", info["apns_team_id"], "--apns-topic", info["apns_topic"])
        _devices(env, flood // DATASETS)
        env.start_worker(2)
        time.sleep(3)
        trickle = TRICKLE.format(pool=POOL_B)
        # a warm-up event of each pool: connections, tokens and caches are made before any figure
        env.python(f"from pushsync.client import publish\nfrom bench.env import identity\n"
                   f"publish('{POOL_B}', identity(0), 'b0', 1)\npublish('{POOL}', identity(0), 'ds0', 0)\n")
        time.sleep(2)
        sink.reset()
        alone_sent = json.loads(env.python(trickle, json.dumps([seconds, 1])))
        time.sleep(2)
        alone = _latencies(sink, alone_sent)
        sink.reset()
        flooded: dict = {}
        producer = threading.Thread(target=lambda: flooded.update(json.loads(
            env.python(FLOOD, json.dumps([flood, DATASETS])))))
        producer.start()
        with_sent = json.loads(env.python(trickle, json.dumps([seconds, 1 + seconds])))
        producer.join()
        sink.wait_for(flood + 5 * seconds, timeout=600, quiet_for=1.0)
        with_a = _latencies(sink, with_sent)
        a_pushes = sorted(t for t, status, uri in sink.pushes() if status == 200 and uri.startswith("/v1/"))
        start = flooded.get("start", 0)
        out = {"flood_events": flood, "b_seconds": seconds, "alone": _figures([ms for _, ms in alone], len(alone_sent)),
               "with_flood": _figures([ms for _, ms in with_a], len(with_sent)),
               # B's events during the flood: seconds from the flood's start, latency (ms); and alone
               "with_flood_samples": [[round(t - start, 2), round(ms, 1)] for t, ms in with_a],
               "alone_samples": [round(ms, 1) for _, ms in alone],
               "flood_published_s": round(flooded.get("published", 0) - flooded.get("start", 0), 1),
               "flood_drained_s": round(a_pushes[-1] - flooded["start"], 1) if a_pushes and flooded else None}
        if "p99_ms" in out["alone"] and "p99_ms" in out["with_flood"]:
            out["p99_ratio"] = round(out["with_flood"]["p99_ms"] / out["alone"]["p99_ms"], 2)
        return out
    finally:
        env.close()
