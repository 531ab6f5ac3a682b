"""Workers killed with SIGKILL and Redis restarted while pushes are in flight: nothing is lost.

Each test prints the figures for the issue note: events, pushes expected, delivered,
duplicates, dead-lettered.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time

import pytest
import redis

from ..conftest import POOL
from .harness import Pipeline, RedisServer, new_identity, publish_counts, seed, tally, wait_for
from .producers import start_producer

# Short limits so that recovery after a worker's death shows within the test: a task may run
# 10 s at most, and a message un-acked for 15 s goes back to the queue.
ENV = {"PUSHSYNC_TASK_TIME_LIMIT": "10", "PUSHSYNC_VISIBILITY_TIMEOUT": "15", "PUSHSYNC_RETRY_BASE": "0.5",
       # with 0.3 s per request, a batch must be small enough to be sent within the 10 s limit
       "PUSHSYNC_BATCH_SIZE": "100",
       "PUSHSYNC_RETRY_CAP": "2", "PUSHSYNC_COUNTDOWN_MAX": "5"}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _report(name, pipe, emulator, tokens, dataset, events):
    t = tally(emulator.requests(), tokens, dataset, 1)
    dead = [d for d in pipe.dead_letters() if d["payload"].get("datasetName") == dataset]
    print(f"\n[{name}] events {events}, pushes expected {t['expected']}, delivered {t['delivered']}, "
          f"duplicates {t['duplicates']}, dead-lettered {len(dead)}")
    assert t["strays"] == 0 and t["missing"] == [] and dead == []
    return t


@pytest.mark.parametrize("victim_kind", ["pool-process", "celery-main", "whole-worker"])
def test_kill_9_under_load_loses_nothing_and_resends_only_what_was_in_flight(tmp_path, own_emulator, victim_kind):
    """pool-process: Celery's prefork child dies; celery-main: the Celery main process dies and
    `pushsync worker` (its supervisor) starts it again by itself; whole-worker: everything dies
    and an operator starts a new worker."""
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=10, extra_env=ENV)
    try:
        pipe.create_pool(POOL)
        dataset = "notes"
        tokens = seed(pipe, POOL, 1250, 4, dataset=dataset)
        # slow the services a little so that the kill lands mid-batch
        own_emulator.fault(service="any", latency=0.3)
        victim = pipe.start_worker("-c", "2")
        # one event per message, as request handlers publish: the messages a run took from the
        # queue itself must come back as surely as the one Celery handed it
        events = publish_counts(pipe, POOL, set(tokens.values()), dataset, 1, chunk=1)
        wait_for(lambda: tally(own_emulator.requests(), tokens, dataset, 1)["delivered"] >= 300, timeout=60,
                 what="pushes under way")
        if victim_kind == "whole-worker":
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(10)
            in_flight = _in_flight(pipe)  # what the dead worker held stays in Redis until restored
            pipe.start_worker("-c", "2")
        else:
            [master] = _children(victim.pid)  # `pushsync worker` supervises the Celery main process
            kids = _children(master)
            assert kids, "the worker has no pool processes"
            os.kill(master if victim_kind == "celery-main" else kids[0], signal.SIGKILL)
            in_flight = _in_flight(pipe)
        own_emulator.clear_faults()
        wait_for(lambda: tally(own_emulator.requests(), tokens, dataset, 1)["delivered"] == len(tokens),
                 timeout=120, interval=0.5, what="all 5,000 pushes")
        time.sleep(1)
        if victim_kind == "celery-main":
            assert victim.poll() is None and "stopped by itself" in (tmp_path / "worker-0.log").read_text()
        t = _report(f"kill -9 {victim_kind}", pipe, own_emulator, tokens, dataset, events)
        print(f"[kill -9 {victim_kind}] pushes in unacknowledged messages at the kill: at most {in_flight}")
        # a re-sent push comes only from a message that was in flight (delivered, not acknowledged)
        assert t["duplicates"] <= in_flight
    finally:
        pipe.stop_workers()


def _in_flight(pipe) -> int:
    """Pushes named by the messages Redis holds as taken but not acknowledged: deliveries in
    kombu's "unacked" hash count their items, ingest messages in pushsync's in-flight records their
    events times 4 (the devices each identity has here)."""
    client = redis.Redis.from_url(pipe.broker_url)
    total = 0
    messages = [json.loads(raw)[0] for raw in client.hvals("unacked")]
    messages += [json.loads(raw) for raw in client.hvals("pushsync:inflight")]
    for message in messages:
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        if isinstance(args, list) and args:
            total += len(args[0]["items"]) if isinstance(args[0], dict) else 4 * len(args[0])
    return total


def _canary_seen(emulator, token: str, count: int) -> bool:
    return any(r.get("token") == token and r["status"] == 200 and (r.get("data") or {}).get("syncCount") == str(count)
               for r in emulator.requests())


class _Producer(threading.Thread):
    """A backend publishing 25 events a message every 0.2 s, doing nothing special on errors."""

    def __init__(self, pipe, identities, dataset):
        super().__init__()
        self.pipe, self.identities, self.dataset = pipe, identities, dataset
        self.sent, self.failures = [], []

    def run(self):
        for i in range(0, len(self.identities), 25):
            try:
                publish_counts(self.pipe, POOL, self.identities[i:i + 25], self.dataset, 1, chunk=25)
                self.sent.extend(self.identities[i:i + 25])
            except subprocess.CalledProcessError as exc:  # publish_many gave up: must not happen
                self.failures.append(exc)
            time.sleep(0.2)


def _kill_redis_and_time_recovery(server, pipe, emulator, canary, canary_token, round_) -> float:
    """SIGKILL Redis, start it again, publish a canary: seconds until its push arrives."""
    server.kill()
    time.sleep(1.5)
    server.start()
    back = time.monotonic()
    if round_ == 3:  # the canary's first try is refused, so its push waits in the retry set
        emulator.clear_faults()
        emulator.fault(service="fcm", token=canary_token, status=503, retry_after=2, count=1)
    publish_counts(pipe, POOL, [canary], "canary", round_)
    # within 15 s of Redis being back (2 s more in round 3: the canary's Retry-After)
    wait_for(lambda: _canary_seen(emulator, canary_token, round_), timeout=15 + (2 if round_ == 3 else 0),
             interval=0.2, what=f"a push published after Redis restart {round_}")
    return time.monotonic() - back


def test_workers_and_scheduler_consume_again_after_redis_is_killed_three_times(tmp_path, own_emulator):
    """SIGKILL of Redis (AOF, fsync always) three times under load, producers doing nothing
    special: after each restart the worker and the scheduler consume again within 15 s, nobody
    restarts them, and every push arrives."""
    server = RedisServer(tmp_path / "redis")
    env = {**ENV, "PUSHSYNC_COUNTDOWN_MAX": "1"}  # retries over 1 s go through the scheduler's pump
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url, extra_env=env)
    try:
        pipe.create_pool(POOL)
        tokens = seed(pipe, POOL, 400, 2, dataset="notes")
        canary = new_identity()
        canary_token = "fcm-canary-" + canary[-12:]
        pipe.device(POOL, canary, "GCM", canary_token, datasets=("canary",))
        worker, scheduler = pipe.start_worker("-c", "2"), pipe.start_scheduler()
        # slow answers keep deliveries in flight, so each kill finds unacknowledged messages
        own_emulator.fault(service="any", latency=0.4)
        producer = _Producer(pipe, sorted(set(tokens.values())), "notes")
        producer.start()
        wait_for(lambda: len(producer.sent) >= 50, timeout=60, what="events flowing")
        recovery = []
        for n in (1, 2, 3):
            recovery.append(_kill_redis_and_time_recovery(server, pipe, own_emulator, canary, canary_token, n))
            time.sleep(2)
        producer.join(240)
        assert producer.failures == [] and len(producer.sent) == len(producer.identities)
        wait_for(lambda: tally(own_emulator.requests(), tokens, "notes", 1)["delivered"] == len(tokens),
                 timeout=120, interval=0.5, what="all pushes after the restarts")
        time.sleep(1)
        assert worker.poll() is None and scheduler.poll() is None, "a supervisor exited"
        restarts = "".join(p.read_text() for p in tmp_path.glob("worker-*.log")).count("stopped by itself")
        print(f"\n[Redis SIGKILL x3] consuming again after {', '.join(f'{r:.1f}' for r in recovery)} s; "
              f"Celery processes restarted by the supervisor: {restarts}")
        _report("Redis SIGKILL x3", pipe, own_emulator, tokens, "notes", len(producer.identities))
    finally:
        pipe.stop_workers()
        server.stop()


def test_a_delivery_message_lost_on_the_way_to_a_worker_is_sent_again(tmp_path, own_emulator):
    """What Redis dying between a worker's BRPOP and its unacknowledged record does, made
    deterministic: the batch vanishes from its queue after ingest. The outbox row that ingest
    wrote with the counts brings it back, once, through the scheduler."""
    env = {"PUSHSYNC_TASK_TIME_LIMIT": "5", "PUSHSYNC_VISIBILITY_TIMEOUT": "6",  # re-sent after 11 s
           "PUSHSYNC_INLINE_DELIVERY_MAX": "0"}  # every batch through its queue, as a large fan-out goes
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_db=4, extra_env=env)
    try:
        pipe.create_pool(POOL)
        user, token = new_identity(), "fcm-lost-batch-1"
        pipe.device(POOL, user, "GCM", token)
        pipe.start_worker("-Q", "events")  # ingest only: the batch stays on its queue
        client = redis.Redis.from_url(pipe.broker_url)
        publish_counts(pipe, POOL, [user], "notes", 1)
        wait_for(lambda: client.llen("push.fcm") == 1, what="the delivery batch on its queue")
        client.delete("push.fcm")  # gone, as if popped by a worker that never recorded it
        pipe.start_worker("-Q", "push.fcm,push.apns")
        scheduler = pipe.start_scheduler()
        wait_for(lambda: tally(own_emulator.requests(), {token: user}, "notes", 1)["delivered"] == 1, timeout=45,
                 interval=0.5, what="the lost batch to be sent again")
        time.sleep(12)  # past another redelivery delay: settled, so not sent a second time
        assert tally(own_emulator.requests(), {token: user}, "notes", 1)["duplicates"] == 0
        assert scheduler.poll() is None
        log = "".join(p.read_text() for p in tmp_path.glob("scheduler-*.log"))
        assert "sent again 1 delivery batches" in log
        from sqlalchemy import create_engine, text

        with create_engine(pipe.db_url).connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM outbox")).scalar_one() == 0
    finally:
        pipe.stop_workers()


SINGLE_PRODUCER = """
import json, sys, time
from pushsync.client import PublishError, publish
for e in json.loads(sys.stdin.read()):          # one event per message, as request handlers publish
    try:
        publish(e["identityPoolId"], e["identityId"], e["datasetName"], e["syncCount"])
        print("ok", e["identityId"], flush=True)
    except PublishError as exc:                   # not acknowledged: the caller knows, nothing is owed
        print("failed", e["identityId"], exc, flush=True)
    time.sleep(0.008)
"""
KILLS = int(os.environ.get("PUSHSYNC_REDIS_KILLS", "8"))


def test_redis_sigkilled_again_and_again_under_single_event_load_loses_no_acknowledged_event(tmp_path,
                                                                                            own_emulator):
    """Redis SIGKILLed (AOF, fsync always) KILLS times while a producer publishes one event per
    message and a worker consumes: every event the producer was told is on the queue reaches its
    device. A message taken off ``events`` is taken by one atomic step, so a kill at any instant
    leaves it on the list or in the in-flight records; with Celery's consumer taking them by BRPOP
    and recording them in a second command (the ingest before this), about one kill in six lost
    one."""
    server = RedisServer(tmp_path / "redis")
    pipe = Pipeline(tmp_path, own_emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url,
                    extra_env={**ENV, "PUSHSYNC_COUNTDOWN_MAX": "1"})
    try:
        pipe.create_pool(POOL)
        tokens = seed(pipe, POOL, 200 * KILLS, 1, dataset="notes")
        pipe.start_worker("-c", "2")
        pipe.start_scheduler()
        events = sorted(set(tokens.values()))
        producer = start_producer(pipe, SINGLE_PRODUCER, POOL, events, stderr=subprocess.DEVNULL)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(producer.stdout), daemon=True)
        reader.start()
        wait_for(lambda: len(lines) >= 50, timeout=60, what="events flowing")
        kills = 0
        while producer.poll() is None and kills < KILLS:
            server.kill()
            time.sleep(0.5)
            server.start()
            kills += 1
            time.sleep(1.0)
        assert kills == KILLS, f"the producer finished after {kills} kills: the test proves less than it says"
        producer.wait(240)
        reader.join(10)
        acknowledged = {line.split()[1] for line in lines if line.startswith("ok")}
        owed = {tok: ident for tok, ident in tokens.items() if ident in acknowledged}
        wait_for(lambda: tally(own_emulator.requests(), owed, "notes", 1)["delivered"] == len(owed),
                 timeout=120, interval=0.5,
                 what=f"every acknowledged event (missing {tally(own_emulator.requests(), owed, 'notes', 1)})")
        t = tally(own_emulator.requests(), owed, "notes", 1)
        print(f"\n[Redis SIGKILL x{KILLS}, one event per message] events acknowledged {len(acknowledged)} of "
              f"{len(events)}, delivered {t['delivered']}, duplicates {t['duplicates']}; lost 0")
        assert t["strays"] == 0
    finally:
        pipe.stop_workers()
        server.stop()
