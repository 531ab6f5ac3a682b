"""The FCM rate budget at scale: a fan-out of ``pushes`` FCM pushes in one Firebase project, sent
to the Python FCM emulator enforcing that project's quota (``pushsync emulator --fcm-quota``: 429
QUOTA_EXCEEDED with Retry-After past N requests a 60 s window, refused requests counted too, as FCM
counts them). The pool's budget is the quota (``pool create --fcm-rate N/min``), as an operator
would set it. The quota is lower than FCM's default (600,000 a minute) because this machine sends
fewer pushes a second than that: a quota it never reaches would prove nothing.

Every identity has five Android devices and gets one event (publish_many, 100 to a message), so
the fan-out is ``pushes`` devices, each one push. Workers ``-c 2`` and the scheduler (it moves the
pushes that wait for their slot back to the queues), PostgreSQL, every other setting as shipped.
The figures come from the emulator's own log (``pushes.jsonl``): requests accepted and refused,
distinct devices reached, the most accepted in any 60 s, and the dead letters from the store.

    python -m bench.run --only quota            # 1,000,000 pushes at 120,000 a minute (~12 min)
    python -m bench.quota --pushes 20000        # any size, alone
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.env import EXE, POOL, Env, identity

PER_MINUTE = 120_000
DEVICES = 5  # Android devices per identity

PRODUCE = """
import json, sys, time
from pushsync.client import publish_many
from bench.env import POOL, identity
first, n, count = json.loads(sys.stdin.read())
t = time.time()
for start in range(first, first + n, 10_000):
    publish_many([{"identityPoolId": POOL, "identityId": identity(i), "datasetName": "notes", "syncCount": count}
                  for i in range(start, min(start + 10_000, first + n))])
print(json.dumps({"start": t, "published": time.time()}))
"""


class _Emulator:
    """``pushsync emulator`` with a quota, in a folder of its own; its log read as it grows."""

    def __init__(self, directory: Path, quota: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "pushes.jsonl"
        self.out = open(directory / "emulator.log", "w")
        self.proc = subprocess.Popen([EXE, "emulator", "--dir", str(directory), "--quiet", "--new-ports",
                                      "--fcm-quota", str(quota)], stdout=self.out, stderr=subprocess.STDOUT)
        info = directory / "emulator.json"
        deadline = time.monotonic() + 30
        while not info.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start: {(directory / 'emulator.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.info = json.loads(info.read_text())
        self._file = None
        self._rest = ""
        self.accepted: list[float] = []  # times of accepted FCM sends
        self.tokens: set[str] = set()
        self.refused = 0  # 429s for quota
        self.other = 0  # any other answer

    def read(self) -> None:
        if self._file is None:
            if not self.log_path.exists():
                return
            self._file = open(self.log_path)
        chunk = self._rest + self._file.read()
        lines = chunk.split("\n")
        self._rest = lines.pop()
        for line in lines:
            entry = json.loads(line)
            if entry.get("service") != "fcm" or not entry.get("token"):
                continue  # the OAuth token exchange
            if entry["status"] == 200:
                self.accepted.append(entry["time"])
                self.tokens.add(entry["token"])
            elif entry["status"] == 429:
                self.refused += 1
            else:
                self.other += 1

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.out.close()
        if self._file is not None:
            self._file.close()


def _most_in_a_minute(times: list[float]) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + 60.0) - i for i, t in enumerate(times)), default=0)


def _devices(env: Env, identities: int) -> None:
    for start in range(0, identities, 50_000):
        lines = [json.dumps({"identityPoolId": POOL, "identityId": identity(n), "platform": "GCM",
                             "token": f"fcm-q-{n:07d}-{k}", "datasets": ["notes"]})
                 for n in range(start, min(start + 50_000, identities)) for k in range(DEVICES)]
        env.run("device", "import", "-", stdin="\n".join(lines))


def _dead_letters(env: Env) -> int:
    engine = create_engine(env.database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM dead_letters")).scalar_one()
    finally:
        engine.dispose()


def quota(tmp: Path, *, pushes: int, per_minute: int = PER_MINUTE, db: str = "postgresql") -> dict:
    identities = pushes // DEVICES
    emulator = _Emulator(tmp / "emulator", per_minute)
    env = Env(tmp, emulator.info, db=db)
    try:
        env.run("pool", "create", POOL, "--fcm-rate", f"{per_minute}/min")
        seeded = time.monotonic()
        _devices(env, identities + 1)
        seeding_s = time.monotonic() - seeded
        env.start_worker(2)
        env.workers.append(subprocess.Popen([EXE, "scheduler"], env=env.env, stdout=subprocess.DEVNULL,
                                            stderr=open(tmp / "scheduler.log", "wb"), start_new_session=True))
        # a warm-up event (connections, the OAuth token), its pushes not counted
        env.python(PRODUCE, json.dumps([identities, 1, 1]))
        while len(emulator.tokens) < DEVICES:
            emulator.read()
            time.sleep(0.2)
        time.sleep(62)  # the warm-up's quota window and budget are behind us
        emulator.read()
        warm = (len(emulator.accepted), emulator.refused, emulator.other)
        emulator.accepted, emulator.tokens = [], set()
        emulator.refused = emulator.other = 0
        produced = json.loads(env.python(PRODUCE, json.dumps([0, identities, 1])))
        # the budget's own time, plus as long again for anything held after a refusal
        deadline = time.monotonic() + 2 * 60 * pushes / per_minute + 300
        while len(emulator.tokens) < identities * DEVICES and time.monotonic() < deadline:
            time.sleep(1)
            emulator.read()
        time.sleep(5)  # any duplicate or late refusal is counted too
        emulator.read()
        span = (max(emulator.accepted) - produced["start"]) if emulator.accepted else 0.0
        answered = len(emulator.accepted) + emulator.refused + emulator.other
        return {"pushes": identities * DEVICES, "budget_per_minute": per_minute, "quota_per_minute": per_minute,
                "devices_reached": len(emulator.tokens), "accepted": len(emulator.accepted),
                "refused_429": emulator.refused, "other_answers": emulator.other,
                "refused_pct": round(100 * emulator.refused / answered, 3) if answered else None,
                "dead_letters": _dead_letters(env), "seconds": round(span, 1),
                "pushes_per_minute": round(len(emulator.accepted) / span * 60) if span else None,
                "most_accepted_in_60s": _most_in_a_minute(emulator.accepted),
                "published_s": round(produced["published"] - produced["start"], 1),
                "seeding_s": round(seeding_s, 1), "warm_up": {"accepted": warm[0], "refused": warm[1]}}
    finally:
        env.close()
        emulator.close()


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=1_000_000)
    ap.add_argument("--per-minute", type=int, default=PER_MINUTE)
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushsync-quota-") as tmp:
        print(f"[quota] {json.dumps(quota(Path(tmp), pushes=args.pushes, per_minute=args.per_minute, db=args.db))}")


if __name__ == "__main__":
    main()
