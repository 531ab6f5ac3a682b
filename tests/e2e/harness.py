"""Real processes for end-to-end tests: the emulators, `pushsync worker`, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import redis

from emulators.options import pushsync_env

from ..conftest import PUSHSYNC

REDIS_HOST = "127.0.0.1"


def new_identity() -> str:
    return f"us-east-1:{uuid.uuid4()}"


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Emulator:
    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log = open(directory / "emulator.log", "w")
        self.proc = subprocess.Popen([PUSHSYNC, "emulator", "--dir", str(directory), "--quiet"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        info_path = directory / "emulator.json"
        wait_for(lambda: info_path.exists() or self.proc.poll() is not None, 20, what="emulator start")
        assert self.proc.poll() is None, (directory / "emulator.log").read_text()
        self.info = json.loads(info_path.read_text())

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.info["control_url"] + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def requests(self) -> list[dict]:
        return self._call("GET", "/requests")

    def stats(self) -> dict:
        return self._call("GET", "/stats")

    def fault(self, **rule) -> None:
        self._call("POST", "/faults", rule)

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def pushes_for(self, identity: str) -> list[dict]:
        return [r for r in self.requests() if (r.get("data") or {}).get("identityId") == identity]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class Pipeline:
    """A store, a broker database and a worker, wired to the emulators."""

    def __init__(self, directory: Path, emulator: Emulator, db_url: str, broker_db: int = 0,
                 extra_env: dict | None = None, broker_url: str | None = None):
        self.dir = directory
        self.emulator = emulator
        self.db_url = db_url
        self.broker_url = broker_url or f"redis://{REDIS_HOST}:6379/{broker_db}"
        self.redis = broker_client(self.broker_url, (extra_env or {}).get("PUSHSYNC_SENTINEL_MASTER"))
        self.redis.flushdb()
        info = emulator.info
        self.env = self.base_env()
        self.env.update({
            "PUSHSYNC_DATABASE_URL": db_url,
            "PUSHSYNC_BROKER_URL": self.broker_url,
            **pushsync_env(info),
            **(extra_env or {}),
        })
        self.workers: list[subprocess.Popen] = []
        self.cli("db", "upgrade")

    @staticmethod
    def base_env() -> dict[str, str]:
        """This environment without any PUSHSYNC_ setting of the shell the tests run in."""
        from tests.conftest import TEST_SECRET_KEY

        env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
        env["PUSHSYNC_SECRET_KEY"] = TEST_SECRET_KEY
        return env

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run([PUSHSYNC, *args], env=self.env, capture_output=True, text=True, timeout=60, input=input)
        if check:
            assert r.returncode == 0, f"pushsync {' '.join(args)} failed: {r.stderr}"
        return r

    def create_pool(self, pool_id: str, fcm: bool = True, apns: bool = True, apns_topic: str | None = None) -> None:
        info = self.emulator.info
        args = ["pool", "create", pool_id]
        if fcm:
            args += ["--fcm-service-account", info["service_account"]]
        if apns:
            args += ["--apns-key", info["apns_key"], "--apns-key-id", info["apns_key_id"],
                     "--apns-team-id", info["apns_team_id"], "--apns-topic", apns_topic or info["apns_topic"]]
        self.cli(*args)

    def send_raw(self, task: str, arg, queue: str) -> None:
        """Put a hand-made task message on a queue, as any Celery client (or a Flower login) can."""
        import sys

        script = ("import json, sys\nfrom worker.app import app\n"
                  "app.send_task(sys.argv[1], args=[json.loads(sys.stdin.read())], queue=sys.argv[2])\n")
        subprocess.run([sys.executable, "-c", script, task, queue], input=json.dumps(arg), env=self.env,
                       check=True, text=True, timeout=60)

    def stats(self) -> dict:
        return json.loads(self.cli("stats", "--json").stdout)

    def device(self, pool: str, identity: str, platform: str, token: str, datasets=("notes",)) -> str:
        """A device registered and subscribed through the store's repository functions, the ones
        `pushsync device register` and `pushsync subscribe` call (those commands are tested in
        tests/pushsync): a test's setup, without a CLI start-up (most of a second) per step."""
        from pushsync import contract
        from store import repo
        from store.db import engine_for, session_scope

        pool, identity = contract.pool_id(pool), contract.identity_id(identity)
        platform = contract.platform(platform)
        with session_scope(engine_for(self.db_url)) as s:
            repo.require_pool(s, pool)
            dev = repo.register_device(s, pool, identity, platform, contract.device_token(token, platform))
            if datasets:
                repo.subscribe(s, pool, identity, [contract.dataset_name(d) for d in datasets], dev)
        return dev

    def start_worker(self, *options: str, name: str | None = None) -> subprocess.Popen:
        name = name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h"
        log = open(self.dir / f"worker-{len(self.workers)}.log", "w")
        proc = subprocess.Popen(
            [PUSHSYNC, "worker", "-n", name, "--without-gossip", "--without-mingle", "-l", "INFO", *options],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def start_scheduler(self) -> subprocess.Popen:
        log = open(self.dir / f"scheduler-{len(self.workers)}.log", "w")
        proc = subprocess.Popen([PUSHSYNC, "scheduler"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.workers.clear()

    def dead_letters(self) -> list[dict]:
        return json.loads(self.cli("dlq", "list", "--json").stdout)


PLATFORMS = ("GCM", "APNS", "APNS_SANDBOX")


def seed(pipe: Pipeline, pool: str, n_identities: int, per_identity: int, dataset: str = "notes",
         tag: str | None = None) -> dict[str, str]:
    """Register n_identities x per_identity devices over the three platforms, all subscribed
    to ``dataset``, through `pushsync device import`. Returns token -> identity."""
    tag = tag or uuid.uuid4().hex[:6]
    tokens, lines = {}, []
    for i in range(n_identities):
        ident = new_identity()
        for k in range(per_identity):
            plat = PLATFORMS[(i * per_identity + k) % 3]
            tok = (f"fcm-{tag}-{i}-{k}" if plat == "GCM"
                   else f"{int(tag, 16):08x}{i:08x}{k:04x}".ljust(64, "c"))
            tokens[tok] = ident
            lines.append(json.dumps({"identityPoolId": pool, "identityId": ident, "platform": plat,
                                     "token": tok, "datasets": [dataset]}))
    r = pipe.cli("device", "import", "-", input="\n".join(lines) + "\n")
    assert f"imported {len(lines)} device" in r.stdout, r.stdout + r.stderr  # 1 device, 2 devices
    return tokens


def publish_counts(pipe: Pipeline, pool: str, identities, dataset: str, count: int, chunk: int = 100) -> int:
    """publish_many one event per identity, from a separate producer process."""
    events = [{"identityPoolId": pool, "identityId": ident, "datasetName": dataset, "syncCount": count}
              for ident in sorted(set(identities))]
    script = ("import json, sys\nfrom pushsync.client import publish_many\n"
              f"publish_many(json.loads(sys.stdin.read()), chunk_size={chunk})\n")
    import sys

    subprocess.run([sys.executable, "-c", script], input=json.dumps(events), env=pipe.env, check=True,
                   text=True, timeout=120)
    return len(events)


def tally(requests: list[dict], tokens: dict[str, str], dataset: str, count: int) -> dict:
    """Per scenario: pushes expected, delivered (distinct devices that got ``count``),
    duplicates (extra accepted copies of it), strays (pushes to a device of another identity)."""
    accepted: dict[str, int] = {}
    strays = 0
    for r in requests:
        data = r.get("data") or {}
        tok = r.get("token")
        if tok not in tokens:
            continue
        if data.get("identityId", tokens[tok]) != tokens[tok]:
            strays += 1
        if r["status"] == 200 and data.get("datasetName") == dataset and data.get("syncCount") == str(count):
            accepted[tok] = accepted.get(tok, 0) + 1
    return {"expected": len(tokens), "delivered": len(accepted),
            "duplicates": sum(n - 1 for n in accepted.values()), "strays": strays,
            "missing": sorted(set(tokens) - set(accepted))[:5]}


def broker_client(url: str, master: str | None = None) -> redis.Redis:
    """A client of the broker's Redis as the project makes it (through Sentinel for sentinel:// URLs)."""
    from pushsync.broker import redis_client
    from pushsync.settings import load_settings

    env = {"PUSHSYNC_BROKER_URL": url, **({"PUSHSYNC_SENTINEL_MASTER": master} if master else {})}
    return redis_client(load_settings(env))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, on a free port with its own directory and AOF."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self.ping, 10, what="redis-server")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis fsyncs the AOF and exits
            self.proc.wait(10)

    def kill(self) -> None:
        """A crash: SIGKILL, no flush, connections cut. The AOF (fsync always) keeps what Redis
        acknowledged."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
