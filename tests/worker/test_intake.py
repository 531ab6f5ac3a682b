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
    for _ in range(10):
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
    assert letter["reason"].startswith("run never finished: taken by 3 runs")
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
