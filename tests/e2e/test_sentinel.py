"""Redis Sentinel: the master SIGKILLed while a producer publishes and a worker delivers.

A master, a replica and three sentinels of the test's own; workers, the scheduler and a producer
that does nothing special (a loop of `publish` calls) all reach Redis through
``PUSHSYNC_BROKER_URL=sentinel://...``. The figures printed are the issue note's: how long the
failover took, how many acknowledged events the asynchronous replica never saw (lost), and that
everything published after the failover arrives.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import redis

from ..conftest import POOL
from .harness import Pipeline, new_identity, seed, tally, wait_for
from .sentinel import SentinelCluster

ENV = {"PUSHSYNC_TASK_TIME_LIMIT": "10", "PUSHSYNC_VISIBILITY_TIMEOUT": "15", "PUSHSYNC_RETRY_BASE": "0.5",
       "PUSHSYNC_RETRY_CAP": "2", "PUSHSYNC_BATCH_SIZE": "100", "PUSHSYNC_PUBLISH_TIMEOUT": "60"}

# one event per call, as a request handler would; a line per answer, so the test knows which
# events the producer was told are on the queue, and when
PRODUCER = """
import json, sys, time
from pushsync.client import PublishError, publish
for e in json.loads(sys.stdin.read()):
    try:
        publish(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"])
        print("ok", e["identityId"], flush=True)
    except PublishError as exc:
        print("failed", e["identityId"], exc, flush=True)
    time.sleep(0.01)
"""


class _Producer(threading.Thread):
    def __init__(self, pipe, events):
        super().__init__(daemon=True)
        self.proc = subprocess.Popen([sys.executable, "-c", PRODUCER], env=pipe.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps(events))
        self.proc.stdin.close()
        self.acked: list[tuple[float, str]] = []
        self.failed: list[str] = []

    def run(self):
        for line in self.proc.stdout:
            kind, ident, *_ = line.split(" ", 2)
            (self.acked.append((time.monotonic(), ident.strip())) if kind == "ok" else self.failed.append(line))


@pytest.mark.parametrize("min_replicas", [0, 1], ids=["async", "min-replicas-to-write-1"])
def test_master_sigkilled_under_load_fails_over_and_pushes_resume(tmp_path, own_emulator, min_replicas):
    cluster = SentinelCluster(tmp_path / "ha", min_replicas_to_write=min_replicas)
    db = 2 if min_replicas else 0  # every Redis call of ours must follow the URL's database, not only Celery's
    url = cluster.url.replace(";", f"/{db};", 1) if db else cluster.url
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_url=url, extra_env=ENV)
    try:
        pipe.create_pool(POOL)
        tokens = seed(pipe, POOL, 500, 1, dataset="notes")
        identities = sorted(set(tokens.values()))
        worker, scheduler = pipe.start_worker("-c", "2"), pipe.start_scheduler()
        own_emulator.fault(service="any", latency=0.1)  # deliveries in flight when the master dies
        producer = _Producer(pipe, [{"identityPoolId": POOL, "identityId": i, "datasetName": "notes",
                                     "syncCount": 1} for i in identities])
        producer.start()
        failover = _kill_master(cluster, producer, min_replicas)
        wait_for(lambda: producer.proc.poll() is not None, timeout=180, interval=0.5, what="the producer to finish")
        producer.join(10)
        assert producer.proc.returncode == 0, producer.proc.stderr.read()
        assert producer.failed == [], producer.failed[:3]
        acked = {i for _, i in producer.acked}
        assert len(acked) == len(identities)
        # a canary published now must arrive: the worker and the scheduler consume from the new master
        canary = new_identity()
        pipe.device(POOL, canary, "GCM", "fcm-canary-" + canary[-12:], datasets=("canary",))
        pipe.cli("publish", POOL, canary, "canary", "1")
        wait_for(lambda: any(r.get("token") == "fcm-canary-" + canary[-12:] for r in own_emulator.requests()),
                 timeout=60, interval=0.3, what="a push published after the failover")

        after = {i for t, i in producer.acked if t > failover["killed_at"]}
        delivered = lambda: _delivered(own_emulator, tokens)  # noqa: E731
        # everything acknowledged after the kill went to the new master: all of it arrives
        wait_for(lambda: after <= delivered(), timeout=120, interval=0.5,
                 what="every event acknowledged after the failover")
        # what was acknowledged before the kill arrives too, unless the replica never got it
        if not _within(lambda: acked <= delivered(), 20):
            _settle(lambda: len(delivered()), quiet=8, timeout=90)
        lost = sorted(acked - delivered())
        assert tally(own_emulator.requests(), tokens, "notes", 1)["strays"] == 0
        assert all(i not in after for i in lost), "an event acknowledged by the new master was lost"
        assert worker.poll() is None and scheduler.poll() is None
        if db:  # nothing in database 0; the heartbeats and the scheduler's lock in the URL's
            assert redis.Redis(port=cluster.master_port()).dbsize() == 0
            ours = {k.decode() for k in redis.Redis(port=cluster.master_port(), db=db).keys()}
            assert {"pushsync:workers:beat", "pushsync:scheduler:lock"} <= ours, sorted(ours)[:20]
        _report(failover, producer, lost, tally(own_emulator.requests(), tokens, "notes", 1))
    finally:
        pipe.stop_workers()
        cluster.stop()


def _delivered(emulator, tokens) -> set[str]:
    """Identities whose device got its push (sync count 1 of "notes")."""
    return {tokens[r["token"]] for r in emulator.requests()
            if r.get("token") in tokens and r["status"] == 200
            and (r.get("data") or {}).get("datasetName") == "notes"}


def _within(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def _settle(measure, quiet: float, timeout: float) -> None:
    """Wait until ``measure()`` has not changed for ``quiet`` seconds."""
    end = time.monotonic() + timeout
    last, since = measure(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.5)
        now = measure()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def _kill_master(cluster, producer, min_replicas: int) -> dict:
    """SIGKILL the master once 150 events are acknowledged; wait for a sentinel to promote the
    replica. With min-replicas-to-write, the promoted master has no replica left and refuses
    writes (NOREPLICAS) until the old one is back: it is started again after 3 s, and Sentinel
    makes it a replica of the new master."""
    wait_for(lambda: len(producer.acked) >= 150, timeout=60, what="events flowing")
    old_port = cluster.master_port()
    out = {"acked_before_kill": len(producer.acked), "min_replicas": min_replicas}
    killed = cluster.kill_master()
    out["killed_at"] = time.monotonic()
    wait_for(lambda: cluster.master_port() not in (None, old_port), timeout=30, interval=0.1,
             what="a sentinel to promote the replica")
    out["promoted_at"] = time.monotonic()
    if min_replicas:
        time.sleep(3)
        out["old_back_at"] = time.monotonic()
        cluster.servers[killed] = subprocess.Popen(cluster.servers[killed].args, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.STDOUT)
    return out


def _report(f: dict, producer, lost: list[str], t: dict) -> None:
    killed = f["killed_at"]
    first_after = next(t for t, _ in producer.acked if t > killed)
    mode = "min-replicas-to-write 1" if f["min_replicas"] else "asynchronous replication"
    print(f"\n[Sentinel failover, {mode}] events {t['expected']}, acknowledged before the kill "
          f"{f['acked_before_kill']}, new master after {f['promoted_at'] - killed:.1f} s, "
          + (f"old master restarted after {f['old_back_at'] - killed:.1f} s, " if f["min_replicas"] else "")
          + f"first event acknowledged again after {first_after - killed:.1f} s; acknowledged but lost "
          f"{len(lost)}; delivered {t['delivered']} of {t['expected']}, duplicates {t['duplicates']}")
