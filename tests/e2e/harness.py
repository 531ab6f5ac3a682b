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

    def __init__(self, directory: Path, emulator: Emulator, db_url: str, broker_db: int,
                 extra_env: dict | None = None):
        self.dir = directory
        self.emulator = emulator
        self.db_url = db_url
        self.broker_url = f"redis://{REDIS_HOST}:6379/{broker_db}"
        redis.Redis(host=REDIS_HOST, db=broker_db).flushdb()
        info = emulator.info
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
        self.env.update({
            "PUSHSYNC_DATABASE_URL": db_url,
            "PUSHSYNC_BROKER_URL": self.broker_url,
            "PUSHSYNC_FCM_URL": info["fcm_url"],
            "PUSHSYNC_APNS_PRODUCTION_URL": info["apns_production_url"],
            "PUSHSYNC_APNS_SANDBOX_URL": info["apns_sandbox_url"],
            "PUSHSYNC_CA_FILE": info["ca_file"],
            **(extra_env or {}),
        })
        self.workers: list[subprocess.Popen] = []
        self.cli("db", "upgrade")

    def cli(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run([PUSHSYNC, *args], env=self.env, capture_output=True, text=True, timeout=60, input=input)
        if check:
            assert r.returncode == 0, f"pushsync {' '.join(args)} failed: {r.stderr}"
        return r

    def create_pool(self, pool_id: str, fcm: bool = True, apns: bool = True) -> None:
        info = self.emulator.info
        args = ["pool", "create", pool_id]
        if fcm:
            args += ["--fcm-service-account", info["service_account"]]
        if apns:
            args += ["--apns-key", info["apns_key"], "--apns-key-id", info["apns_key_id"],
                     "--apns-team-id", info["apns_team_id"], "--apns-topic", info["apns_topic"]]
        self.cli(*args)

    def device(self, pool: str, identity: str, platform: str, token: str, datasets=("notes",)) -> str:
        dev = self.cli("device", "register", pool, identity, "--platform", platform, "--token", token).stdout.strip()
        for ds in datasets:
            self.cli("subscribe", pool, identity, ds, dev)
        return dev

    def start_worker(self, *options: str, name: str | None = None) -> subprocess.Popen:
        name = name or f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}@%h"
        log = open(self.dir / f"worker-{len(self.workers)}.log", "w")
        proc = subprocess.Popen(
            [PUSHSYNC, "worker", "-n", name, "--without-gossip", "--without-mingle", "-l", "INFO", *options],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
