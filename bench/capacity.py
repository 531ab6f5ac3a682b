"""Figures for the README's capacity guide: what a queued event and a retry entry cost in Redis,
and what a million devices cost in PostgreSQL.

    python -m bench.capacity [--events 20000] [--devices 1000000]
                             [--pg postgresql://postgres@127.0.0.1:5432/pushsync_capacity]

Redis: a redis-server of its own (temporary directory, free port). Events go on the queue through
``pushsync.client`` (what producers call), retry entries through ``worker.retry.schedule`` (what a
failed delivery calls); the figure is ``used_memory`` after minus before, per item. PostgreSQL: a
database of its own (created if missing, emptied first), migrated by `pushsync db upgrade`,
devices with tokens of real lengths (FCM 163 characters, APNs 64 hex), 5 per identity, each
subscribed to one dataset, written by ``generate_series``; sizes include indexes and TOAST.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PUSHSYNC = str(Path(sys.executable).with_name("pushsync"))
POOL = "us-east-1:0c0ffee0-2c08-43f0-9983-28727e0e1a11"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events(n: int) -> list[dict]:
    return [{"identityPoolId": POOL, "identityId": f"us-east-1:{i:08x}-0000-4000-8000-000000000000",
             "datasetName": "notes", "syncCount": i + 1} for i in range(n)]


def redis_figures(n: int) -> dict:
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="pushsync-capacity-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    os.environ["PUSHSYNC_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    import redis

    from pushsync.client import publish_many
    from pushsync.messages import DeliveryBatch, Item
    from worker import retry

    client = redis.Redis(port=port)
    for _ in range(50):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    out = {}

    def measure(name: str, fill, count: int) -> None:
        client.flushall()
        time.sleep(0.2)
        before = client.info("memory")["used_memory"]
        fill()
        after = client.info("memory")["used_memory"]
        out[name] = round((after - before) / count)

    events = _events(n)
    measure("queued event, one per message (publish)", lambda: publish_many(events, chunk_size=1), n)
    measure("queued event, 100 per message (publish_many)", lambda: publish_many(events, chunk_size=100), n)
    for size in (1, 100):
        items = tuple(Item(f"{k:032x}", f"us-east-1:{k:08x}-0000-4000-8000-000000000000", "notes", 7)
                      for k in range(size))
        batch = DeliveryBatch(POOL, "GCM", items, attempt=2, enqueued_at=time.time(), id="0" * 32)
        count = max(1000, n // size)
        measure(f"retry entry, {size} push{'es' if size > 1 else ''}",
                lambda b=batch, c=count: [retry.schedule(client, "deliver", b.to_json(), time.time() + 60)
                                          for _ in range(c)], count)
    server.terminate()
    server.wait(10)
    return out


def pg_figures(url: str, devices: int) -> dict:
    from sqlalchemy import create_engine, text

    from bench.baselines import subscribe_every_device

    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = url.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    env = {**os.environ, "PUSHSYNC_DATABASE_URL": url}
    subprocess.run([PUSHSYNC, "db", "upgrade"], env=env, check=True, capture_output=True)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO pools (id, created_at, updated_at) VALUES (:p, now(), now())"), {"p": POOL})
        conn.execute(text("""
            INSERT INTO devices (id, pool_id, identity_id, platform, token, token_hash, active, created_at, updated_at)
            SELECT md5('d' || g)::uuid::text, :pool,
                   'us-east-1:' || lpad(to_hex(g / 5), 8, '0') || '-0000-4000-8000-000000000000',
                   CASE WHEN g % 5 < 3 THEN 'GCM' ELSE 'APNS' END,
                   CASE WHEN g % 5 < 3 THEN substr(repeat(md5('f' || g), 6), 1, 163)
                        ELSE md5('a' || g) || md5('b' || g) END,
                   md5('t' || g) || md5('u' || g), true, now(), now()
            FROM generate_series(0, :n - 1) AS g"""), {"pool": POOL, "n": devices})
        subscribe_every_device(conn)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        sizes = {t: conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar()
                 for t in ("devices", "subscriptions", "datasets")}
    engine.dispose()
    per_million = {t: round(b * 1_000_000 / devices / 2**20) for t, b in sizes.items()}
    per_million["total"] = sum(per_million.values())
    return {"devices": devices, "seconds": round(time.monotonic() - started, 1), "MiB per million devices": per_million}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/pushsync_capacity")
    args = ap.parse_args()
    print("Redis, bytes per item (used_memory after minus before):")
    for name, b in redis_figures(args.events).items():
        print(f"  {name:<48} {b:>6} B")
    pg = pg_figures(args.pg, args.devices)
    print(f"PostgreSQL, {pg['devices']:,} devices (5 per identity, 1 dataset each) written in {pg['seconds']} s; "
          "MiB per million devices, with indexes:")
    for table, mib in pg["MiB per million devices"].items():
        print(f"  {table:<14} {mib:>6} MiB")


if __name__ == "__main__":
    main()
