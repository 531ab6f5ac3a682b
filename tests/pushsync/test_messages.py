"""Typed task messages: what comes off a queue is parsed, checked and de-duplicated (pure logic)."""

from __future__ import annotations

import pytest

from pushsync.messages import MAX_ATTEMPT, DeliveryBatch, Item, MessageError, RetryEntry, from_dead_letter

from ..conftest import IDENT, POOL

DEV = "0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"


def _raw(**over):
    return {"pool": POOL, "platform": "GCM", "items": [[DEV, IDENT, "notes", 3]], "attempt": 1, **over}


def test_a_batch_round_trips_through_json():
    batch = DeliveryBatch.from_json({**_raw(), "enqueued_at": 12.5})
    assert batch.items == (Item(DEV, IDENT, "notes", 3),) and batch.enqueued_at == 12.5
    assert DeliveryBatch.from_json(batch.to_json()) == batch


@pytest.mark.parametrize("raw,why", [
    ("a string", "JSON object"),
    (_raw(platform="FCM"), "platform"),        # an alias is fine from producers, not on a queue
    (_raw(platform="ADM"), "platform"),
    (_raw(platform=None), "platform"),
    (_raw(pool="x"), "identityPoolId"),
    (_raw(pool=["list"]), "identityPoolId"),
    (_raw(attempt=0), "attempt"),
    (_raw(attempt=-7), "attempt"),
    (_raw(attempt=MAX_ATTEMPT + 1), "attempt"),
    (_raw(attempt="2"), "attempt"),
    (_raw(attempt=True), "attempt"),
    (_raw(items=[]), "items"),
    (_raw(items="x"), "items"),
    (_raw(items=[[DEV, IDENT, "notes", 1]] * 10_001), "at most"),
    ({**_raw(), "shell": "rm -rf"}, "unknown keys"),
])
def test_a_batch_that_cannot_be_used_is_refused_with_the_reason(raw, why):
    with pytest.raises(MessageError, match=why):
        DeliveryBatch.from_json(raw)


def test_bad_items_are_set_aside_one_by_one_and_the_rest_goes_on():
    batch = DeliveryBatch.from_json(_raw(items=[
        [DEV, IDENT, "notes", 3], [[1, 2], IDENT, "notes", 3], [DEV, IDENT, "notes", -1], [DEV, IDENT, "notes", 2**63],
        [DEV, IDENT, "notes", "3"], [DEV, IDENT, "notes"], "junk", [DEV.upper(), IDENT.upper(), "other", 1]]))
    assert [i.key for i in batch.items] == [(DEV, "notes"), (DEV, "other")]
    assert batch.items[1].identity_id == IDENT  # ids are compared lower-case
    assert len(batch.rejected) == 6 and all("bad delivery item" in r.reason for r in batch.rejected)


def test_the_same_push_twice_keeps_the_newest_count():
    batch = DeliveryBatch.from_json(_raw(items=[[DEV, IDENT, "notes", 3], [DEV, IDENT, "notes", 5],
                                                [DEV, IDENT, "notes", 4], [DEV, IDENT, "photos", 1]]))
    assert [(i.dataset, i.sync_count) for i in batch.items] == [("notes", 5), ("photos", 1)]
    assert batch.duplicates == 2


def test_again_counts_the_attempt_and_keeps_only_the_given_items():
    batch = DeliveryBatch.from_json(_raw(items=[[DEV, IDENT, "notes", 3], [DEV, IDENT, "photos", 1]]))
    later = batch.again([batch.items[1]])
    assert later.attempt == 2 and later.items == (batch.items[1],) and later.pool == POOL


@pytest.mark.parametrize("member", [b"nope", b"[]", b'{"kind": "deliver"}', b'{"kind": "x", "payload": 1}', b"\xff"])
def test_a_retry_entry_must_be_ours(member):
    with pytest.raises(MessageError):
        RetryEntry.from_json(member)


def test_a_delivery_dead_letter_reads_back_or_is_refused():
    payload = {"pool": POOL, "platform": "APNS", "deviceId": DEV, "identityId": IDENT, "datasetName": "d",
               "syncCount": 9}
    assert from_dead_letter(payload) == (POOL, "APNS", Item(DEV, IDENT, "d", 9))
    with pytest.raises(MessageError):
        from_dead_letter({**payload, "platform": "WNS"})
    with pytest.raises(MessageError):
        from_dead_letter({"message": "a batch that never parsed"})
