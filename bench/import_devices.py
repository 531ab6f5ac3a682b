"""Benchmark: `pushsync device import` of N lines on SQLite and PostgreSQL.

    python bench/import_devices.py [--lines 100000] [--pg postgresql://postgres@127.0.0.1/pushsync_bench]

Prints lines/s for each store. Uses a temporary SQLite file and its own PostgreSQL database
(created if missing, emptied first), never a shared one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

POOL = "us-east-1:177a950c-2c08-43f0-9983-28727e0e1a11"
PUSHSYNC = str(Path(sys.executable).with_name("pushsync"))


def make_file(path: Path, n: int) -> None:
    platforms = ("GCM", "APNS", "APNS_SANDBOX", "GCM")
    with path.open("w") as f:
        for i in range(n):
            plat = platforms[i % 4]
            token = f"{i:064x}" if plat != "GCM" else f"fcm-token-{i:09d}-" + "x" * 120
            f.write(json.dumps({"identityPoolId": POOL, "identityId": f"us-east-1:{i // 4:08x}-0000-4000-8000-0",
                                "platform": plat, "token": token, "datasets": ["contacts", "notes"]}) + "\n")


def run(env_url: str, path: Path) -> float:
    env = {**os.environ, "PUSHSYNC_DATABASE_URL": env_url}
    for args in (["db", "upgrade"], ["pool", "create", POOL]):
        subprocess.run([PUSHSYNC, *args], env=env, check=True, capture_output=True)
    started = time.monotonic()
    r = subprocess.run([PUSHSYNC, "device", "import", str(path)], env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if r.returncode != 0:
        sys.exit(f"import failed: {r.stderr[-500:]}")
    print(f"  {r.stdout.strip()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/pushsync_bench")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "devices.jsonl"
        make_file(path, args.lines)
        print(f"{args.lines} lines, {path.stat().st_size / 1e6:.1f} MB")
        t = run(f"sqlite:///{tmp}/bench.db", path)
        print(f"sqlite:     {t:6.1f} s  {args.lines / t:8.0f} lines/s")
        admin_url = args.pg.rsplit("/", 1)[0] + "/postgres"
        dbname = args.pg.rsplit("/", 1)[1]
        admin = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://"),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}"'))
            conn.execute(text(f'CREATE DATABASE "{dbname}"'))
        t = run(args.pg, path)
        print(f"postgresql: {t:6.1f} s  {args.lines / t:8.0f} lines/s")


if __name__ == "__main__":
    main()
