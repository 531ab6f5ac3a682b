"""What an ingest run takes off Redis is untrusted: bytes Python cannot read on ``events`` or in the
flush set, a message whose runs keep dying, forged values, kombu's priority lists. Each ends as a
dead letter of its own or a default, its neighbours go on, and nothing is left behind in Redis."""

from __future__ import annotations

import json

import pytest

from worker import coalesce, envelope, intake

from .conftest import _ev, _letters, _nothing_left, _once, _seeded


def test_a_message_whose_runs_die_is_taken_alone_then_dead_lettered(run, engine):
    """A message that kills every run that takes it (nothing acknowledges it): once the lease ends
    it is taken again, alone, so its neighbour's run goes through; after MAX_ABANDONS deaths it is
    dead-lettered and acknowledged."""
    idents = _seeded(engine, 2)
    run.publish([_ev(idents[0])])  # the poison
    run.publish([_ev(idents[1])])
    lease = run.ctx.settings.visibility_timeout + 1
    c = run.ctx.redis
    taken = run.ctx.intake.take(10, 0)  # the run that dies
    poison = taken.messages[0].id
    assert len(taken.messages) == 2
    notified = 0
    for _ in range(4 * intake.MAX_ABANDONS):
        run.clock.advance(lease)
        if not c.zcard(intake.DUE):
            break
        first = c.zrange(intake.DUE, 0, 0)[0].decode()
        if first == poison and int(c.hget(intake.ABANDONS, poison) or 0) + 1 < intake.MAX_ABANDONS:
            again = run.ctx.intake.take(10, 0)  # and this run dies too
            assert [m.id for m in again.messages] == [poison] and again.alone
        else:
            result = _once(run)
            notified += result["notified"]
    assert notified == 1  # the neighbour, on its own
    [letter] = _letters(engine)
    assert letter["reason"].startswith(f"run never finished: taken by {intake.MAX_ABANDONS} runs")
    assert letter["payload"]["identityId"] == idents[0] and _nothing_left(run)

@pytest.mark.parametrize("raw", [
    b"[" * 5_000 + b"]" * 5_000,  # nested past Python's recursion limit
    json.dumps({"body": "W1tdLCB7fSwge31d", "content-type": "application/json", "content-encoding": "utf-8",
                "headers": {"task": "pushsync.ingest", "x": "\udcff"},
                "properties": {"delivery_tag": "t", "body_encoding": "base64"}}).encode().replace(b"\\udcff",
                                                                                                   b"\xff"),
    b'{"body": 0x0, "headers": {"task": "pushsync.ingest"}, "properties": {"delivery_tag": "t"}}',
    b"\x00\x01\x02",
])
def test_bytes_python_cannot_read_become_a_bounded_dead_letter_and_the_neighbours_go_on(run, engine, raw):
    """Problem 4: a message that Lua's cjson reads and Python does not (or nobody reads) is
    dead-lettered raw and acknowledged; the good messages beside it are notified, in the same run."""
    idents = _seeded(engine, 2)
    run.publish([_ev(idents[0])])
    run.ctx.redis.lpush("events", raw)
    run.publish([_ev(idents[1])])
    result = _once(run)
    assert result["notified"] == 2
    [letter] = _letters(engine)
    assert letter["kind"] == "message" and letter["reason"].startswith("unreadable message")
    assert letter["payload"]["message"]["length"] == len(raw)
    assert len(letter["payload"]["message"]["raw"]) <= 16_384 and _nothing_left(run)

def test_flush_members_python_cannot_read_are_dead_lettered_and_the_good_flushes_run(run, engine):
    """Problem 5: junk in the flush set (bad UTF-8, not a key, a pool id that breaks the rules) is
    dead-lettered and removed; the good flush due with it plans its count."""
    idents = _seeded(engine, 1)
    run.set(coalesce_window=1.0)
    run.ingest([_ev(idents[0], 1)])
    run.ingest([_ev(idents[0], 2)])  # held
    c = run.ctx.redis
    c.zadd(coalesce.FLUSH, {b"\xff\xfe": 0, b"only two": 0, b"x y z": 0, b"[" * 5000: 0})
    run.clock.advance(2)
    run.queued.clear()
    result = _once(run)
    assert result["window_flushed"] == 1
    assert [item[3] for b in run.queued for item in b["items"]] == [2]
    letters = _letters(engine)
    assert len(letters) == 4 and all(d["reason"].startswith("unreadable message: flush set") for d in letters)
    assert c.zcard(coalesce.FLUSH) == 0

def test_a_forged_enqueued_at_is_read_as_now_and_a_priority_message_is_taken(run, engine):
    from pushsync.queues import producer_app

    idents = _seeded(engine, 1)
    for value in (float("inf"), float("nan"), 10**400, -5, "3", True, None, [1]):
        m = envelope.read(intake.InFlight("1", json.dumps(_kombu(value)).encode(), 0, 0), now=1e9)
        assert isinstance(m, envelope.Message) and m.enqueued_at == 1e9 and m.events == []
    # kombu keeps a priority's messages in lists of their own, named as intake.PRIORITY_LISTS says
    producer_app().send_task("pushsync.ingest", args=[[_ev(idents[0])]], queue="events", priority=5)
    assert run.ctx.redis.llen(intake.PRIORITY_LISTS[1]) == 1
    assert _once(run)["notified"] == 1 and _nothing_left(run)

def _kombu(enqueued_at) -> dict:
    import base64

    body = base64.b64encode(json.dumps([[[]], {"enqueued_at": enqueued_at}, {}], default=str).encode()).decode()
    return {"body": body, "content-type": "application/json", "headers": {"task": "pushsync.ingest"},
            "properties": {"delivery_tag": "x", "body_encoding": "base64"}}


def test_a_message_too_large_to_read_never_reaches_python_whole_and_is_dead_lettered(run, engine):
    idents = _seeded(engine, 1)
    huge = b'{"body": "' + b"x" * (intake.MAX_MESSAGE_BYTES + 10) + b'"}'
    run.ctx.redis.lpush("events", huge)
    run.publish([_ev(idents[0])])
    taken = run.ctx.intake.take(200, 0)
    big = next(t for t in taken.messages if t.oversize)
    assert len(big.raw) <= 16_384 and big.size == len(huge)
    run.clock.advance(run.ctx.settings.visibility_timeout + 1)  # that run died; the next ones read them
    results = [_once(run) for _ in range(3)]
    assert sum(r["notified"] for r in results) == 1
    [letter] = _letters(engine)
    assert letter["reason"] == f"unreadable message: {len(huge)} bytes; the largest message a worker reads is " \
                               f"{intake.MAX_MESSAGE_BYTES}" and _nothing_left(run)


@pytest.mark.parametrize("compression", ["zlib", "bzip2", "lzma"])
def test_a_compressed_message_from_a_celery_client_is_read(run, engine, compression):
    from pushsync.queues import producer_app

    idents = _seeded(engine, 1)
    producer_app().send_task("pushsync.ingest", args=[[_ev(idents[0], 9)]], queue="events",
                             compression=compression)
    assert _once(run)["notified"] == 1 and [item[3] for b in run.queued for item in b["items"]] == [9]


def test_a_body_that_unpacks_to_too_much_is_unreadable_not_a_memory_bomb():
    import base64
    import zlib

    bomb = base64.b64encode(zlib.compress(b"[" * (envelope.UNPACKED_MAX + 100))).decode()
    raw = json.dumps({"body": bomb, "content-type": "application/json",
                      "headers": {"task": "pushsync.ingest", "compression": "application/x-gzip"},
                      "properties": {"body_encoding": "base64"}}).encode()
    m = envelope.read(intake.InFlight("1", raw, 0, 0, len(raw)), now=1e9)
    assert isinstance(m, envelope.Unreadable) and "unpacks to more than" in m.why


def test_a_run_that_outlived_its_lease_cannot_undo_what_the_next_run_took(run, engine):
    """Fencing: run A's lease ran out and run B took the message; A's late acknowledgement and
    deferral leave B's record as it is."""
    idents = _seeded(engine, 1)
    run.publish([_ev(idents[0])])
    a = run.ctx.intake.take(10, 0)
    run.clock.advance(run.ctx.settings.visibility_timeout + 1)
    b = run.ctx.intake.take(10, 0)
    assert [t.id for t in b.messages] == [t.id for t in a.messages] and b.lease != a.lease
    run.ctx.intake.ack([t.id for t in a.messages], a.lease)
    run.ctx.intake.defer({t.id: 0 for t in a.messages}, a.lease)
    c = run.ctx.redis
    assert c.hlen(intake.INFLIGHT) == 1 and c.zscore(intake.DUE, b.messages[0].id) == b.lease
    run.ctx.intake.ack([t.id for t in b.messages], b.lease)
    assert _nothing_left(run)


def test_values_a_redis_writer_left_in_the_records_read_as_nothing(run, engine):
    idents = _seeded(engine, 1)
    run.publish([_ev(idents[0])])
    taken = run.ctx.intake.take(10, 0)
    mid = taken.messages[0].id
    c = run.ctx.redis
    c.hset(intake.ATTEMPTS, mid, "lots")
    c.hset(intake.ABANDONS, mid, "-x")
    c.zadd(intake.DUE, {mid: 0})
    c.srem(intake.LEASED, mid)
    again = run.ctx.intake.take(10, 0)
    assert [(t.attempts, t.abandons) for t in again.messages] == [(0, 0)]


def test_two_takes_never_share_an_id():
    import redis

    from worker.intake import Intake

    client = redis.Redis(db=15)
    client.flushdb()
    try:
        intake_ = Intake(client, 60)
        client.lpush("events", b"a", b"b")
        first = intake_.take(1, 0).messages[0].id
        client.flushdb()  # as a Redis restarted without its data would
        client.lpush("events", b"c")
        assert intake_.take(1, 0).messages[0].id != first
    finally:
        client.flushdb()
