"""Events over HTTP reach devices: a real worker behind the API, the emulators at the end. A batch
with invalid items loses none of its valid ones; Redis away makes the request wait, then 503."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import redis

from tests.conftest import POOL, POOL2
from tests.e2e.harness import RedisServer, new_identity, wait_for

from .harness import ApiServer, error_type, paths


@pytest.fixture(scope="module")
def worker(pipe):
    pipe.start_worker("-c", "2")
    yield
    pipe.stop_workers()


def _device_over_http(api, cred, identity, token, datasets=("notes",)):
    r = api.call("POST", paths(POOL, identity)["register"], {"Platform": "GCM", "Token": token}, cred)
    assert r.status_code == 200, r.text
    dev = r.json()["DeviceId"]
    for ds in datasets:
        assert api.call("POST", paths(POOL, identity, dev, ds)["subscribe"], cred=cred).status_code == 200
    return dev


def test_register_and_publish_over_http_and_the_push_arrives(api, keys, worker, emulator):
    ident = new_identity()
    _device_over_http(api, keys["device"], ident, f"fcm-e2e-{ident[-8:]}", ("contacts",))
    r = api.call("POST", paths(POOL, ident)["events"],
                 {"identityId": ident, "datasetName": "contacts", "syncCount": 7}, keys["producer"])
    assert r.status_code == 202 and r.json() == {"accepted": 1, "rejected": []}
    pushes = wait_for(lambda: emulator.pushes_for(ident), 60, what="the push")
    assert pushes[0]["token"] == f"fcm-e2e-{ident[-8:]}" and pushes[0]["status"] == 200
    assert pushes[0]["body"]["data"] == {"source": "cognito-sync", "identityPoolId": POOL, "identityId": ident,
                                         "datasetName": "contacts", "syncCount": "7"}


def test_a_batch_with_invalid_items_reports_them_by_index_and_delivers_the_rest(api, keys, worker, emulator):
    idents = [new_identity() for _ in range(3)]
    for i in idents:
        _device_over_http(api, keys["device"], i, f"fcm-batch-{i[-8:]}")
    batch = [
        {"identityId": idents[0], "datasetName": "notes", "syncCount": 3},
        {"identityId": idents[1], "datasetName": "bad name!", "syncCount": 3},
        {"identityPoolId": POOL, "identityId": idents[1], "datasetName": "notes", "syncCount": 3},
        "not an event",
        {"identityPoolId": POOL2, "identityId": idents[2], "datasetName": "notes", "syncCount": 3},
        {"identityId": idents[2], "datasetName": "notes", "syncCount": "3"},
        {"identityId": idents[2], "datasetName": "notes", "syncCount": 3, "eventId": "e-1"},
    ]
    r = api.call("POST", paths(POOL, idents[0])["events"], batch, keys["producer"])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 3
    assert [x["index"] for x in body["rejected"]] == [1, 3, 4, 5]
    messages = [x["message"] for x in body["rejected"]]
    assert "datasetName" in messages[0] and "identityPoolId" in messages[2] and "syncCount" in messages[3]
    for i in idents:
        wait_for(lambda i=i: emulator.pushes_for(i), 60, what=f"the push to {i}")
        assert [p["body"]["data"]["syncCount"] for p in emulator.pushes_for(i)] == ["3"]


def test_whole_requests_that_are_not_events_are_invalid_parameter(api, keys):
    p = paths(POOL, new_identity())["events"]
    too_many = [{"identityId": new_identity(), "datasetName": "n", "syncCount": 1}] * 501
    for body in (too_many, "text", 5, {"identityId": "x", "datasetName": "n", "syncCount": 1},
                 {"identityId": new_identity(), "datasetName": "n", "syncCount": 1, "extra": 1}):
        r = api.call("POST", p, body, keys["producer"])
        assert r.status_code == 400 and error_type(r) == "InvalidParameterException", (str(body)[:60], r.text)
    empty = api.call("POST", p, [], keys["producer"])
    assert empty.status_code == 202 and empty.json() == {"accepted": 0, "rejected": []}


def _sync_counts(messages: list[bytes]) -> list[int]:
    """The sync counts in kombu's messages on a Redis list (JSON envelope, base64 JSON body)."""
    out = []
    for raw in messages:
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        out += [e["syncCount"] for e in args[0]]
    return out


@pytest.fixture
def own_redis_api(tmp_path, pipe):
    server = RedisServer(tmp_path / "redis")
    env = {**pipe.env, "PUSHSYNC_BROKER_URL": server.url, "PUSHSYNC_API_PUBLISH_WAIT": "3"}
    api = ApiServer(tmp_path, env)
    yield server, api
    api.stop()
    server.stop()


def test_redis_away_makes_the_request_wait_then_503_and_a_short_outage_loses_nothing(own_redis_api, keys):
    server, api = own_redis_api
    ident = new_identity()
    event = {"identityId": ident, "datasetName": "notes", "syncCount": 1}
    p = paths(POOL, ident)["events"]
    assert api.call("POST", p, event, keys["producer"]).status_code == 202
    server.kill()
    started = time.monotonic()
    r = api.call("POST", p, {**event, "syncCount": 2}, keys["producer"])
    waited = time.monotonic() - started
    assert r.status_code == 503 and error_type(r) == "ServiceUnavailableException", r.text
    assert r.headers["Retry-After"] == "5"
    assert 3 <= waited < 20, waited
    ready = api.call("GET", "/readyz")
    assert ready.status_code == 503 and "redis unreachable" in ready.json()["message"]
    # Redis back within the wait: the request waits for it and the event is on the queue
    threading.Timer(1.0, server.start).start()
    r = api.call("POST", p, {**event, "syncCount": 3}, keys["producer"])
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    queued = redis.Redis.from_url(server.url).lrange("events", 0, -1)
    assert sorted(_sync_counts(queued)) == [1, 3]  # the first (kept by AOF) and the last; not the refused one
    assert api.call("GET", "/readyz").status_code == 200
