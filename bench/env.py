"""What every benchmark scenario sets up: a store, a Redis database, a pool pointed at the sink,
devices, and `pushsync worker` processes, all through the project's own commands and code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from emulators.options import pushsync_env
from pushsync.secrets import new_key

POOL = "us-east-1:177a950c-2c08-43f0-9983-28727e0e1a11"
EXE = str(Path(sys.executable).with_name("pushsync"))
PLATFORMS = ("GCM", "GCM", "GCM", "APNS", "APNS_SANDBOX")  # per identity: 3 FCM, 2 APNs
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def identity(n: int) -> str:
    return f"us-east-1:{n:08x}-0000-4000-8000-000000000000"


def apns_token(n: int, k: int) -> str:
    return f"{n:08x}{k:04x}".ljust(64, "0")


def token(n: int, k: int, platform: str) -> str:
    return f"fcm-{n}-{k}" if platform == "GCM" else apns_token(n, k)


class Env:
    """One scenario's world. ``db`` is "sqlite" or "postgresql" (a database of its own)."""

    def __init__(self, tmp: Path, sink_info: dict, *, db: str = "postgresql", broker_db: int = 1,
                 extra: dict | None = None):
        self.tmp, self.db, self.broker_db = tmp, db, broker_db
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.database_url = self._store()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
        self.env["PUSHSYNC_SECRET_KEY"] = new_key()
        self.env.update({"PUSHSYNC_DATABASE_URL": self.database_url, **pushsync_env(sink_info),
                         "PUSHSYNC_BROKER_URL": f"redis://127.0.0.1:6379/{broker_db}",
                         "PUSHSYNC_LOG_FORMAT": "json", **(extra or {})})
        self.redis = redis.Redis(db=broker_db)
        self.redis.flushdb()
        self.workers: list[subprocess.Popen] = []
        self.run("db", "upgrade")
        self.run("pool", "create", POOL, "--fcm-service-account", sink_info["service_account"],
                 "--apns-key", sink_info["apns_key"], "--apns-key-id", sink_info["apns_key_id"],
                 "--apns-team-id", sink_info["apns_team_id"], "--apns-topic", sink_info["apns_topic"])

    def _store(self) -> str:
        if self.db == "sqlite":
            return f"sqlite:///{self.tmp}/bench.db"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS pushsync_bench WITH (FORCE)"))
            conn.execute(text("CREATE DATABASE pushsync_bench"))
        admin.dispose()
        return "postgresql://postgres@127.0.0.1:5432/pushsync_bench"

    def run(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([EXE, *args], env=self.env, input=stdin, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"pushsync {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def import_devices(self, identities: range, datasets: tuple[str, ...] = ("notes",)) -> int:
        """Devices through `pushsync device import` (the bulk path operators use)."""
        lines = [json.dumps({"identityPoolId": POOL, "identityId": identity(n), "platform": plat,
                             "token": token(n, k, plat), "datasets": list(datasets)})
                 for n in identities for k, plat in enumerate(PLATFORMS)]
        self.run("device", "import", "-", stdin="\n".join(lines))
        return len(lines)

    def start_worker(self, concurrency: int = 2, queues: str | None = None, log: str = "worker.log") -> None:
        args = [EXE, "worker", "-c", str(concurrency), "-l", os.environ.get("BENCH_LOGLEVEL", "WARNING"),
                "--without-gossip", "--without-mingle"]
        if queues:
            args += ["-Q", queues]
        with open(self.tmp / log, "ab") as out:
            self.workers.append(subprocess.Popen(args, env=self.env, stdout=out, stderr=out, start_new_session=True))

    def stop_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        self.workers.clear()

    def worker_rss_mb(self) -> float:
        """Resident memory of every process of every worker started here (supervisor, Celery's
        main process, its pool processes), in MiB."""
        total = 0
        for p in self.workers:
            pids = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
        return total / 1024

    def queue_depth(self) -> int:
        return sum(self.redis.llen(q) for q in ("events", "push.fcm", "push.apns"))

    def python(self, code: str, stdin: str | None = None) -> str:
        """Run ``code`` in a fresh interpreter with this world's settings (a producer process)."""
        out = subprocess.run([sys.executable, "-c", code], env=self.env, input=stdin, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"producer failed: {out.stderr[-2000:]}")
        return out.stdout

    def close(self) -> None:
        self.stop_workers()
        self.redis.flushdb()


def wait_until(predicate, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
