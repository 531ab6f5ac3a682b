"""Hostile input, fuzzed: malformed change events and forged task messages, as any producer or a
Flower login can put them on the queues, raw bytes written straight onto ``events`` and into the
coalescing flush set, as anything with a Redis login can, go to the ingest runs and the deliver
task body (the code a worker runs, ``tests/worker/harness.py``) between valid events.

For every message: the task body returns (no crash); every event and every batch item is
accounted for as notified, stale, coalesced, skipped, sent or dead-lettered with a reason; the
valid event sent after it reaches its devices; and no push at all reaches a device outside the
pool, identity and platform it is addressed to."""

from __future__ import annotations

import json
import os

from hypothesis import strategies as st
from sqlalchemy import text

from pushsync.messages import DeliveryBatch, MessageError
from store import repo
from store.db import engine_for, session_scope

from . import harness
from .test_isolation import CREDS

POOLS = ("us-east-1:00000000-0000-4000-8000-0000000000f1", "eu-west-1:00000000-0000-4000-8000-0000000000f2")
IDENTS = ("us-east-1:00000000-0000-4000-8000-0000000000e1", "us-east-1:00000000-0000-4000-8000-0000000000e2")
PLATFORMS = ("GCM", "APNS", "APNS_SANDBOX")
CANARY = "canary"  # the valid events' dataset: the junk never names it
EXAMPLES = int(os.environ.get("PUSHSYNC_FUZZ_EXAMPLES", "10000"))

text_junk = st.one_of(
    st.text(max_size=40),
    # huge strings, made by repetition: drawing thousands of characters one by one is slow
    st.tuples(st.text(min_size=1, max_size=8), st.integers(200, 3000)).map(lambda t: t[0] * t[1]),
    st.sampled_from(["", "\x00", "a\x00b", "\u202e\u0000", "\x1b[31m", "é" * 60, "us-east-1:zz", "notes\n",
                     " notes", "NOTES", "..", "a" * 129]),
)
int_junk = st.sampled_from([-1, -(2**63), 2**63, 2**63 + 1, 2**64, 10**30, -(10**30), 0, 1, 2**63 - 1])
json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), int_junk, st.integers(), st.floats(allow_nan=True), text_junk),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


def _world_ids(run: harness.Run) -> dict:
    with engine_for(run.url).connect() as conn:
        return {dev: (pool, ident, plat, tok) for dev, pool, ident, plat, tok in conn.execute(
            text("SELECT id, pool_id, identity_id, platform, token FROM devices"))}


def maybe(valid, junk=json_junk):
    return st.one_of(valid, valid, junk)


def events(dev_ids):
    pool = maybe(st.sampled_from(POOLS + tuple(p.upper() for p in POOLS)))
    ident = maybe(st.sampled_from(IDENTS))
    dataset = maybe(st.sampled_from(["notes", "photos", "x" * 128]))
    count = st.one_of(st.integers(0, 50), int_junk, st.just("12"), st.just(" 7 "), json_junk)
    origin = st.one_of(st.sampled_from(dev_ids), json_junk)
    event = st.fixed_dictionaries(
        {}, optional={"identityPoolId": pool, "identityId": ident, "datasetName": dataset, "syncCount": count,
                      "originDeviceId": origin, "eventId": maybe(st.text(max_size=20)),
                      "extra": json_junk})
    complete = st.fixed_dictionaries({"identityPoolId": pool, "identityId": ident, "datasetName": dataset,
                                      "syncCount": count}, optional={"originDeviceId": origin})
    return st.one_of(complete, complete, event, json_junk)


def ingest_message(dev_ids):
    ev = events(dev_ids)
    return st.tuples(st.just("ingest"),
                     st.one_of(st.lists(ev, max_size=6).map(lambda e: [e]), st.lists(json_junk, max_size=3),
                               st.lists(ev, max_size=3).map(lambda e: [e, "not a time"])),
                     st.one_of(st.just({}), st.dictionaries(st.sampled_from(["events", "enqueued_at", "attempt",
                                                                              "other"]), json_junk, max_size=3)))


def deliver_message(dev_ids):
    item = st.one_of(
        st.tuples(st.sampled_from(dev_ids), maybe(st.sampled_from(IDENTS)), maybe(st.sampled_from(["notes", "photos"])),
                  st.one_of(st.integers(0, 60), int_junk, json_junk)).map(list),
        st.lists(json_junk, max_size=5), json_junk)
    batch = st.fixed_dictionaries(
        {"pool": maybe(st.sampled_from(POOLS)), "platform": maybe(st.sampled_from(PLATFORMS + ("FCM", "gcm"))),
         "items": st.one_of(st.lists(item, min_size=1, max_size=6), json_junk)},
        optional={"attempt": st.one_of(st.integers(-2, 30), json_junk), "enqueued_at": json_junk,
                  "id": json_junk, "extra": json_junk})
    return st.tuples(st.just("deliver"), st.one_of(batch, batch, json_junk))


def _setup(run: harness.Run) -> list[str]:
    """Two pools with both kinds of credentials; in each, two identities with a device on each
    platform, subscribed to notes and photos."""
    with session_scope(engine_for(run.url)) as s:
        for pool in POOLS:
            repo.upsert_pool(s, pool, fcm_service_account=CREDS["GCM"], apns=CREDS["APNS"])
        # one device of each identity takes the canary (each identity's on another platform)
        rows = [(pool, ident, plat, f"{n:02x}{k:02x}{j:02x}" * 4,
                 ["notes", "photos", *([CANARY] if j == (2 * n + k) % 3 else [])])
                for n, pool in enumerate(POOLS) for k, ident in enumerate(IDENTS) for j, plat in enumerate(PLATFORMS)]
        return repo.import_devices(s, rows)


def _last_dead_letter(run) -> int:
    with engine_for(run.url).connect() as conn:
        return conn.execute(text("SELECT coalesce(max(id), 0) FROM dead_letters")).scalar()


def _dead_letters(run, after: int) -> list[tuple]:
    with engine_for(run.url).connect() as conn:
        return list(conn.execute(text("SELECT id, kind, reason FROM dead_letters WHERE id > :n ORDER BY id"),
                                 {"n": after}))


def _prepare(run: harness.Run) -> dict:
    run.reset()
    dev_ids = _setup(run)
    with engine_for(run.url).connect() as conn:
        canaries = set(conn.execute(text("SELECT device_id FROM subscriptions WHERE dataset_name = :d"),
                                    {"d": CANARY}).scalars())
    return {"dev_ids": dev_ids, "world": _world_ids(run), "canaries": sorted(canaries)}


raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n, b: b * n, st.integers(100, 3000), st.sampled_from([b"[", b"{\"a\":", b"\xff", b"\x00"])),
    st.builds(lambda v: json.dumps(v, default=str).encode(), json_junk),
    # kombu's envelope around bodies Python cannot read (a header byte that is not UTF-8, Lua's 0x0)
    st.sampled_from([b'{"body": 0x0, "headers": {"task": "pushsync.ingest"}, "properties": {}}',
                     b'{"body": "e30=", "headers": {"task": "pushsync.ingest", "x": "\xff"}, '
                     b'"properties": {"body_encoding": "base64"}}',
                     b'{"body": "!!", "content-type": "application/json", "headers": {"task": "pushsync.ingest"}, '
                     b'"properties": {"body_encoding": "base64"}}']))
raw_message = st.tuples(st.just("raw"), raw_bytes, st.just({}))
flush_member = st.tuples(st.just("flush"), st.one_of(raw_bytes, st.text(max_size=60).map(str.encode)), st.just({}))


def _strategies(dev_ids, world, canaries) -> dict:
    return {"msg": st.one_of(ingest_message(dev_ids), deliver_message(dev_ids), raw_message, flush_member),
            "target": st.sampled_from(canaries)}


def _check_ingest(run, before_dl, args, kwargs) -> None:
    result = run.ingest(*args, **{str(k): v for k, v in kwargs.items()})
    assert isinstance(result, dict), result
    if len(args) == 1 and isinstance(args[0], list) and not kwargs:
        # every event of the message in exactly one bucket (all pools here have credentials
        # for every platform, so what is dead-lettered beyond the invalid is an unknown pool)
        assert result["received"] == len(args[0]) == result["invalid"] + result["coalesced"] \
            + result["stale"] + result["notified"] + (result["dead_lettered"] - result["invalid"]), result
        assert len(_dead_letters(run, before_dl)) >= result["dead_lettered"]


def _check_raw(run, before_dl, kind, raw: bytes) -> None:
    """Bytes nobody wrote through pushsync: each a dead letter of its own (or, on the list, an
    empty or a valid-looking message read as what it is), and nothing left behind in Redis."""
    from worker import coalesce, intake

    if kind == "raw":
        run.ctx.redis.lpush("events", raw)
    else:
        run.ctx.redis.zadd(coalesce.FLUSH, {raw: 0})
    run.runs()
    c = run.ctx.redis
    assert c.llen("events") == 0 and c.hlen(intake.INFLIGHT) == 0 and c.zcard(intake.DUE) == 0
    assert c.zcard(coalesce.FLUSH) == 0 or kind == "raw"
    letters = _dead_letters(run, before_dl)
    assert len(letters) <= 1 or kind == "raw", letters


def _check_deliver(run, before_dl, batch) -> None:
    result = run.deliver(batch)
    try:
        parsed = DeliveryBatch.from_json(batch)
    except MessageError:
        assert result["dead_lettered"] == 1 and result["sent"] == 0, result
        assert [k for _i, k, _r in _dead_letters(run, before_dl)] == ["message"]
    else:
        # every item sent, skipped (not the batch identity's device), stale, a duplicate of
        # another item, or dead-lettered (unreadable)
        assert result["sent"] + result["skipped"] + result["stale"] + result["dead_lettered"] \
            + parsed.duplicates == len(batch["items"]), (result, batch)


def _example(run, counts, msg, target, dev_ids, world, canaries) -> None:
    kind, args, *rest = msg
    before_dl, before_sent = _last_dead_letter(run), len(run.sent)
    if kind == "ingest":
        _check_ingest(run, before_dl, args, rest[0])
    elif kind == "deliver":
        _check_deliver(run, before_dl, args)
    else:
        _check_raw(run, before_dl, kind, args)
    run.drain()
    new = _dead_letters(run, before_dl)
    assert all(reason and reason.strip() for _id, _kind, reason in new), new
    counts["dead_letters"] = counts.get("dead_letters", 0) + len(new)
    # every push of this message went to a device of the pool, identity and platform it names
    for p in run.sent[before_sent:]:
        pool, ident, plat, tok = world[p.device_id]
        assert (p.pool, p.data["identityPoolId"], p.data["identityId"], p.platform, p.token) == \
            (pool, pool, ident, plat, tok), (p, world[p.device_id])
    counts["pushes"] = counts.get("pushes", 0) + len(run.sent) - before_sent
    # and the valid event after it goes through: a worker that survived, not a wedged one
    pool, ident, _plat, _tok = world[target]
    n = counts["canary"] = counts.get("canary", 0) + 1  # always higher, whatever failed before
    mark = len(run.delivered)
    run.ingest([{"identityPoolId": pool, "identityId": ident, "datasetName": CANARY, "syncCount": n}])
    run.drain()
    got = {(p.device_id, p.data["syncCount"]) for p in run.delivered[mark:]}
    assert got == {(d, str(n)) for d in canaries if world[d][:2] == (pool, ident)}, got


def _fuzz_child(seed_value: int, examples: int, redis_db: int) -> dict:
    return harness.run_examples(seed_value, examples, _strategies, _example, _prepare, redis_db,
                                PUSHSYNC_INLINE_DELIVERY_MAX="2000", PUSHSYNC_MAX_EVENTS_PER_MESSAGE="5")


def test_hostile_messages_end_as_dead_letters_or_skips_and_valid_events_still_arrive():
    results = harness.run_in_processes(_fuzz_child, EXAMPLES)
    examples = sum(r["examples"] for r in results)
    print(f"{examples} examples: {sum(r.get('dead_letters', 0) for r in results)} dead letters, "
          f"{sum(r.get('pushes', 0) for r in results)} pushes of forged or junk messages, all to their own devices")
    assert examples >= EXAMPLES
    assert sum(r.get("dead_letters", 0) for r in results) > examples // 4
