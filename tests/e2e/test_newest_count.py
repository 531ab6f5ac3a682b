"""The newest sync count arrives, through real processes (`pushsync worker` with its defaults,
among them the 1 s coalescing window; Redis; the emulators), in the interleavings that once lost
it or stalled the queue: a store blip inside a window, a duplicate or a late count just after a
window ends behind a backlog, a store away for longer than the tries, bytes nobody can read on
``events`` and in the flush set, and a worker killed while it holds a window's flush."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import redis

from ..conftest import PG_URL, POOL, _prepare_pg
from .harness import Pipeline, new_identity, wait_for
from .proxy import CuttableProxy

# one event per message, as request handlers publish, at set times
PRODUCER = """
import json, sys, time
from pushsync.client import publish
pool = sys.argv[1]
start = time.monotonic()
for at, identity, count in json.loads(sys.stdin.read()):
    time.sleep(max(0.0, start + at - time.monotonic()))
    publish(pool, identity, "notes", count)
"""


def _produce(pipe: Pipeline, plan: list[tuple[float, str, int]], wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, POOL], env=pipe.env, stdin=subprocess.PIPE, text=True)
    proc.stdin.write(json.dumps(plan))
    proc.stdin.close()
    if wait:
        assert proc.wait(120) == 0
    return proc


def _devices(pipe: Pipeline, n: int, tag: str) -> dict[str, str]:
    """n identities with one FCM device each, subscribed to notes: token -> identity."""
    tokens = {}
    for i in range(n):
        ident = new_identity()
        tokens[f"fcm-{tag}-{i}-{ident[-8:]}"] = ident
        pipe.device(POOL, ident, "GCM", f"fcm-{tag}-{i}-{ident[-8:]}")
    return tokens


def _counts(emulator, tokens) -> dict[str, list[int]]:
    """Per device, the counts its accepted pushes carried, in the order they arrived."""
    out: dict[str, list[int]] = {t: [] for t in tokens}
    for r in emulator.requests():
        if r.get("token") in out and r["status"] == 200:
            out[r["token"]].append(int(r["data"]["syncCount"]))
    return out


def _all_got(emulator, tokens, count: int) -> bool:
    return all(count in got for got in _counts(emulator, tokens).values())


def _missing(emulator, tokens, count: int) -> list[str]:
    return [t for t, got in _counts(emulator, tokens).items() if count not in got]


def test_a_store_blip_inside_a_window_still_pushes_the_count_it_accepted(tmp_path, emulator, well_behaved):
    """Problem 1: the store cut off for under a second while the first change of each dataset
    opens its window. The transactions fail, the retries land inside the windows and are held;
    the flush at each window's end pushes what the store accepted."""
    _prepare_pg()
    proxy = CuttableProxy(5432)
    pipe = Pipeline(tmp_path, emulator, PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), broker_db=5)
    try:
        pipe.create_pool(POOL, apns=False)
        tokens = _devices(pipe, 30, "blip")
        _warm_up(pipe, emulator, "-c", "2")
        producer = _produce(pipe, [(0.8, ident, 5) for ident in tokens.values()], wait=False)
        time.sleep(0.7)  # the producer's start-up; its events arrive while the store is away
        proxy.set_cut(True)
        assert producer.wait(60) == 0
        time.sleep(0.3)
        proxy.set_cut(False)
        wait_for(lambda: _all_got(emulator, tokens, 5), 30, 0.5,
                 what=f"count 5 on every device (missing {_missing(emulator, tokens, 5)[:3]})")
        log = (tmp_path / "worker-0.log").read_text()
        assert "go again later" in log, "no run met the store away: the test did not test the blip"
        print(f"\n[store blip in a window] {len(tokens)} devices got count 5")
    finally:
        pipe.stop_workers()
        proxy.close()


def _warm_up(pipe: Pipeline, emulator, *options: str) -> None:
    """A worker started, and pushing: the test's timing starts from a worker that is ready."""
    warm = _devices(pipe, 1, "warm")
    pipe.start_worker(*options)
    _produce(pipe, [(0, ident, 1) for ident in warm.values()])
    wait_for(lambda: _all_got(emulator, warm, 1), 30, what="the worker to push")


def test_a_duplicate_or_a_late_count_after_a_window_ends_does_not_swallow_the_held_one(tmp_path, emulator,
                                                                                    well_behaved):
    """Problem 2: per dataset 5 (pushed), 6 within the window (held), then 6 again or a late 3
    just after the window ends, before its flush has run. The store decides what the flush sends:
    6 reaches every device, and nothing older follows it."""
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_db=5)
    try:
        pipe.create_pool(POOL, apns=False)
        tokens = _devices(pipe, 60, "dup")
        _warm_up(pipe, emulator)  # the defaults: prefork, one process per core
        # per identity 5, 6 inside its window, then 6 again or a late 3 spread over the tenth of a
        # second after the window ends, where its flush is due but has not run yet
        plan = [(1.0 + i * 0.01, ident, 5) for i, ident in enumerate(tokens.values())]
        plan += [(1.3 + i * 0.01, ident, 6) for i, ident in enumerate(tokens.values())]
        plan += [(2.01 + i * 0.01 + (i % 6) * 0.015, ident, 6 if i % 2 else 3)
                 for i, ident in enumerate(tokens.values())]
        _produce(pipe, sorted(plan))
        wait_for(lambda: _all_got(emulator, tokens, 6), 40, 0.5,
                 what=f"count 6 on every device (missing {_missing(emulator, tokens, 6)[:3]})")
        time.sleep(2.5)  # a late window's flush, had one still been due
        for tok, got in _counts(emulator, tokens).items():
            assert got == sorted(got) and got[-1] == 6, (tok, got)
        print(f"\n[duplicate or late count after a window] {len(tokens)} devices got 6, none an older count after it")
    finally:
        pipe.stop_workers()


def _ingest_messages(client: redis.Redis) -> int:
    """Ingest messages anywhere in Redis: waiting on the list, or taken and not done with (in
    pushsync's in-flight records, or in kombu's unacknowledged ones)."""
    raws = list(client.lrange("events", 0, -1)) + list(client.hvals("pushsync:inflight"))
    raws += [json.dumps(json.loads(r)[0]).encode() for r in client.hvals("unacked")]
    n = 0
    for raw in raws:
        message = json.loads(raw)
        if (message.get("headers") or {}).get("task") == "pushsync.ingest":
            n += 1
    return n


def test_a_store_away_for_longer_than_the_tries_duplicates_no_message(tmp_path, emulator, well_behaved):
    """Problem 3: with the store away longer than an ingest message's tries, no message is ever
    both published again and put back: Redis never holds more ingest messages than were sent,
    and once the store is back every event is pushed once."""
    _prepare_pg()
    proxy = CuttableProxy(5432)
    env = {"PUSHSYNC_INGEST_TRIES": "3", "PUSHSYNC_INGEST_RETRY_CAP": "1"}
    pipe = Pipeline(tmp_path, emulator, PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), broker_db=5,
                    extra_env=env)
    try:
        pipe.create_pool(POOL, apns=False)
        tokens = _devices(pipe, 20, "long")
        pipe.start_worker("-c", "2")
        proxy.set_cut(True)
        _produce(pipe, [(0, ident, 1) for ident in tokens.values()])
        most = 0
        for _ in range(40):  # 8 s: each message out of its three tries, its dead letter not writable
            most = max(most, _ingest_messages(pipe.redis))
            time.sleep(0.2)
        proxy.set_cut(False)
        wait_for(lambda: _all_got(emulator, tokens, 1), 40, 0.5, what="every event once the store is back")
        time.sleep(2)
        counts = _counts(emulator, tokens)
        log = (tmp_path / "worker-0.log").read_text()
        print(f"\n[store away past the tries] at most {most} ingest messages in Redis for 20 sent; "
              f"pushes {sum(map(len, counts.values()))} for 20 devices")
        assert "out of tries" in log and most <= 20
        assert all(got == [1] for got in counts.values()), counts
    finally:
        pipe.stop_workers()
        proxy.close()


# kombu envelopes that Lua's cjson reads as ingest tasks and Python cannot: a body nested past
# Python's recursion limit, a number only cjson reads, a header byte that is not UTF-8
POISON = [
    json.dumps({"body": "[" * 5000 + "]" * 5000, "content-type": "application/json",
                "headers": {"task": "pushsync.ingest"}, "properties": {"delivery_tag": "d"}}).encode(),
    b'{"body": 0x0, "headers": {"task": "pushsync.ingest"}, "properties": {"delivery_tag": "t"}}',
    json.dumps({"body": base64.b64encode(b"[[[]], {}, {}]").decode(), "content-type": "application/json",
                "headers": {"task": "pushsync.ingest", "x": "X"},
                "properties": {"delivery_tag": "u", "body_encoding": "base64"}}).encode().replace(b'"X"', b'"\xff"'),
]


def test_bytes_nobody_can_read_on_events_or_in_the_flush_set_stop_nothing(tmp_path, emulator, well_behaved):
    """Problems 4 and 5: bytes written straight into Redis (nested past the recursion limit, a
    number only Lua's cjson reads, a header byte that is not UTF-8) between good messages, and
    junk members in the flush set due with a real one: each a bounded dead letter of its own,
    gone from Redis; the good events and the held count arrive; the worker goes on."""
    # a 3 s window: the change published after the first pushes is surely held
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_db=5,
                    extra_env={"PUSHSYNC_COALESCE_WINDOW": "3"})
    try:
        pipe.create_pool(POOL, apns=False)
        tokens = _devices(pipe, 6, "junk")
        idents = list(tokens.values())
        # all waiting before the worker starts: the run that takes the first takes the poison too
        _produce(pipe, [(0, ident, 5) for ident in idents[:3]])
        for raw in POISON:
            pipe.redis.lpush("events", raw)
        _produce(pipe, [(0, ident, 5) for ident in idents[3:]])
        worker = pipe.start_worker("-c", "2")
        wait_for(lambda: _all_got(emulator, tokens, 5), 30, 0.2, what="the good events beside the poison")
        _produce(pipe, [(0, idents[0], 6)])  # inside the first device's window: held
        [(_key, due)] = wait_for(lambda: pipe.redis.zrange("pushsync:flush", 0, -1, withscores=True), 10, 0.05,
                                 what="the held count's flush")
        assert not any(6 in got for got in _counts(emulator, tokens).values())
        # junk due at the same moment: the run that takes the flush takes it too
        pipe.redis.zadd("pushsync:flush", {b"\xff\xfe": due, b"not a key": due, b"[" * 5000: due})
        wait_for(lambda: 6 in _counts(emulator, tokens)[list(tokens)[0]], 30, 0.2, what="the held count")
        letters = wait_for(lambda: (lambda d: d if len(d) >= 6 else None)(pipe.dead_letters()), 20, 0.5,
                           what="six dead letters")
        assert sorted(d["reason"].split(":")[0] for d in letters) == ["unreadable message"] * 6
        assert all(d["kind"] == "message" and len(json.dumps(d["payload"])) < 20_000 for d in letters)
        assert pipe.redis.llen("events") == 0 and pipe.redis.hlen("pushsync:inflight") == 0
        assert pipe.redis.zcard("pushsync:flush") == 0 and worker.poll() is None
    finally:
        pipe.stop_workers()


def test_a_worker_killed_holding_a_windows_flush_leaves_it_to_another(tmp_path, emulator, well_behaved):
    """A run takes a due flush (its lease) and its worker is SIGKILLed before the flush's
    transaction commits: once the lease runs out the flush is due again, another worker's run
    takes it, and the held count arrives."""
    # a 3 s window: the second event's producer takes most of a second to start, and the test must
    # see its flush scheduled before the window ends
    env = {"PUSHSYNC_TASK_TIME_LIMIT": "5", "PUSHSYNC_VISIBILITY_TIMEOUT": "8", "PUSHSYNC_COALESCE_WINDOW": "3"}
    db = tmp_path / "store.db"
    pipe = Pipeline(tmp_path, emulator, f"sqlite:///{db}", broker_db=5, extra_env=env)
    try:
        pipe.create_pool(POOL, apns=False)
        tokens = _devices(pipe, 1, "claim")
        [ident] = tokens.values()
        first = pipe.start_worker("-c", "1")
        _produce(pipe, [(0, ident, 5)])
        wait_for(lambda: _all_got(emulator, tokens, 5), 30, what="the leading push")
        lock = sqlite3.connect(db, timeout=30, isolation_level=None)
        _produce(pipe, [(0, ident, 6)])  # inside the window: held, its flush due at the window's end
        wait_for(lambda: pipe.redis.zcard("pushsync:flush") == 1, 10, 0.05, what="the flush scheduled")
        lock.execute("BEGIN IMMEDIATE")  # the flush's transaction will wait on this
        wait_for(lambda: (lambda s: s and s[0][1] / 1000 > time.time() + 3)(  # a lease, not a due time
            pipe.redis.zrange("pushsync:flush", 0, -1, withscores=True)), 10, 0.05, what="a run to take the flush")
        os.killpg(first.pid, signal.SIGKILL)  # the worker, its run and its lease's holder, at once
        first.wait(10)
        pipe.workers.clear()
        lock.execute("ROLLBACK")
        lock.close()
        assert not any(6 in got for got in _counts(emulator, tokens).values())
        pipe.start_worker("-c", "1")
        killed = time.monotonic()
        wait_for(lambda: _all_got(emulator, tokens, 6), 30, 0.3, what="the held count after the kill")
        print(f"\n[worker killed holding a flush] count 6 arrived {time.monotonic() - killed:.1f} s after the kill, "
              "through another worker")
    finally:
        pipe.stop_workers()

