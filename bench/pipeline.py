"""Benchmark: events through Redis, workers and the emulators, end to end.

    python bench/pipeline.py [--events 2000] [--devices 4] [--chunk 100] [--concurrency 2] [--db sqlite|postgresql]

Seeds one device set per identity, publishes --events change events with publish_many
(--chunk events per ingest message), and times from the first publish to the last push the
emulators accept. The emulators run in one Python process on the same 2 cores, so the
figure is a floor for the worker side, not a ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sqlalchemy import create_engine, text

from emulators.options import pushsync_env

POOL = "us-east-1:177a950c-2c08-43f0-9983-28727e0e1a11"
EXE = str(Path(sys.executable).with_name("pushsync"))


def _store(args, tmp: Path) -> str:
    if args.db == "sqlite":
        return f"sqlite:///{tmp}/bench.db"
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS pushsync_bench"))
        conn.execute(text("CREATE DATABASE pushsync_bench"))
    return "postgresql://postgres@127.0.0.1:5432/pushsync_bench"


def _device_lines(identities: list[str], per_identity: int) -> str:
    plats = ("GCM", "APNS", "APNS_SANDBOX")
    lines = []
    for i, ident in enumerate(identities):
        for k in range(per_identity):
            plat = plats[k % 3]
            tok = f"fcm-{i}-{k}" if plat == "GCM" else f"{i:08x}{k:04x}" + "0" * 52
            lines.append(json.dumps({"identityPoolId": POOL, "identityId": ident, "platform": plat,
                                     "token": tok, "datasets": ["notes"]}))
    return "\n".join(lines)


def _wait_for_pushes(info: dict, expected: int, started: float) -> dict:
    while True:
        with urllib.request.urlopen(info["control_url"] + "/stats") as resp:
            stats = json.loads(resp.read())
        done = sum(n for k, n in stats["requests"].items() if k.endswith(":200"))
        if done >= expected:
            return stats
        if time.monotonic() - started > 600:
            sys.exit(f"only {done} of {expected} pushes after 600 s")
        time.sleep(0.2)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--devices", type=int, default=4, help="devices per identity (GCM, APNS, APNS_SANDBOX, ...)")
    ap.add_argument("--chunk", type=int, default=100, help="events per ingest message")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--broker-db", type=int, default=9)
    return ap.parse_args()


def main() -> None:
    args = _args()
    tmp = Path(tempfile.mkdtemp(prefix="pushsync-bench-"))
    procs = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
    try:
        procs.append(subprocess.Popen([EXE, "emulator", "--dir", str(tmp / "emu"), "--quiet"],
                                      stdout=subprocess.DEVNULL, start_new_session=True))
        while not (tmp / "emu" / "emulator.json").exists():
            time.sleep(0.1)
        info = json.loads((tmp / "emu" / "emulator.json").read_text())
        env.update({"PUSHSYNC_DATABASE_URL": _store(args, tmp), **pushsync_env(info),
                    "PUSHSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{args.broker_db}",
                    "PUSHSYNC_INGEST_CHUNK": str(args.chunk)})
        import redis

        redis.Redis(db=args.broker_db).flushdb()
        run = lambda *a, **kw: subprocess.run([EXE, *a], env=env, check=True, capture_output=True, text=True, **kw)  # noqa: E731
        run("db", "upgrade")
        run("pool", "create", POOL, "--fcm-service-account", info["service_account"], "--apns-key", info["apns_key"],
            "--apns-key-id", info["apns_key_id"], "--apns-team-id", info["apns_team_id"],
            "--apns-topic", info["apns_topic"])
        identities = [f"us-east-1:{i:08x}-0000-4000-8000-000000000000" for i in range(args.events)]
        run("device", "import", "-", input=_device_lines(identities, args.devices))
        expected = args.events * args.devices
        procs.append(subprocess.Popen([EXE, "worker", "-c", str(args.concurrency), "-l", "WARNING",
                                       "--without-gossip", "--without-mingle"], env=env, start_new_session=True))
        time.sleep(4)
        script = ("import json,sys\nfrom pushsync.client import publish_many\n"
                  "publish_many(json.loads(sys.stdin.read()))\n")
        events = [{"identityPoolId": POOL, "identityId": ident, "datasetName": "notes", "syncCount": 1}
                  for ident in identities]
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", script], input=json.dumps(events), env=env, check=True, text=True)
        published = time.monotonic() - started
        stats = _wait_for_pushes(info, expected, started)
        elapsed = time.monotonic() - started
        print(f"store={args.db} events={args.events} devices/identity={args.devices} chunk={args.chunk} "
              f"worker -c {args.concurrency}")
        print(f"published in {published:.2f} s; {expected} pushes accepted in {elapsed:.2f} s "
              f"= {expected / elapsed:,.0f} pushes/s, {args.events / elapsed:,.0f} events/s")
        print(f"connections: {stats['connections']}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)


if __name__ == "__main__":
    main()
