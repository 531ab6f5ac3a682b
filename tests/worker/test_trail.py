"""The trail (worker.trail, pushsync.trail) on each outcome, through the worker's own code: real
ingest runs and deliveries on a real store (SQLite and PostgreSQL) and Redis, each task's figures
and trail written as the tasks write them (``Context.flush_metrics``), read back as `pushsync
trace` reads them."""

from __future__ import annotations

import pytest

from pushsync.queues import EVENTS_QUEUE
from pushsync.trail import read
from store import repo
from store.db import session_scope
from worker import delivery, ingest, metrics, trail
from worker.senders.base import Kind

from ..conftest import IDENT, IDENT2, POOL, POOL2
from . import harness
from .conftest import FCM_ONLY


@pytest.fixture
def run(store_settings, engine):
    r = harness.Run(store_settings)
    r.build(harness.Clock())
    # the shipped settings: coalescing on (1 s windows), default batch sizes
    r.ctx.redis.flushdb()
    yield r
    r.ctx.redis.flushdb()


def _devices(run, n=2, identity=IDENT, datasets=("notes",)):
    with run.store_scope() as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        out = [repo.register_device(s, POOL, identity, "GCM", f"tok{k}-{identity[-6:]}-abcdefgh") for k in range(n)]
        for dev in out:
            repo.subscribe(s, POOL, identity, list(datasets), dev)
    return out


def _publish(run, count, dataset="notes", identity=IDENT, pool=POOL, **extra):
    run.publish([{"identityPoolId": pool, "identityId": identity, "datasetName": dataset, "syncCount": count,
                  **extra}])


def _runs(run) -> None:
    """Ingest runs as the ingest task makes them: the run, then its figures and trail written."""
    for _ in range(100):
        rec = metrics.Recorder()
        ingest.run(run.ctx, rec)
        run.ctx.flush_metrics(rec)
        if not run.ctx.intake.status()[0]:
            return
    raise AssertionError("the runs never ran out of work")


def _deliver(run, batches) -> None:
    """Delivery messages as the deliver task runs them, figures and trail written after each."""
    while batches:
        rec = metrics.Recorder()
        delivery.deliver_message(run.ctx, batches.pop(0), rec)
        run.ctx.flush_metrics(rec)


def _trail(run, identity=IDENT, pool=POOL, dataset=None) -> dict:
    return read(run.ctx.redis, pool, identity, dataset)


def test_a_pushed_event_and_its_sent_pushes_newest_first(run):
    devs = _devices(run)
    _publish(run, 5)
    _runs(run)
    run.clock.advance(1.5)  # past the shipped 1 s window: 6 is a leading edge again
    _publish(run, 6)
    _runs(run)
    out = _trail(run)
    assert [(e["count"], e["fate"], e["detail"]) for e in out["events"]] == [(6, "pushed", "2"), (5, "pushed", "2")]
    newest = out["events"][0]
    assert newest["text"] == "pushed to 2 devices"
    assert sorted((d["device"], d["outcome"], d["token"]) for d in newest["devices"]) == sorted(
        (dev, "sent", f"tok{k}-{IDENT[-6:][:3]}…") for k, dev in enumerate(devs))
    assert out["skipped"] == 0 and out["entries"] == 2
    # the token is never on the trail whole
    raw = b"".join(run.ctx.redis.lrange(trail.key(POOL, IDENT), 0, -1))
    assert b"abcdefgh" not in raw and b"tok0-" in raw


def test_held_by_a_window_then_pushed_by_its_flush(run):
    _devices(run, n=1)
    _publish(run, 1)
    _runs(run)
    _publish(run, 2)
    _runs(run)
    held = _trail(run)["events"][0]
    assert (held["count"], held["fate"], held["flushed"], held["devices"]) == (2, "held", None, [])
    assert int(held["detail"]) == pytest.approx((run.clock.now + 1.0) * 1000, abs=50)
    assert held["text"].startswith("held by a coalescing window until ")
    run.clock.advance(1.5)
    _runs(run)
    held = _trail(run)["events"][0]
    assert held["fate"] == "held" and held["flushed"]["devices"] == 1
    assert [(d["count"], d["outcome"]) for d in held["devices"]] == [(2, "sent")]
    assert [e["fate"] for e in _trail(run)["events"]] == ["held", "pushed"]


def test_stale_and_duplicate_events(run):
    _devices(run, n=1)
    _publish(run, 5)
    _runs(run)
    _publish(run, 3)
    _runs(run)
    _publish(run, 5)
    _runs(run)
    fates = [(e["count"], e["fate"], e["detail"], e["devices"]) for e in _trail(run)["events"]]
    assert fates[:2] == [(5, "duplicate", "", []), (3, "stale", "5", [])]
    # in one run: the older of two is coalesced into the newer, an equal one is a duplicate
    run.clock.advance(1.5)  # past the window the 5 opened
    run.publish([{"identityPoolId": POOL, "identityId": IDENT, "datasetName": "notes", "syncCount": n}
                 for n in (7, 8, 8)])
    _runs(run)
    assert sorted((e["count"], e["fate"]) for e in _trail(run)["events"][:3]) == [
        (7, "coalesced"), (8, "duplicate"), (8, "pushed")]


def test_token_invalid_and_a_retry_with_its_next_attempt_time(run):
    devs = _devices(run)
    run.answer = lambda p: Kind.TOKEN_INVALID if p.device_id == devs[0] else Kind.RETRY
    _publish(run, 4)
    _runs(run)
    pushes = {d["device"]: d for d in _trail(run)["events"][0]["devices"]}
    assert pushes[devs[0]]["outcome"] == "invalid" and pushes[devs[0]]["detail"] == "Unregistered"
    assert "token invalid (Unregistered)" in pushes[devs[0]]["text"]
    retry = pushes[devs[1]]
    assert retry["outcome"] == "retry" and run.retries
    # the first retry waits up to PUSHSYNC_RETRY_BASE (1 s), by the run's clock
    assert run.clock.now <= float(retry["detail"]) <= run.clock.now + 1.0
    assert retry["text"].startswith("retried: next attempt at ")
    run.answer = lambda p: Kind.OK
    _deliver(run, run.retries)
    assert [d["outcome"] for d in _trail(run)["events"][0]["devices"] if d["device"] == devs[1]] == ["retry", "sent"]


def test_pushes_skipped_because_the_device_moved_or_unsubscribed(run):
    run.set(inline_delivery_max=0)  # the batches wait on the queue: the devices change meanwhile
    moved, gone = _devices(run)
    _publish(run, 9)
    _runs(run)
    with run.store_scope() as s:
        # the phone changed user (and lost its subscriptions), then subscribed to the new user's notes
        assert repo.register_device(s, POOL, IDENT2, "GCM", f"tok0-{IDENT[-6:]}-abcdefgh") == moved
        repo.subscribe(s, POOL, IDENT2, ["notes"], moved)
        repo.unsubscribe(s, POOL, IDENT, "notes", gone)
    _deliver(run, run.queued)
    pushes = {d["device"]: d for d in _trail(run)["events"][0]["devices"]}
    assert (pushes[moved]["outcome"], pushes[moved]["detail"]) == ("skipped", "moved")
    assert pushes[moved]["text"] == "skipped: the device moved to another identity"
    assert (pushes[gone]["outcome"], pushes[gone]["detail"]) == ("skipped", "unsubscribed")
    assert not run.sent


def test_dead_lettered_events_and_pushes(run):
    devs = _devices(run)
    _publish(run, 3, pool=POOL2)  # a pool the store does not know
    _runs(run)
    dead = _trail(run, pool=POOL2)["events"][0]
    assert (dead["count"], dead["fate"], dead["detail"]) == (3, "dead", f"unknown pool: {POOL2}")
    run.set(max_attempts=1)
    run.answer = lambda p: Kind.PERMANENT if p.device_id == devs[0] else Kind.RETRY
    _publish(run, 4)
    _runs(run)
    pushes = {d["device"]: d for d in _trail(run)["events"][0]["devices"]}
    assert pushes[devs[0]]["detail"] == "permanent error: BadTopic"
    assert pushes[devs[1]]["detail"] == "retries exhausted: Unavailable"
    assert {d["outcome"] for d in pushes.values()} == {"dead"}
    with session_scope() as s:
        assert len([d for d in repo.list_dead_letters(s) if d["kind"] == "delivery"]) == 2


def test_the_trail_is_bounded_expires_and_can_be_turned_off(run):
    _devices(run, n=1)
    run.set(trail_entries=5, trail_days=0.5)
    for n in range(1, 13):
        _publish(run, n)
        _runs(run)
    k = trail.key(POOL, IDENT)
    assert run.ctx.redis.llen(k) == 5
    assert 43_000 < run.ctx.redis.ttl(k) <= 43_200
    out = _trail(run)
    assert [e["count"] for e in out["events"]] == [12, 11, 10, 9, 8] and 43_000 < out["expires_in"] <= 43_200
    for off in ({"trail_entries": 0}, {"trail_days": 0.0}):
        run.set(**{"trail_entries": 5, "trail_days": 0.5, **off})
        _publish(run, 20 + len(off), identity=IDENT2)
        _runs(run)
        assert not run.ctx.redis.exists(trail.key(POOL, IDENT2))


def test_malformed_entries_are_skipped_and_counted(run):
    _devices(run, n=1)
    _publish(run, 2)
    _runs(run)
    k = trail.key(POOL, IDENT)
    c = run.ctx.redis
    stamp = b"1700000000000\n"
    for entry in (stamp + b"x\ty", b"e\tnotes\t1\tpushed\t1", stamp + b"\xff\xfe", b"soon\ne\tnotes\t1\tpushed\t1",
                  stamp + b"e\tnotes\tabc\tpushed\t1", stamp + b"e\tnotes\t3\tnonsense\t",
                  stamp + b"e\tnotes\t4\theld\tnot-a-time", stamp + b"d\tnotes\t2\tdev\ttok\tsent",
                  stamp + b"e\tnotes\t5\tdead\t\x1b[31mred"):
        c.rpush(k, entry)  # older than the worker's entry
    out = _trail(run)
    assert out["skipped"] == 8
    assert [(e["count"], e["fate"]) for e in out["events"]] == [(2, "pushed"), (5, "dead")]
    assert "\x1b" not in out["events"][0]["detail"]
    c.delete(k)
    c.set(k, "not a list")
    assert _trail(run)["skipped"] == 1 and _trail(run)["events"] == []
    _publish(run, 3)  # a key that is not a list is not the worker's to replace: the run goes on
    _runs(run)
    assert c.get(k) == b"not a list" and c.ttl(k) == -1 and c.llen(EVENTS_QUEUE) == 0


def test_dataset_filter(run):
    _devices(run, n=1, datasets=("notes", "photos"))
    run.publish([{"identityPoolId": POOL, "identityId": IDENT, "datasetName": ds, "syncCount": 1}
                 for ds in ("notes", "photos")])
    _runs(run)
    assert [e["dataset"] for e in _trail(run, dataset="photos")["events"]] == ["photos"]
    assert sorted(e["dataset"] for e in _trail(run)["events"]) == ["notes", "photos"]


def test_an_entry_keeps_at_most_its_cap_of_lines_and_says_how_many_it_left_out(run):
    """One task's lines for one identity (up to 20 datasets to 100 devices each) are capped, and the
    trail says what it left out rather than growing an entry without bound."""
    tr = trail.Trail()
    tr.on(run.ctx.settings)
    for n in range(trail.LINES_MAX + 40):
        tr.add(POOL, IDENT, "d", "notes", 1, f"dev{n}", "tok", "sent", "")
    more = trail.Trail()
    more.add(POOL, IDENT, "d", "notes", 1, "late", "tok", "sent", "")
    tr.merge(more)  # an inline delivery's lines join the run's
    pipe = run.ctx.redis.pipeline(transaction=False)
    tr.write(pipe)
    pipe.execute()
    out = _trail(run)
    assert out["omitted"] == 41 and out["skipped"] == 0
    assert len(out["events"][0]["devices"]) == trail.LINES_MAX
