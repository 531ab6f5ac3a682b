"""The push path against stale state, forged messages and odd upstream answers, end to end:
a real worker and scheduler on Redis, the PostgreSQL store, the emulators.

Each test is one of the problems found by trying pushsync as a new user and as an attacker
would: the push must reach the right device with the newest count, or end as a counted skip or
a dead letter with a reason, and the worker carries on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

from ..conftest import PG_URL, POOL, POOL2, _prepare_pg
from .harness import Pipeline, new_identity, wait_for

ENV = {
    "PUSHSYNC_RETRY_BASE": "0.5",
    "PUSHSYNC_RETRY_CAP": "4",
    "PUSHSYNC_MAX_ATTEMPTS": "6",
    "PUSHSYNC_COUNTDOWN_MAX": "1",  # waits over 1 s go through the retry set and the scheduler's pump
    "PUSHSYNC_SEND_TIMEOUT": "5",
}


pytestmark = pytest.mark.usefixtures("well_behaved")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, emulator):
    _prepare_pg()
    directory = tmp_path_factory.mktemp("hostile")
    p = Pipeline(directory, emulator, PG_URL, broker_db=11, extra_env=ENV)
    p.create_pool(POOL)
    p.create_pool(POOL2)
    p.start_worker("-c", "2")
    p.start_scheduler()
    yield p
    p.stop_workers()


def fcm_token() -> str:
    return f"fcm-{uuid.uuid4().hex}"


def apns_token() -> str:
    # never "dead...": the emulator answers those as Unregistered
    return "a" + uuid.uuid4().hex[1:] + uuid.uuid4().hex


def new_pool() -> str:
    return f"eu-west-1:{uuid.uuid4()}"


def event(pool: str, identity: str, dataset: str, count) -> dict:
    return {"identityPoolId": pool, "identityId": identity, "datasetName": dataset, "syncCount": count}


def publish(pipe: Pipeline, events: list) -> None:
    """All the events in one message, through the producer client."""
    script = ("import json, sys\nfrom pushsync.client import publish_many\n"
              "events = json.loads(sys.stdin.read())\npublish_many(events, chunk_size=len(events))\n")
    subprocess.run([sys.executable, "-c", script], input=json.dumps(events), env=pipe.env, check=True, text=True,
                   timeout=60)


def requests_to(emulator, token: str) -> list[dict]:
    return [r for r in emulator.requests() if r.get("token") == token]


def accepted(emulator, token: str) -> list[tuple[str, str, str]]:
    return [(r["data"]["identityId"], r["data"]["datasetName"], r["data"]["syncCount"])
            for r in requests_to(emulator, token) if r["status"] == 200]


def letters(pipe: Pipeline, **match) -> list[dict]:
    return [d for d in pipe.dead_letters() if all(d["payload"].get(k) == v for k, v in match.items())]


def skipped(pipe: Pipeline, why: str) -> int:
    return pipe.stats()["skipped"].get(why, 0)


def test_a_push_waiting_for_its_retry_does_not_follow_the_phone_to_its_new_user(pipe, emulator):
    old_user, new_user = new_identity(), new_identity()
    tok = fcm_token()
    pipe.device(POOL, old_user, "GCM", tok)
    emulator.fault(service="fcm", token=tok, status=503, retry_after=3, count=1)
    before = skipped(pipe, "not_owned")
    publish(pipe, [event(POOL, old_user, "notes", 1)])
    wait_for(lambda: requests_to(emulator, tok), what="the refused first try")
    pipe.device(POOL, new_user, "GCM", tok)  # the phone changed user; the new one subscribes too
    wait_for(lambda: skipped(pipe, "not_owned") > before, timeout=20, what="the retry to be skipped")
    assert [r["status"] for r in requests_to(emulator, tok)] == [503]
    publish(pipe, [event(POOL, new_user, "notes", 1)])
    wait_for(lambda: accepted(emulator, tok), what="the new user's own push")
    assert accepted(emulator, tok) == [(new_user, "notes", "1")]


def test_dlq_replay_does_not_follow_the_phone_to_its_new_user(pipe, emulator):
    old_user, new_user = new_identity(), new_identity()
    tok = apns_token()
    pipe.device(POOL, old_user, "APNS", tok)
    emulator.fault(service="apns", token=tok, status=413, reason="PayloadTooLarge")  # permanent
    publish(pipe, [event(POOL, old_user, "notes", 1)])
    [letter] = wait_for(lambda: letters(pipe, identityId=old_user), what="a dead letter")
    emulator.clear_faults()
    pipe.device(POOL, new_user, "APNS", tok)
    before = skipped(pipe, "not_owned")
    assert "1 delivery" in pipe.cli("dlq", "replay", str(letter["id"])).stdout
    wait_for(lambda: skipped(pipe, "not_owned") > before, what="the replayed push to be skipped")
    assert accepted(emulator, tok) == []


def test_a_forged_batch_reaches_no_device_outside_its_pool_identity_and_platform(pipe, emulator):
    owner, stranger = new_identity(), new_identity()
    gcm, apns, foreign = fcm_token(), apns_token(), fcm_token()
    gcm_dev = pipe.device(POOL, owner, "GCM", gcm, datasets=("notes", "photos"))
    apns_dev = pipe.device(POOL, owner, "APNS", apns)
    foreign_dev = pipe.device(POOL2, stranger, "GCM", foreign)
    before = len(pipe.dead_letters())
    pipe.send_raw("pushsync.deliver", {"pool": POOL, "platform": "GCM", "attempt": 1, "items": [
        [foreign_dev, stranger, "notes", 5],      # a device of another pool
        [apns_dev, owner, "notes", 5],            # a device of another platform
        [gcm_dev, stranger, "photos", 5],         # the right device under another identity
        ["not-a-device", owner, "notes", 5],      # junk items: dead-lettered one by one
        [[1, 2], owner, "notes", 5],
        [gcm_dev, owner, "notes", 5],             # the one push that is the batch's
    ]}, "push.fcm")
    for forged in ({"pool": POOL, "platform": "ADM", "items": [[gcm_dev, owner, "notes", 6]]},
                   {"pool": POOL, "platform": "FCM", "items": [[gcm_dev, owner, "notes", 6]]},
                   {"pool": POOL, "platform": "APNS", "items": [[gcm_dev, owner, "notes", 6]], "attempt": 1},
                   {"pool": POOL, "platform": "GCM", "items": [[gcm_dev, owner, "notes", 6]], "attempt": -3},
                   "just a string"):
        pipe.send_raw("pushsync.deliver", forged, "push.apns")
    wait_for(lambda: len(pipe.dead_letters()) - before >= 6, what="the junk to be dead-lettered")
    wait_for(lambda: accepted(emulator, gcm), what="the batch's own push")
    time.sleep(1.5)
    assert accepted(emulator, gcm) == [(owner, "notes", "5")]
    assert requests_to(emulator, apns) == [] and requests_to(emulator, foreign) == []
    reasons = sorted(d["reason"] for d in pipe.dead_letters()[before:])
    assert len(reasons) == 6, reasons
    assert sum("bad delivery item" in r for r in reasons) == 2
    assert sum("platform" in r for r in reasons) == 2 and sum("attempt" in r for r in reasons) == 1


def test_two_datasets_of_one_device_in_one_message_both_arrive_after_a_503(pipe, emulator):
    user = new_identity()
    tok = fcm_token()
    pipe.device(POOL, user, "GCM", tok, datasets=("contacts", "photos"))
    emulator.fault(service="fcm", token=tok, status=503, retry_after=1, count=2)
    publish(pipe, [event(POOL, user, "contacts", 1), event(POOL, user, "photos", 1)])
    wait_for(lambda: len(accepted(emulator, tok)) == 2, timeout=30, what="both datasets' pushes")
    assert sorted(accepted(emulator, tok)) == [(user, "contacts", "1"), (user, "photos", "1")]
    assert letters(pipe, identityId=user) == []


def test_a_retry_never_delivers_an_older_count_after_a_newer_one(pipe, emulator):
    user = new_identity()
    tok = apns_token()
    pipe.device(POOL, user, "APNS", tok)
    emulator.fault(service="apns", token=tok, status=503, retry_after=3, count=1)
    before = skipped(pipe, "stale")
    publish(pipe, [event(POOL, user, "notes", 1)])
    wait_for(lambda: requests_to(emulator, tok), what="count 1 refused")
    publish(pipe, [event(POOL, user, "notes", 2)])
    wait_for(lambda: accepted(emulator, tok), what="count 2")
    wait_for(lambda: skipped(pipe, "stale") > before, timeout=20, what="count 1's retry to be dropped as stale")
    time.sleep(1)
    assert accepted(emulator, tok) == [(user, "notes", "2")]


def test_poison_events_are_dead_lettered_and_their_neighbours_delivered(pipe, emulator):
    user = new_identity()
    tok = fcm_token()
    pipe.device(POOL, user, "GCM", tok)
    before = len(pipe.dead_letters())
    pipe.send_raw("pushsync.ingest", [
        {"identityPoolId": "us-east-1:\x00abc", "identityId": user, "datasetName": "notes", "syncCount": 1},
        {"identityPoolId": POOL, "identityId": user, "datasetName": ["notes"], "syncCount": 1},
        {"identityPoolId": POOL, "identityId": user, "datasetName": "notes", "syncCount": -1},
        {"identityPoolId": POOL, "identityId": user, "datasetName": "notes", "syncCount": 2**64},
        {"identityPoolId": POOL, "identityId": user, "datasetName": "notes", "syncCount": 1,
         "eventId": "\x1b[31mred\x00"},
        "junk",
        event(POOL, user.upper(), "notes", 1),  # upper-case hex: the same identity
    ], "events")
    wait_for(lambda: accepted(emulator, tok), what="the valid event's push")
    new = pipe.dead_letters()[before:]
    assert len(new) == 6 and all(d["reason"].startswith("invalid event") for d in new), new
    assert accepted(emulator, tok) == [(user, "notes", "1")]
    listing = pipe.cli("dlq", "list").stdout
    assert "\x1b" not in listing and "\x00" not in listing
    time.sleep(2)
    assert pipe.stats()["queues"]["events"] == 0 and len(pipe.dead_letters()) == before + 6  # no retry loop


def test_an_event_dead_lettered_for_missing_fcm_credentials_replays_once_they_are_added(pipe, emulator):
    pool = new_pool()
    pipe.create_pool(pool, fcm=False)
    user = new_identity()
    gcm, apns = fcm_token(), apns_token()
    pipe.device(pool, user, "GCM", gcm)
    pipe.device(pool, user, "APNS", apns)
    publish(pipe, [event(pool, user, "notes", 1)])
    wait_for(lambda: accepted(emulator, apns), what="the APNs push")
    [letter] = wait_for(lambda: letters(pipe, pool=pool), what="the FCM dead letter")
    assert "pool has no FCM credentials" in letter["reason"]
    pipe.cli("pool", "create", pool, "--fcm-service-account", pipe.emulator.info["service_account"])
    assert "1 delivery" in pipe.cli("dlq", "replay", str(letter["id"])).stdout
    wait_for(lambda: accepted(emulator, gcm), what="the replayed FCM push")
    assert accepted(emulator, gcm) == [(user, "notes", "1")] and accepted(emulator, apns) == [(user, "notes", "1")]


def test_a_wrong_apns_topic_dead_letters_and_deactivates_no_device(pipe, emulator):
    pool = new_pool()
    pipe.create_pool(pool, fcm=False, apns_topic="com.example.mistyped")
    user = new_identity()
    for _ in range(2):
        pipe.device(pool, user, "APNS", apns_token())
    good_pool_tok = apns_token()
    pipe.device(POOL, user, "APNS", good_pool_tok)
    emulator.fault(service="apns", token=good_pool_tok, status=400, reason="DeviceTokenNotForTopic")
    publish(pipe, [event(pool, user, "notes", 1), event(POOL, user, "notes", 1)])
    dead = wait_for(lambda: (lambda d: d if len(d) == 3 else None)(letters(pipe, identityId=user)),
                    what="three dead letters")
    assert sorted(d["reason"].split(" (")[0] for d in dead) == [
        "permanent error: DeviceTokenNotForTopic", "permanent error: TopicDisallowed",
        "permanent error: TopicDisallowed"]
    assert all("--apns-topic" in d["reason"] for d in dead)
    assert json.loads(pipe.cli("pool", "show", pool).stdout)["devices"] == {"APNS": {"active": 2, "inactive": 0}}
    assert json.loads(pipe.cli("pool", "show", POOL).stdout)["devices"]["APNS"]["inactive"] == 0
    assert pipe.stats()["failed"]["APNS"]["TopicDisallowed"] >= 2


def test_a_malformed_answer_is_that_one_pushs_outcome(pipe, emulator):
    user = new_identity()
    odd_apns, odd_fcm = apns_token(), fcm_token()
    normal = [apns_token(), apns_token(), fcm_token(), fcm_token()]
    for tok in [odd_apns, *normal[:2]]:
        pipe.device(POOL, user, "APNS", tok)
    for tok in [odd_fcm, *normal[2:]]:
        pipe.device(POOL, user, "GCM", tok)
    # a 410 whose timestamp is a string, then an FCM error body that is a JSON list
    emulator.fault(service="apns", token=odd_apns, status=410, body='{"reason": "Unregistered", "timestamp": "soon"}')
    emulator.fault(service="fcm", token=odd_fcm, status=500, body="[]", count=1)
    publish(pipe, [event(POOL, user, "notes", 1)])
    wait_for(lambda: all(accepted(emulator, t) for t in [odd_fcm, *normal]), timeout=30, what="every push")
    time.sleep(1)
    assert all(len(accepted(emulator, t)) == 1 for t in normal)  # sent once: nothing re-sent or dead-lettered
    assert letters(pipe, identityId=user) == []
    assert json.loads(pipe.cli("pool", "show", POOL).stdout)["devices"]["APNS"]["inactive"] == 1
