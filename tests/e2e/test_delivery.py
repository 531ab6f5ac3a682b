"""Change events through Redis, a real `pushsync worker` and the emulators, end to end.

Each test uses identities of its own, so one worker serves the whole module; what each
emulator actually received (payload, headers, host) is what is asserted.
"""

from __future__ import annotations

import time

import pytest
from celery import Celery
from sqlalchemy import select

from store.db import engine_for, session_scope
from store.models import Device

from ..conftest import POOL, POOL2
from .harness import Pipeline, new_identity, wait_for

UNKNOWN_POOL = "ap-south-1:99999999-0000-4000-8000-000000000000"
NOCREDS_POOL = "ap-south-1:88888888-0000-4000-8000-000000000000"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, emulator):
    directory = tmp_path_factory.mktemp("pipeline")
    p = Pipeline(directory, emulator, f"sqlite:///{directory}/store.db", broker_db=13)
    p.create_pool(POOL)
    p.create_pool(POOL2)
    p.cli("pool", "create", NOCREDS_POOL)
    p.start_worker("-c", "2")
    yield p
    p.stop_workers()


def _counts(pushes, token):
    return [int(r["data"]["syncCount"]) for r in pushes if r["token"] == token and r["status"] == 200]


def test_each_platform_reaches_its_endpoint_with_the_contract_payload(pipe, emulator):
    _each_platform(pipe, emulator)


def test_the_reference_transports_send_the_same_requests(tmp_path, emulator):
    """PUSHSYNC_APNS_TRANSPORT=aioapns and PUSHSYNC_FCM_TRANSPORT=aiohttp through a real worker: the
    same hosts, headers and payloads as the default (libcurl's); FCM's over HTTP/1.1."""
    ref = Pipeline(tmp_path, emulator, f"sqlite:///{tmp_path}/store.db", broker_db=14,
                   extra_env={"PUSHSYNC_APNS_TRANSPORT": "aioapns", "PUSHSYNC_FCM_TRANSPORT": "aiohttp"})
    try:
        ref.create_pool(POOL)
        ref.start_worker("-c", "1")
        _each_platform(ref, emulator, fcm_http="1.1")
    finally:
        ref.stop_workers()


def _each_platform(pipe: Pipeline, emulator, fcm_http: str = "2") -> None:
    ident = new_identity()
    pipe.device(POOL, ident, "GCM", "fcm-token-aaa", datasets=("contacts",))
    pipe.device(POOL, ident, "APNS", "AAAA0001", datasets=("contacts",))
    pipe.device(POOL, ident, "APNS_SANDBOX", "bbbb0002", datasets=("contacts",))
    pipe.cli("publish", POOL, ident, "contacts", "42")
    pushes = wait_for(lambda: (lambda p: p if len(p) >= 3 else None)(emulator.pushes_for(ident)), what="3 pushes")
    time.sleep(0.5)
    pushes = emulator.pushes_for(ident)
    assert len(pushes) == 3
    five = {"source": "cognito-sync", "identityPoolId": POOL, "identityId": ident, "datasetName": "contacts",
            "syncCount": "42"}
    by_service = {(r["service"], r["host"]): r for r in pushes}
    fcm = by_service[("fcm", None)]
    assert fcm["status"] == 200 and fcm["token"] == "fcm-token-aaa" and fcm["http"] == fcm_http
    assert fcm["body"]["data"] == five
    assert fcm["body"]["android"]["collapse_key"] == "contacts"
    assert "notification" not in fcm["body"]
    assert fcm["project"] == "pushsync-demo"
    fcm_port = emulator.info["fcm_url"].rsplit(":", 1)[1]
    assert fcm["authority"].endswith(":" + fcm_port)

    prod = by_service[("apns", "production")]
    sandbox = by_service[("apns", "sandbox")]
    assert prod["token"] == "aaaa0001" and sandbox["token"] == "bbbb0002"  # stored lower-case
    for r in (prod, sandbox):
        assert r["status"] == 200
        assert r["body"] == {"aps": {"content-available": 1}, "data": five}
        h = r["headers"]
        assert h["apns-push-type"] == "background" and h["apns-priority"] == "5"
        assert h["apns-topic"] == emulator.info["apns_topic"]
        assert h["apns-collapse-id"] == "contacts"
        assert int(h["apns-expiration"]) > time.time()
        assert h[":path"] == f"/3/device/{r['token']}"


def test_two_identities_and_two_pools_never_see_each_others_pushes(pipe, emulator):
    a, b = new_identity(), new_identity()
    pipe.device(POOL, a, "GCM", f"fcm-{a[-12:]}")
    pipe.device(POOL, b, "GCM", f"fcm-{b[-12:]}")
    pipe.device(POOL2, a, "GCM", f"fcm-{a[-12:]}")  # same identity id and token, other pool
    pipe.device(POOL2, a, "APNS", "cccc" + a[-12:].replace("-", "0"))
    pipe.cli("publish", POOL, a, "notes", "1")
    pipe.cli("publish", POOL2, b, "notes", "1")  # b has no device in POOL2: nobody to push
    wait_for(lambda: emulator.pushes_for(a), what="push for a")
    time.sleep(1.0)
    got_a = emulator.pushes_for(a)
    assert len(got_a) == 1
    assert got_a[0]["data"]["identityPoolId"] == POOL and got_a[0]["token"] == f"fcm-{a[-12:]}"
    assert emulator.pushes_for(b) == []


def test_origin_device_and_unsubscribed_devices_are_skipped(pipe, emulator):
    ident = new_identity()
    origin = pipe.device(POOL, ident, "GCM", f"origin-{ident[-8:]}")
    pipe.device(POOL, ident, "GCM", f"other-{ident[-8:]}")
    pipe.device(POOL, ident, "APNS", "dddd1111" + ident[-4:], datasets=("photos",))  # not subscribed to notes
    pipe.device(POOL, ident, "APNS_SANDBOX", "eeee2222" + ident[-4:], datasets=())
    pipe.cli("publish", POOL, ident, "notes", "3", "--origin-device", origin)
    wait_for(lambda: emulator.pushes_for(ident), what="push")
    time.sleep(1.0)
    assert [r["token"] for r in emulator.pushes_for(ident)] == [f"other-{ident[-8:]}"]


def test_stale_and_duplicate_sync_counts_push_nothing(pipe, emulator):
    ident = new_identity()
    tok = f"fcm-stale-{ident[-8:]}"
    pipe.device(POOL, ident, "GCM", tok)
    pipe.cli("publish", POOL, ident, "notes", "5")
    wait_for(lambda: _counts(emulator.pushes_for(ident), tok), what="first push")
    for n in ("5", "3", "0", "5"):
        pipe.cli("publish", POOL, ident, "notes", n)
    pipe.cli("publish", POOL, ident, "notes", "6")  # a newer count, sent last, marks the end
    wait_for(lambda: 6 in _counts(emulator.pushes_for(ident), tok), what="count 6")
    time.sleep(0.5)
    assert _counts(emulator.pushes_for(ident), tok) == [5, 6]


def test_dead_token_is_tried_once_deactivated_and_never_tried_again(pipe, emulator):
    ident = new_identity()
    dead_fcm = pipe.device(POOL, ident, "GCM", f"dead-fcm-{ident[-8:]}")
    dead_apns = pipe.device(POOL, ident, "APNS", "dead" + ident[-12:].replace("-", "0"))
    pipe.device(POOL, ident, "GCM", f"live-{ident[-8:]}")
    pipe.cli("publish", POOL, ident, "notes", "1")
    wait_for(lambda: len(emulator.pushes_for(ident)) >= 3, what="three attempts")
    pipe.cli("publish", POOL, ident, "notes", "2")
    wait_for(lambda: 2 in _counts(emulator.pushes_for(ident), f"live-{ident[-8:]}"), what="second push")
    time.sleep(1.0)
    pushes = emulator.pushes_for(ident)
    dead = [r for r in pushes if r["token"].startswith("dead")]
    assert sorted((r["service"], r["status"], r["reason"]) for r in dead) == [
        ("apns", 410, "Unregistered"), ("fcm", 404, "UNREGISTERED")]
    with session_scope(engine_for(pipe.db_url)) as s:
        rows = dict(s.execute(select(Device.id, Device.active).where(Device.id.in_([dead_fcm, dead_apns]))).all())
        reasons = set(s.execute(select(Device.deactivated_reason).where(Device.id.in_([dead_fcm, dead_apns])))
                      .scalars())
    assert rows == {dead_fcm: False, dead_apns: False}
    assert reasons == {"UNREGISTERED", "Unregistered"}


def test_event_for_an_unknown_pool_is_dead_lettered_with_its_reason(pipe, emulator):
    ident = new_identity()
    refused = pipe.cli("publish", UNKNOWN_POOL, ident, "notes", "9", check=False)
    assert refused.returncode == 1 and f"unknown pool {UNKNOWN_POOL}" in refused.stderr
    pipe.cli("publish", UNKNOWN_POOL, ident, "notes", "9", "--no-check")  # as a producer without the store
    letters = wait_for(lambda: [d for d in pipe.dead_letters() if d["payload"].get("identityId") == ident],
                       what="dead letter")
    assert letters[0]["reason"] == f"unknown pool: {UNKNOWN_POOL}" and letters[0]["kind"] == "event"
    listing = pipe.cli("dlq", "list").stdout
    assert f"unknown pool: {UNKNOWN_POOL}" in listing and ident in listing


def test_event_for_a_pool_without_credentials_is_dead_lettered(pipe, emulator):
    ident = new_identity()
    pipe.device(NOCREDS_POOL, ident, "GCM", "fcm-nocreds")
    pipe.cli("publish", NOCREDS_POOL, ident, "notes", "1")
    letters = wait_for(lambda: [d for d in pipe.dead_letters() if d["payload"].get("identityId") == ident],
                       what="dead letter")
    assert letters[0]["reason"] == "no credentials: the pool has no push credentials"
    assert emulator.pushes_for(ident) == []


def test_raw_celery_client_message_shape_and_invalid_events(pipe, emulator):
    """What a producer in another language sends: task pushsync.ingest, args [[event, ...]],
    queue "events", JSON. Invalid events in the batch are dead-lettered; the rest go on."""
    ident = new_identity()
    tok = f"fcm-raw-{ident[-8:]}"
    pipe.device(POOL, ident, "GCM", tok)
    client = Celery(broker=pipe.broker_url)
    client.conf.task_serializer = "json"
    bad = {"identityPoolId": POOL, "identityId": ident, "datasetName": "bad/name", "syncCount": 1}
    good = {"identityPoolId": POOL, "identityId": ident, "datasetName": "notes", "syncCount": 11}
    client.send_task("pushsync.ingest", args=[[bad, good, "not an object"]], queue="events")
    wait_for(lambda: _counts(emulator.pushes_for(ident), tok) == [11], what="good event pushed")
    letters = wait_for(lambda: [d for d in pipe.dead_letters() if d["reason"].startswith("invalid event")
                                and (d["payload"].get("identityId") == ident or d["payload"] == {
                                    "event": "not an object"})], what="dead letters")
    reasons = sorted(d["reason"] for d in letters)
    assert any("datasetName" in r for r in reasons)
    assert any("must be a JSON object" in r for r in reasons)


def test_python_client_publish_many_reaches_every_device(pipe, emulator, monkeypatch):
    from pushsync import client, settings

    monkeypatch.setenv("PUSHSYNC_BROKER_URL", pipe.broker_url)
    settings.get_settings.cache_clear()
    import worker.app

    monkeypatch.setattr(worker.app, "app", worker.app.make_app())
    ident = new_identity()
    toks = [f"fcm-many-{i}-{ident[-6:]}" for i in range(3)]
    for t in toks:
        pipe.device(POOL, ident, "GCM", t, datasets=("a", "b"))
    events = [{"identityPoolId": POOL, "identityId": ident, "datasetName": ds, "syncCount": n}
              for n in range(1, 6) for ds in ("a", "b")]
    assert client.publish_many(events, chunk_size=3) == 10
    with pytest.raises(ValueError, match="syncCount"):
        client.publish_many([events[0], {**events[0], "syncCount": -1}])
    # every device ends with the newest count of each dataset
    def final():
        got = emulator.pushes_for(ident)
        return all(any(r["token"] == t and r["data"]["datasetName"] == ds and r["data"]["syncCount"] == "5"
                       for r in got) for t in toks for ds in ("a", "b"))
    wait_for(final, what="newest counts")
    for r in emulator.pushes_for(ident):
        assert r["status"] == 200
    settings.get_settings.cache_clear()
