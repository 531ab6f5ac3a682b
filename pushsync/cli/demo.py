"""`pushsync demo`: the whole pipeline on one machine, start to finish.

Starts a redis-server of its own (on a free port, in the state directory: the demo never
touches a Redis it did not start, such as the one PUSHSYNC_BROKER_URL names), the emulators,
a worker and the scheduler; creates a demo pool with the emulators' keys; registers
devices on all three platforms; publishes changes; prints each push as the emulators receive
it, with what the device's sync client would do with it; then stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from emulators.options import pushsync_env
from pushsync.secrets import new_key

POOL = "us-east-1:177a950c-2c08-43f0-9983-28727e0e1a11"
ALICE = "us-east-1:23ec4050-6aea-7089-a2dd-08002ec5b1c3"
BOB = "us-east-1:5d1e6c3a-0f0e-4b5d-9a2b-77a0f2c4d111"


def _say(text: str) -> None:
    print(text, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class Demo:
    def __init__(self, state: Path):
        self.state = state
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.exe = str(Path(sys.executable).with_name("pushsync"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
        # a key of the demo's own for the credentials it stores (made anew each run)
        self.env["PUSHSYNC_SECRET_KEY"] = new_key()

    def start(self, name: str, args: list[str], **kw) -> subprocess.Popen:
        log = open(self.state / f"{name}.log", "w")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append((name, proc))
        return proc

    def cli(self, *args: str) -> str:
        r = subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"pushsync {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def broker(self) -> str:
        """A redis-server of the demo's own: the demo empties nothing and writes nothing in a
        Redis it did not start (a production shell's PUSHSYNC_BROKER_URL is ignored)."""
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("the demo runs a redis-server of its own, and redis-server is not installed "
                               "(apt-get install redis-server; `make demo` installs it)")
        port = _free_port()
        (self.state / "redis").mkdir(exist_ok=True)
        self.start("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.state / "redis"),
                             "--appendonly", "yes", "--save", ""])
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _redis_answers(url):
            if time.monotonic() > deadline:
                raise RuntimeError("the demo's redis-server did not start")
            time.sleep(0.1)
        if "PUSHSYNC_BROKER_URL" in os.environ:
            _say("• PUSHSYNC_BROKER_URL is set: the demo leaves that Redis alone")
        _say(f"• started a redis-server of the demo's own on port {port} (state in {self.state / 'redis'})")
        return url

    def run(self) -> int:
        broker = self.broker()
        info = self.emulators()
        self.env.update({"PUSHSYNC_DATABASE_URL": f"sqlite:///{self.state / 'demo.db'}",
                         "PUSHSYNC_BROKER_URL": broker, **pushsync_env(info)})
        self.cli("db", "upgrade")
        self.cli("pool", "create", POOL, "--fcm-service-account", info["service_account"],
                 "--apns-key", info["apns_key"], "--apns-key-id", info["apns_key_id"],
                 "--apns-team-id", info["apns_team_id"], "--apns-topic", info["apns_topic"])
        _say(f"• pool {POOL} with FCM and APNs credentials")
        names, ids = self.devices()
        self.start("worker", [self.exe, "worker", "-c", "2", "-n", "demo@%h", "--without-gossip", "--without-mingle"])
        self.start("scheduler", [self.exe, "scheduler"])
        _say("• started a worker and the scheduler")
        watch = _PushLog(self.state / "emulator" / "pushes.jsonl", names)
        expected = self.publish(ids["alice-pixel"], watch)
        inactive = json.loads(self.cli("pool", "show", POOL))["devices"]
        _say(f"\n• devices now: {json.dumps(inactive)} (the dead token was deactivated)")
        missing = expected - watch.seen
        if missing:
            _say(f"\nMISSING pushes: {sorted(missing)}; logs are in {self.state}")
            return 1
        _say(f"\nAll {len(expected)} expected pushes arrived; nothing stale was pushed. Logs: {self.state}")
        return 0

    def emulators(self) -> dict:
        emu_dir = self.state / "emulator"
        self.start("emulator", [self.exe, "emulator", "--dir", str(emu_dir), "--quiet"])
        info_path = emu_dir / "emulator.json"
        deadline = time.monotonic() + 20
        while not info_path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulators did not start; see {self.state / 'emulator.log'}")
            time.sleep(0.1)
        info = json.loads(info_path.read_text())
        _say(f"• emulators: FCM {info['fcm_url']}, APNs production {info['apns_production_url']}, "
             f"APNs sandbox {info['apns_sandbox_url']}")
        return info

    def devices(self) -> tuple[dict[str, str], dict[str, str]]:
        """Five devices of two users on all three platforms, one with a dead token:
        (token -> name, name -> device id)."""
        devices = {
            "alice-pixel": (ALICE, "GCM", "fcm-alice-pixel-0001"),
            "alice-iphone": (ALICE, "APNS", "a1" * 32),
            "alice-ipad-dev": (ALICE, "APNS_SANDBOX", "a2" * 32),
            "alice-old-phone": (ALICE, "GCM", "dead-fcm-alice-old"),
            "bob-iphone": (BOB, "APNS", "b1" * 32),
        }
        names, ids = {}, {}
        for name, (ident, platform, token) in devices.items():
            dev = self.cli("device", "register", POOL, ident, "--platform", platform, "--token", token)
            self.cli("subscribe-all", POOL, ident, dev, "--datasets", "contacts,notes")
            names[token], ids[name] = name, dev
            _say(f"• registered {name:<16} {platform:<13} device {dev}")
        return names, ids

    def publish(self, origin: str, watch: _PushLog) -> set:
        _say("\nPublishing changes, and the pushes as the emulators receive them:")
        steps = [
            (["publish", POOL, ALICE, "contacts", "1", "--origin-device", origin],
             "Alice edits contacts on her Pixel (sync count 1): her other devices are told",
             {("alice-iphone", "1"), ("alice-ipad-dev", "1")}),
            (["publish", POOL, ALICE, "contacts", "2"], "a backend job changes Alice's contacts (2)",
             {("alice-iphone", "2"), ("alice-ipad-dev", "2"), ("alice-pixel", "2")}),
            (["publish", POOL, ALICE, "contacts", "1"], "a late duplicate of count 1 arrives: stale, dropped",
             set()),
            (["publish", POOL, BOB, "notes", "7"], "Bob's notes reach sync count 7", {("bob-iphone", "7")}),
        ]
        expected: set = set()
        for args, text, pushes in steps:
            _say(f"\n  $ pushsync {' '.join(a if len(a) < 20 else a[:12] + '…' for a in args)}\n    {text}")
            self.cli(*args)
            expected |= pushes
            # each step's pushes before the next change: the newest count wins, so a count 1 still
            # waiting when count 2 is notified would (rightly) be dropped at send time
            watch.until(expected, timeout=60)
        return expected


class _PushLog:
    """The emulators' log of received pushes, read as it grows and printed as a device sees it."""

    def __init__(self, path: Path, names: dict):
        self.path, self.names = path, names
        self.seen: set = set()
        self.last_count: dict[str, int] = {}  # what each device's sync client last synced, per dataset
        self.offset = 0

    def until(self, expected: set, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        settle = None
        while time.monotonic() < deadline:
            self._read()
            if expected <= self.seen:
                settle = settle or time.monotonic() + 1.0  # let any stray push show before going on
                if time.monotonic() > settle:
                    return
            time.sleep(0.2)

    def _read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self.offset)
            for line in f:
                self.offset += len(line.encode())
                self._show(json.loads(line))

    def _show(self, r: dict) -> None:
        data = r.get("data") or {}
        name = self.names.get(r.get("token"), (r.get("token") or "?")[:8])
        where = r["service"] + (f"/{r['host']}" if r.get("host") else "")
        if r["status"] != 200:
            _say(f"      {where:<17} → {name:<16} {r['status']} {r['reason']} (token dead: device "
                 "deactivated, never tried again)")
            return
        key = f"{name}/{data.get('datasetName')}"
        count = int(data.get("syncCount", -1))
        action = ("synchronizes" if data.get("source") == "cognito-sync"
                  and count > self.last_count.get(key, -1) else "ignores it (stale)")
        self.last_count[key] = max(self.last_count.get(key, -1), count)
        _say(f"      {where:<17} → {name:<16} {data.get('datasetName')} syncCount={count:<3} the app {action}")
        self.seen.add((name, str(count)))


def main(state_dir: str = "demo-state") -> int:
    state = Path(state_dir).resolve()
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    demo = Demo(state)
    try:
        return demo.run()
    except RuntimeError as exc:
        print(f"pushsync demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop_all()


def produce(emulator_dir: str, cli) -> int:
    """`pushsync demo-producer`: for compose's dev profile. Creates the demo pool with the keys
    the emulator wrote, registers devices on all three platforms and publishes a few changes;
    the emulator's log shows the pushes. ``cli`` is the command line's entry point (``pushsync.cli``
    passes it: this module is one of the groups it imports)."""
    info = json.loads((Path(emulator_dir) / "emulator.json").read_text())
    steps = [
        ["pool", "create", POOL, "--fcm-service-account", info["service_account"], "--apns-key", info["apns_key"],
         "--apns-key-id", info["apns_key_id"], "--apns-team-id", info["apns_team_id"],
         "--apns-topic", info["apns_topic"]],
    ]
    for step in steps:
        if cli(step) != 0:
            return 1
    import io
    from contextlib import redirect_stdout

    for platform, token in (("GCM", "fcm-compose-demo-1"), ("APNS", "c1" * 32), ("APNS_SANDBOX", "c2" * 32)):
        out = io.StringIO()
        with redirect_stdout(out):
            if cli(["device", "register", POOL, ALICE, "--platform", platform, "--token", token]) != 0:
                return 1
        device = out.getvalue().strip()
        if cli(["subscribe", POOL, ALICE, "contacts", device]) != 0:
            return 1
    for count in ("1", "2", "3"):
        if cli(["publish", POOL, ALICE, "contacts", count]) != 0:
            return 1
    print("published 3 changes for 3 devices: see the emulator's log for the pushes")
    return 0


def register(sub) -> None:
    demo = sub.add_parser("demo", help="run the whole pipeline locally against the emulators")
    demo.add_argument("--state-dir", default="demo-state", help="logs, keys and the demo store (wiped first)")
    demo.set_defaults(func=lambda args: main(args.state_dir))
    producer = sub.add_parser("demo-producer", help="compose dev profile: demo pool, devices and changes")
    producer.add_argument("--emulator-dir", default="emulator-state")
    producer.set_defaults(func=lambda args: produce(args.emulator_dir, args.main))
