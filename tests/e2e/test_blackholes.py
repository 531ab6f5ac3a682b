"""Dependencies that stop answering without closing anything, through real processes under load.

The blackhole is a TCP proxy of the test's own that stops forwarding either way and closes nothing
(tests/e2e/proxy.py): the worker's side sees a live peer that never answers, as with a partition
or a frozen server. The time limits are shortened (a 15 s task time limit: soft limit 10 s, store
timeout 5 s) so that each blackhole outlasts the time limit and the module stays short; the
producer is a plain process publishing one event per message with `pushsync.client.publish`.

What each test asserts is what a user sees: the newest count of every identity reaches its
device, nothing is dead-lettered, no run is killed at its hard time limit (a killed run's messages
wait for their lease, and a run that outlives its lease could share a message with the next one),
and deliveries resume within 10 s of the dependency answering again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from ..conftest import PG_URL, POOL, _prepare_pg
from .harness import REDIS_HOST, Pipeline, new_identity, publish_counts, wait_for
from .proxy import CuttableProxy
from .test_newest_count import _devices

LIMITS = {"PUSHSYNC_TASK_TIME_LIMIT": "15", "PUSHSYNC_VISIBILITY_TIMEOUT": "30", "PUSHSYNC_SEND_TIMEOUT": "3"}
BLACKHOLE = 20.0  # seconds: longer than the task time limit
RATE = 40  # events a second, one per message

# a backend's producer: event k goes to identity k mod N with count k div N + 1, at RATE a second
PRODUCER = """
import json, sys, time
from pushsync.client import publish
job = json.loads(sys.stdin.read())
ids, start, k, last = job["ids"], time.monotonic(), 0, {}
while time.monotonic() - start < job["seconds"]:
    ident, count = ids[k % len(ids)], k // len(ids) + 1
    publish(job["pool"], ident, "notes", count)
    last[ident], k = count, k + 1
    time.sleep(max(0.0, start + k / job["rate"] - time.monotonic()))
print(json.dumps(last))
"""


def _produce(env: dict, identities: list[str], seconds: float, log) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    proc.stdin.write(json.dumps({"ids": identities, "pool": POOL, "seconds": seconds, "rate": RATE}))
    proc.stdin.close()
    return proc


def _newest(requests: list[dict]) -> dict[str, int]:
    got: dict[str, int] = {}
    for r in requests:
        if r["status"] == 200 and (r.get("data") or {}).get("datasetName") == "notes":
            got[r["token"]] = max(got.get(r["token"], 0), int(r["data"]["syncCount"]))
    return got


def _ride_out(tmp_path, pipe: Pipeline, emulator, proxy: CuttableProxy, producer_env: dict, during=None,
              forget: bool = False, resume: float = 10.0) -> dict:
    """Load before, during and after a blackhole of BLACKHOLE seconds; returns the figures, having
    asserted that every identity's newest count arrived, nothing was dead-lettered, and the first
    push came within ``resume`` seconds of the dependency answering again."""
    tag = uuid_tag()
    tokens = _devices(pipe, 100, tag)
    pipe.start_worker("-c", "2", name=f"bh-{tag}@%h")
    pipe.start_scheduler()
    producer = _produce(producer_env, sorted(set(tokens.values())), 5 + BLACKHOLE + 5,
                        open(tmp_path / "producer.log", "w"))
    time.sleep(5)
    before = len(_newest(emulator.requests()))
    proxy.blackhole(True)
    went = time.time()
    seen = during(pipe, f"bh-{tag}@%h") if during else {}
    time.sleep(max(0.0, went + BLACKHOLE - time.time()))
    in_hole = [r for r in emulator.requests() if r["status"] == 200 and r["time"] > went + 12]
    proxy.blackhole(False, forget)
    back = time.time()
    assert producer.wait(60) == 0, (tmp_path / "producer.log").read_text()
    newest = json.loads(producer.stdout.read())
    want = {tok: newest[ident] for tok, ident in tokens.items() if ident in newest}
    assert len(want) == len(tokens), "the producer did not reach every identity"

    def arrived():
        got = _newest(emulator.requests())
        return all(got.get(tok, 0) >= n for tok, n in want.items())
    wait_for(arrived, 90, 0.5, what="every identity's newest count after the blackhole")
    done = time.time()
    after = sorted(r["time"] for r in emulator.requests() if r["status"] == 200 and r["time"] > back)
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    figures = {"devices with a push before": before, "pushes in the blackhole's last 8 s": len(in_hole),
               "first push after": round(after[0] - back, 1), "all newest counts after": round(done - back, 1),
               "runs killed at the hard limit": logs.count("Hard time limit"), **seen}
    assert pipe.dead_letters() == []
    assert figures["runs killed at the hard limit"] == 0, figures
    assert figures["first push after"] < resume, figures
    return figures


def uuid_tag() -> str:
    return new_identity()[-6:]


def test_postgresql_blackholed_past_the_time_limit_under_load(tmp_path, own_emulator):
    """Every statement and connect ends at its client-side bound, the runs defer, the workers stay
    healthy (a restart would not bring the store back), `pushsync stats` says the store is not
    answering, and once it answers the deferred events go through."""
    _prepare_pg()
    proxy = CuttableProxy(5432)
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    pipe = Pipeline(tmp_path, own_emulator, url, broker_db=12, extra_env=LIMITS)
    pipe.create_pool(POOL, apns=False)

    def during(pipe: Pipeline, node: str) -> dict:
        time.sleep(12)  # past the soft time limit: runs that met the silence have given up by now
        started = time.monotonic()
        stats = pipe.stats()
        took = time.monotonic() - started
        assert stats["store"]["up"] is False and took < 10, (stats["store"], took)
        health = pipe.cli("worker", "--health", "-n", node, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        return {"stats took": round(took, 1), "store said": stats["store"]["error"][:60]}
    try:
        figures = _ride_out(tmp_path, pipe, own_emulator, proxy, pipe.env, during)
        print(f"\n[PostgreSQL blackholed {BLACKHOLE:g} s, {RATE} events/s] {figures}")
        assert figures["pushes in the blackhole's last 8 s"] == 0  # the test did blackhole the store
    finally:
        pipe.stop_workers()
        proxy.blackhole(False)
        proxy.close()


def test_redis_blackholed_past_the_time_limit_under_load(tmp_path, own_emulator):
    """The workers' and scheduler's Redis goes silent (the producer still reaches it: a partition
    between the workers and Redis), and its connections from before stay silent for good (a moved
    address: only this side's timeouts end them); kombu's and the project's calls end at their
    bounds, and the workers consume again on new connections once Redis answers. Each connection
    still open from before costs its 5 s bound once when next used: about 12 s in all before the
    first push (a healed partition, as in the PostgreSQL test, resumes at once)."""
    proxy = CuttableProxy(6379)
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", extra_env=LIMITS,
                    broker_url=f"redis://{REDIS_HOST}:{proxy.port}/12")
    pipe.create_pool(POOL, apns=False)
    direct = {**pipe.env, "PUSHSYNC_BROKER_URL": f"redis://{REDIS_HOST}:6379/12"}
    try:
        figures = _ride_out(tmp_path, pipe, own_emulator, proxy, direct, forget=True, resume=25)
        print(f"\n[Redis blackholed {BLACKHOLE:g} s, {RATE} events/s] {figures}")
        assert figures["pushes in the blackhole's last 8 s"] == 0
    finally:
        pipe.stop_workers()
        proxy.blackhole(False)
        proxy.close()


def _pushes(emulator, service: str, count: int, tokens) -> set[str]:
    return {r["token"] for r in emulator.requests() if r["service"] == service and r["status"] == 200
            and r["token"] in tokens and (r.get("data") or {}).get("syncCount") == str(count)}


def _stall(pipe: Pipeline, emulator, service: str, count: int, stalled: dict, flowing: dict) -> dict:
    """``service`` stalls (requests held open, unanswered) while count ``count`` is published:
    the other platform's pushes all arrive meanwhile, the stalled ones wait in the retry set, and
    all arrive once the stall ends."""
    emulator.fault(service=service, stall=True)
    went = time.monotonic()
    publish_counts(pipe, POOL, stalled.values(), "notes", count, chunk=10)
    wait_for(lambda: _pushes(emulator, "apns" if service == "oauth" else "fcm", count, flowing) == set(flowing),
             30, 0.3, what=f"the other platform's pushes while {service} stalls")
    other = round(time.monotonic() - went, 1)
    held = "GCM" if service == "oauth" else "APNS"
    # the held platform's attempts fail at their bound and are retried (a Celery countdown for the
    # first, short waits; the retry set from 8 s on)
    wait_for(lambda: sum(pipe.stats()["failed"].get(held, {}).values()) > 0, 30, 0.5,
             what=f"{held}'s attempts to fail at their bound")
    time.sleep(max(0.0, went + BLACKHOLE - time.monotonic()))
    assert not _pushes(emulator, "fcm" if service == "oauth" else "apns", count, stalled)
    emulator.clear_faults()
    ended = time.monotonic()
    wait_for(lambda: _pushes(emulator, "fcm" if service == "oauth" else "apns", count, stalled) == set(stalled),
             90, 0.3, what=f"the pushes that waited for {service}")
    return {f"{service}: other platform done after": other, f"{service}: all waiting ones after the stall":
            round(time.monotonic() - ended, 1)}


def test_a_stalled_oauth_endpoint_and_a_stalled_apns_wait_for_their_retries(tmp_path, own_emulator):
    """FCM's token endpoint holds its requests for BLACKHOLE seconds from the worker's start
    (no token yet), then APNs holds its pushes as long: each time the other platform's pushes go
    on, the held platform's batches fail at their bound and wait for their retries, none is
    dead-lettered, all arrive."""
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=12, extra_env=LIMITS)
    try:
        pipe.create_pool(POOL)
        fcm, apns = {}, {}
        for i in range(40):
            ident = new_identity()
            fcm[f"fcm-stall-{i}"] = ident
            apns[f"{i:08x}".ljust(64, "a")] = ident
            pipe.device(POOL, ident, "GCM", f"fcm-stall-{i}")
            pipe.device(POOL, ident, "APNS", f"{i:08x}".ljust(64, "a"))
        pipe.start_scheduler()
        own_emulator.fault(service="oauth", stall=True)  # before the worker has a token
        pipe.start_worker("-c", "2")
        figures = _stall(pipe, own_emulator, "oauth", 1, fcm, apns)
        figures.update(_stall(pipe, own_emulator, "apns", 2, apns, fcm))
        print(f"\n[OAuth, then APNs, stalled {BLACKHOLE:g} s] {figures}")
        assert pipe.dead_letters() == []
    finally:
        own_emulator.clear_faults()
        pipe.stop_workers()
