"""Odd answers from APNs and FCM, over the real protocols (the emulators: HTTP/2 with TLS and
JWT, HTTP v1 with OAuth): each becomes the outcome of its own push, and the pushes sent beside
it in the same call are accepted as usual. Nothing raises out of ``send``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from worker import aio
from worker.senders.apns import MALFORMED, APNsSender
from worker.senders.base import MAX_RETRY_AFTER, Kind, PushRequest
from worker.senders.fcm import FCMSender

from ..e2e.harness import Emulator

LOOP = aio.Loop()  # the sending loop, as a worker's context holds it


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    emu = Emulator(tmp_path_factory.mktemp("answers"))
    yield emu
    emu.stop()


def _request(token: str) -> PushRequest:
    dev = str(uuid.uuid4())
    ident = f"us-east-1:{uuid.uuid4()}"
    data = {"source": "cognito-sync", "identityPoolId": "us-east-1:ab", "identityId": ident, "datasetName": "notes",
            "syncCount": "1"}
    return PushRequest(device_id=dev, token=token, data=data, dataset="notes", identity_id=ident)


def _in_loop(build):
    """Build a sender inside the process's sending loop, as delivery does in production."""
    async def make():
        return build()
    return LOOP.run(make(), timeout=10)


def _send(sender, requests):
    try:
        return LOOP.run(sender.send(requests), timeout=60)
    finally:
        LOOP.run(sender.close(), timeout=10)


# (status, raw body, extra headers) -> (kind, reason, retry_after)
APNS_CASES = [
    (410, '{"reason": "Unregistered", "timestamp": "soon"}', {}, (Kind.TOKEN_INVALID, "Unregistered", None)),
    (410, '{"reason": "Unregistered", "timestamp": 1e300}', {}, (Kind.TOKEN_INVALID, "Unregistered", None)),
    (410, '{"reason": "Unregistered", "timestamp": [1]}', {}, (Kind.TOKEN_INVALID, "Unregistered", None)),
    (400, "not json at all", {}, (Kind.RETRY, MALFORMED, None)),
    (400, "[1, 2]", {}, (Kind.RETRY, MALFORMED, None)),
    (400, '{"reason": 5}', {}, (Kind.RETRY, MALFORMED, None)),
    (400, '{"reason": {"nested": true}}', {}, (Kind.RETRY, MALFORMED, None)),
    (503, '{"reason": "ServiceUnavailable"}', {"retry-after": "whenever"}, (Kind.RETRY, "ServiceUnavailable", None)),
    (429, '{"reason": "TooManyRequests"}', {"retry-after": "99999999999"},
     (Kind.RETRY, "TooManyRequests", MAX_RETRY_AFTER)),
]


def test_odd_apns_answers_are_each_their_own_pushs_outcome(emulator):
    info = emulator.info
    odd = [uuid.uuid4().hex * 2 for _ in APNS_CASES]
    normal = [uuid.uuid4().hex * 2 for _ in range(3)]
    for token, (status, body, headers, _want) in zip(odd, APNS_CASES, strict=True):
        emulator.fault(service="apns", token=token, status=status, body=body, headers=headers)
    sender = _in_loop(lambda: APNsSender(
        key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"], team_id=info["apns_team_id"],
        topic=info["apns_topic"], url=info["apns_production_url"], ca_file=info["ca_file"], connections=1, timeout=5))
    requests = [_request(t) for t in [*normal[:2], *odd, normal[2]]]
    outcomes = _send(sender, requests)
    assert [o.key for o in outcomes] == [r.key for r in requests]
    got = {r.token: o for r, o in zip(requests, outcomes, strict=True)}
    assert all(got[t].kind is Kind.OK for t in normal)
    for token, (_s, _b, _h, (kind, reason, retry_after)) in zip(odd, APNS_CASES, strict=True):
        o = got[token]
        assert (o.kind, o.reason, o.retry_after) == (kind, reason, retry_after), (token, o)
        assert o.invalid_since is None
    # one connection carried everything: no odd answer took it down with the pushes in flight
    assert emulator.stats()["connections"].get("apns-production") == 1


FCM_CASES = [
    (500, "[]", {}, (Kind.RETRY, "HTTP 500")),
    (400, '{"error": "a string"}', {}, (Kind.PERMANENT, "HTTP 400")),
    (400, '{"error": {"details": "x", "message": 5, "status": ["x"]}}', {}, (Kind.PERMANENT, "HTTP 400")),
    (404, '{"error": {"details": [null, 5, {"@type": 5, "errorCode": ["UNREGISTERED"]}]}}', {},
     (Kind.PERMANENT, "HTTP 404")),
    (503, "<html>upstream down</html>", {"Retry-After": "Wed, 99 Foo 2020"},
     (Kind.RETRY, "HTTP 503 with an unreadable body")),
    (200, "not json", {}, (Kind.OK, "")),
]


def test_odd_fcm_answers_are_each_their_own_pushs_outcome(emulator):
    info = emulator.info
    odd = [f"fcm-odd-{uuid.uuid4().hex}" for _ in FCM_CASES]
    normal = [f"fcm-ok-{uuid.uuid4().hex}" for _ in range(3)]
    for token, (status, body, headers, _want) in zip(odd, FCM_CASES, strict=True):
        emulator.fault(service="fcm", token=token, status=status, body=body, headers=headers)
    sender = _in_loop(lambda: FCMSender(json.loads(Path(info["service_account"]).read_text()),
                                        fcm_url=info["fcm_url"], ca_file=info["ca_file"], connections=2, timeout=5))
    requests = [_request(t) for t in [*normal[:2], *odd, normal[2]]]
    outcomes = _send(sender, requests)
    got = {r.token: o for r, o in zip(requests, outcomes, strict=True)}
    assert all(got[t].kind is Kind.OK for t in normal)
    for token, (_s, _b, _h, (kind, reason)) in zip(odd, FCM_CASES, strict=True):
        assert (got[token].kind, got[token].reason if kind is not Kind.OK else "") == (kind, reason), got[token]
        assert got[token].retry_after is None


def test_an_apns_connection_keeps_no_record_of_answered_pushes(emulator):
    """aioapns keeps each stream's notification id until an error body comes; after a 200 it kept
    it for the connection's life, one entry per push: a pool process grew about 4 MiB a minute
    under load. Ours forgets a stream once it has ended, whatever the answer."""
    info = emulator.info
    bad = uuid.uuid4().hex * 2
    emulator.fault(service="apns", token=bad, status=400, body='{"reason": "BadDeviceToken"}')
    sender = _in_loop(lambda: APNsSender(
        key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"], team_id=info["apns_team_id"],
        topic=info["apns_topic"], url=info["apns_production_url"], ca_file=info["ca_file"], connections=1, timeout=5))
    try:
        outcomes = LOOP.run(sender.send([_request(uuid.uuid4().hex * 2) for _ in range(300)] + [_request(bad)]),
                           timeout=60)
        assert sum(o.kind is Kind.OK for o in outcomes) == 300 and outcomes[-1].kind is Kind.TOKEN_INVALID
        [connection] = sender._client.pool.connections
        assert connection.request_streams == {} and connection.request_statuses == {}
    finally:
        LOOP.run(sender.close(), timeout=10)
