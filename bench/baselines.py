"""Baselines and the store and memory scenarios of the benchmark."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import text

from bench.env import PLATFORMS, POOL, Env
from bench.sink import Sink


def ceiling(sink: Sink, tmp: Path, requests: int = 200_000) -> dict:
    """h2load against the sink: the transport's ceiling on this machine (4 connections, 100
    streams each, an APNs-shaped request)."""
    body = tmp / "body.json"
    tmp.mkdir(parents=True, exist_ok=True)
    body.write_text('{"aps":{"content-available":1},"data":{"syncCount":"1"}}')
    out = subprocess.run(["h2load", "-n", str(requests), "-c", "4", "-m", "100", "-t", "1", "-d", str(body),
                          "-H", "apns-id: bench", "-H", "apns-push-type: background",
                          f"{sink.info['url']}/3/device/{'0' * 64}"], capture_output=True, text=True, check=True)
    rate = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out.stdout).group(1))
    return {"requests": requests, "requests_per_s": round(rate)}


def naive(sink: Sink, tmp: Path, *, pushes: int, concurrency: int = 2) -> dict:
    """One Celery task per push, a fresh client each (bench/naive.py), on 2 pool processes."""
    tmp.mkdir(parents=True, exist_ok=True)
    client = redis.Redis(db=2)
    client.flushdb()
    env = {**os.environ, "BENCH_SINK": str(sink.dir / "sink.json")}
    code = ("from bench.naive import push\nfrom bench.env import PLATFORMS, token\n"
            f"for n in range({pushes} // len(PLATFORMS) + 1):\n"
            "    for k, plat in enumerate(PLATFORMS):\n"
            "        push.delay(plat, token(n, k, plat), {'syncCount': '1'})\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    expected = client.llen("celery")
    sink.reset()
    with open(tmp / "naive.log", "ab") as log:
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "-c",
                                   str(concurrency), "-l", "WARNING", "--without-gossip", "--without-mingle"],
                                  env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        pushes_seen = sink.wait_for(expected, timeout=900)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(30)
        client.flushdb()
    times = sorted(t for t, status, _u in pushes_seen if status == 200)
    return {"pushes": len(times), "pushes_per_s": round(len(times) / max(times[-1] - times[0], 1e-3)),
            "concurrency": concurrency}


def _seed(env: Env, devices: int) -> None:
    """``devices`` devices (5 per identity: 3 FCM, 2 APNs) subscribed to "notes", written by
    PostgreSQL itself (generate_series): a million in about a minute."""
    from sqlalchemy import create_engine

    engine = create_engine(env.database_url.replace("postgresql://", "postgresql+psycopg://"))
    plats = "ARRAY[" + ",".join(f"'{p}'" for p in PLATFORMS) + "]"
    with engine.begin() as conn:
        conn.execute(text(f"""
            INSERT INTO devices (id, pool_id, identity_id, platform, token, token_hash, active, created_at, updated_at)
            SELECT md5('d' || g)::uuid::text, :pool,
                   'us-east-1:' || lpad(to_hex(g / 5), 8, '0') || '-0000-4000-8000-000000000000',
                   ({plats})[g % 5 + 1], 'tok-' || g, md5('t' || g) || md5('u' || g), true, now(), now()
            FROM generate_series(0, :n - 1) AS g"""), {"pool": POOL, "n": devices})
        subscribe_every_device(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def subscribe_every_device(conn) -> None:
    """Every device subscribed to "notes", and its identity's dataset row at sync count 0."""
    conn.execute(text("INSERT INTO subscriptions (device_id, dataset_name, created_at) "
                      "SELECT id, 'notes', now() FROM devices"))
    conn.execute(text("INSERT INTO datasets (pool_id, identity_id, dataset_name, sync_count, updated_at) "
                      "SELECT DISTINCT pool_id, identity_id, 'notes', 0, now() FROM devices"))


def store_scale(sink: Sink, tmp: Path, *, sizes: tuple[int, ...], events: int = 200, rounds: int = 20) -> dict:
    """The resolve and sync-count step (one micro-batch in one transaction: compare-and-set,
    resolve, delivery batches cut; nothing sent) on PostgreSQL at each store size."""
    out = {}
    for size in sizes:
        env = Env(tmp / f"store-{size}", sink.info, db="postgresql")
        try:
            _seed(env, size)
            out[str(size)] = _time_fanout(env, size // 5, events, rounds)
        finally:
            env.close()
    return out


def _time_fanout(env: Env, identities: int, events: int, rounds: int) -> dict:
    code = f"""
import json, random, statistics, time
from bench.env import POOL, identity
from pushsync import contract
from store.db import session_scope
from worker import plan
from worker.pools import PoolCache
rng = random.Random(7)
pools = PoolCache()
times = []
for r in range({rounds}):
    ids = rng.sample(range({identities}), {events})
    batch = [contract.event({{"identityPoolId": POOL, "identityId": identity(n), "datasetName": "notes",
                              "syncCount": r + 1}}) for n in ids]
    t = time.perf_counter()
    res = plan.IngestResult()
    with session_scope() as s:
        plan.micro_batch(s, batch, held=set(), flushes=set(), credentials=pools.credentials, batch_size=500,
                         redeliver_after=180, enqueued_at=None, res=res, letters=[])
    times.append((time.perf_counter() - t) * 1000)
    assert res.notified == {events} and res.devices == {events} * 5, res
print(json.dumps({{"median_ms": round(statistics.median(times[2:]), 2), "p90_ms":
                  round(statistics.quantiles(times[2:], n=10)[8], 2), "events": {events}}}))
"""
    import json

    return json.loads(env.python(code))


def _paced(env: Env, seconds: int, rate: int, first: int = 0) -> subprocess.Popen:
    """A producer offering ``rate`` events a second for ``seconds`` to 2,000 identities."""
    code = (f"import time, random\nfrom pushsync.client import publish\nfrom bench.env import POOL, identity\n"
            f"start = time.monotonic()\nn = 0\nwhile time.monotonic() - start < {seconds}:\n"
            f"    n += 1\n    d = start + n / {rate} - time.monotonic()\n    time.sleep(max(0, d))\n"
            f"    publish(POOL, identity(random.randrange(2000)), 'notes', {first} + n)\n")
    return subprocess.Popen([sys.executable, "-c", code], env=env.env)


def _stalled(sink: Sink, env: Env, rate: int, stall: int = 30) -> dict:
    """The sink holds every request unanswered for ``stall`` seconds while events keep coming
    (the pushes time out and wait in the retry set), then answers again: RSS every 2 s."""
    producer = _paced(env, stall * 3, rate, first=10**7)
    samples, started, stalled = [], time.monotonic(), None
    while producer.poll() is None:
        t = time.monotonic() - started
        if stalled is None and t >= stall:
            sink.stall(True)
            stalled = True
        elif stalled and t >= 2 * stall:
            sink.stall(False)
            stalled = False
        samples.append((round(t), round(env.worker_rss_mb(), 1)))
        time.sleep(2)
    if stalled:
        sink.stall(False)
    before = [mb for t, mb in samples if t < stall]
    during = [mb for t, mb in samples if stall <= t < 2 * stall]
    after = [mb for t, mb in samples if t >= 2 * stall]
    return {"stall_s": stall, "samples": samples, "rss_mb_before": max(before), "rss_mb_max_stalled": max(during),
            "rss_mb_max_after": max(after),
            "growth_pct": round((max(during + after) - max(before)) / max(before) * 100, 1)}


def memory(sink: Sink, tmp: Path, *, seconds: int, rate: int, queued: int) -> dict:
    """Worker RSS (every process of `pushsync worker -c 2`) sampled every 5 s while events are
    offered at ``rate`` a second for ``seconds``; then through a 30-second stall of the sink; then
    with ``queued`` events waiting in Redis."""
    env = Env(tmp, sink.info, db="postgresql")
    try:
        env.import_devices(range(2000))
        env.start_worker(2)
        time.sleep(5)
        producer = _paced(env, seconds, rate)
        samples = []
        started = time.monotonic()
        while producer.poll() is None:
            samples.append((round(time.monotonic() - started), round(env.worker_rss_mb(), 1)))
            time.sleep(5)
        warm = [mb for t, mb in samples if t >= 60] or [mb for _t, mb in samples]
        steady = {"samples": samples, "after_warmup_min_mb": min(warm), "after_warmup_max_mb": max(warm),
                  "growth_pct": round((max(warm) - min(warm)) / min(warm) * 100, 1)}
        stalled = _stalled(sink, env, rate)
        env.stop_workers()
        before = _flood(env, queued)
        env.start_worker(2)
        time.sleep(60)
        with_backlog = round(env.worker_rss_mb(), 1)
        left = env.queue_depth()
        return {"steady": steady, "stalled": stalled,
                "backlog": {"queued": before, "rss_mb_after_60s": with_backlog, "still_queued": left}}
    finally:
        env.close()


def _flood(env: Env, count: int) -> int:
    """``count`` one-event ingest messages, each as the producer makes it, pushed in pipelines."""
    code = f"""
import json
from pushsync.client import publish
from bench.env import POOL, identity
import redis
publish(POOL, identity(0), "notes", 10**9)
r = redis.Redis.from_url(__import__("pushsync.settings").settings.get_settings().broker_url)
[template] = r.lrange("events", 0, 0)
r.delete("events")
pipe = r.pipeline(transaction=False)
for n in range({count}):
    pipe.lpush("events", template.replace(b'"delivery_tag": "', b'"delivery_tag": "' + str(n).encode() + b'-'))
    if n % 10000 == 9999:
        pipe.execute()
pipe.execute()
print(r.llen("events"))
"""
    return int(env.python(code).strip())

