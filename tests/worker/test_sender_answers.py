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

LOOP = aio.Loop()  # the sending loop, as a worker's context holds it


def apns_token() -> str:
    """A random device token (64 hex digits) that the emulator does not take for a dead one: it
    answers any token starting "dead" as Unregistered, which uuid4's hex does once in 65,536."""
    return "a" + uuid.uuid4().hex[1:] + uuid.uuid4().hex


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


TRANSPORTS = ("aioapns", "curl")  # PUSHSYNC_APNS_TRANSPORT: every APNs test here runs on both
FCM_TRANSPORTS = ("aiohttp", "curl")  # PUSHSYNC_FCM_TRANSPORT: and every FCM test


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_odd_apns_answers_are_each_their_own_pushs_outcome(emulator, transport):
    info = emulator.info
    emulator.reset()  # the connection count below is this test's
    odd = [apns_token() for _ in APNS_CASES]
    normal = [apns_token() for _ in range(3)]
    for token, (status, body, headers, _want) in zip(odd, APNS_CASES, strict=True):
        emulator.fault(service="apns", token=token, status=status, body=body, headers=headers)
    sender = _in_loop(lambda: APNsSender(
        key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"], team_id=info["apns_team_id"],
        topic=info["apns_topic"], url=info["apns_production_url"], ca_file=info["ca_file"], connections=1, timeout=5,
        transport=transport))
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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_apns_key_id_or_team_id_is_a_permanent_error_of_the_pool_not_a_retry(emulator, transport):
    """APNs refuses the provider token, the sender signs a fresh one and tries once more; refused
    again, the push is a permanent failure with the reason (its dead letter carries the hint),
    not eight retries. A refusal the fresh token mends (an expired one) is still just a retry."""
    info = emulator.info

    def sender(**wrong):
        opts = {"key": Path(info["apns_key"]).read_text(), "key_id": info["apns_key_id"],
                "team_id": info["apns_team_id"], **wrong}
        return _in_loop(lambda: APNsSender(**opts, topic=info["apns_topic"], url=info["apns_production_url"],
                                           ca_file=info["ca_file"], connections=1, timeout=5, transport=transport))

    for wrong in ({"key_id": "WRONGKEY01"}, {"team_id": "WRONGTEAM1"}):
        [o] = _send(sender(**wrong), [_request(apns_token())])
        assert (o.kind, o.reason, o.status) == (Kind.PERMANENT, "InvalidProviderToken", 403), wrong
    # one refusal, then the fresh token is accepted: the push goes through on the second try
    token = apns_token()
    emulator.fault(service="apns", token=token, status=403, reason="ExpiredProviderToken", count=1)
    [o] = _send(sender(), [_request(token)])
    assert o.kind is Kind.OK


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


@pytest.mark.parametrize("transport", FCM_TRANSPORTS)
def test_odd_fcm_answers_are_each_their_own_pushs_outcome(emulator, transport):
    info = emulator.info
    odd = [f"fcm-odd-{uuid.uuid4().hex}" for _ in FCM_CASES]
    normal = [f"fcm-ok-{uuid.uuid4().hex}" for _ in range(3)]
    for token, (status, body, headers, _want) in zip(odd, FCM_CASES, strict=True):
        emulator.fault(service="fcm", token=token, status=status, body=body, headers=headers)
    sender = _in_loop(lambda: FCMSender(json.loads(Path(info["service_account"]).read_text()),
                                        fcm_url=info["fcm_url"], ca_file=info["ca_file"], connections=2, timeout=5,
                                        transport=transport))
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
    bad = apns_token()
    emulator.fault(service="apns", token=bad, status=400, body='{"reason": "BadDeviceToken"}')
    sender = _in_loop(lambda: APNsSender(
        key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"], team_id=info["apns_team_id"],
        topic=info["apns_topic"], url=info["apns_production_url"], ca_file=info["ca_file"], connections=1, timeout=5,
        transport="aioapns"))
    try:
        outcomes = LOOP.run(sender.send([_request(apns_token()) for _ in range(300)] + [_request(bad)]),
                           timeout=60)
        assert sum(o.kind is Kind.OK for o in outcomes) == 300 and outcomes[-1].kind is Kind.TOKEN_INVALID
        [connection] = sender._client.pool.connections
        assert connection.request_streams == {} and connection.request_statuses == {}
    finally:
        LOOP.run(sender.close(), timeout=10)


@pytest.mark.parametrize("transport", FCM_TRANSPORTS)
def test_a_stalled_oauth_endpoint_costs_a_batch_its_send_timeout_and_the_next_nothing(emulator, transport):
    """FCM's token endpoint accepts the connection and does not answer (google-auth alone would
    wait 120 s): the batch's pushes come back as retries within the sender's timeout, a batch
    right after it does not wait again, and once the endpoint answers the pushes go through."""
    import time

    from worker.senders import fcm

    info = emulator.info
    emulator.fault(service="oauth", latency=60)
    sender = _in_loop(lambda: FCMSender(json.loads(Path(info["service_account"]).read_text()),
                                        fcm_url=info["fcm_url"], ca_file=info["ca_file"], connections=2, timeout=1,
                                        transport=transport))
    try:
        started = time.monotonic()
        first = LOOP.run(sender.send([_request(f"fcm-{uuid.uuid4().hex}") for _ in range(3)]), timeout=30)
        took = time.monotonic() - started
        assert all(o.kind is Kind.RETRY and o.reason.startswith("oauth:") for o in first), first
        assert took < 4, f"the stalled endpoint held the batch {took:.1f} s"
        started = time.monotonic()
        second = LOOP.run(sender.send([_request(f"fcm-{uuid.uuid4().hex}")]), timeout=30)
        assert second[0].kind is Kind.RETRY and time.monotonic() - started < 0.5  # failed fast
        emulator.clear_faults()
        time.sleep(fcm.AUTH_FAIL_FAST)
        [ok] = LOOP.run(sender.send([_request(f"fcm-{uuid.uuid4().hex}")]), timeout=30)
        assert ok.kind is Kind.OK, ok
    finally:
        emulator.clear_faults()
        LOOP.run(sender.close(), timeout=10)


def test_a_send_past_its_bound_is_cancelled_and_transient():
    """The worker's wait on its sending loop: past the bound the coroutine is cancelled (it does
    not go on holding connections) and the error is one the tasks retry, not a dead letter."""
    import asyncio

    from worker.errors import TRANSIENT, Stalled

    cancelled = []

    async def hangs():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(Stalled) as err:
        LOOP.run(hangs(), timeout=0.2)
    assert isinstance(err.value, TRANSIENT)
    LOOP.run(asyncio.sleep(0.05), timeout=5)
    assert cancelled == [True]


def _noting_close(sender, closed: list, version):
    """The sender, noting in ``closed`` when its close runs (not when it is scheduled)."""
    real_close = sender.close

    async def close():
        closed.append(version)
        await real_close()
    sender.close = close
    return sender


def test_batches_that_find_a_pools_credentials_changed_build_one_sender_and_lose_no_push(emulator, monkeypatch):
    """Eight batches of one pool meet new credentials at once (as eight inline threads do): one new
    sender is built, every push is accepted (none comes back as a retry because a sender was
    closed under it), and the old sender is closed after the grace period, not leaked."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from emulators.options import pushsync_env
    from pushsync.settings import load_settings
    from store.repo import PoolCredentials
    from worker.senders import cache

    info = emulator.info
    settings = load_settings({**pushsync_env(info), "PUSHSYNC_DATABASE_URL": "sqlite://"})
    account = json.loads(Path(info["service_account"]).read_text())
    v1 = datetime(2026, 1, 1, tzinfo=UTC)

    def creds(at):
        return PoolCredentials("us-east-1:ab", at, account, account["project_id"], None, None, None, None)

    built, closed = [], []
    real_build = cache._build_sender

    def counting(c, platform, s):
        built.append(c.updated_at)
        return _noting_close(real_build(c, platform, s), closed, c.updated_at)

    monkeypatch.setattr(cache, "_build_sender", counting)
    monkeypatch.setattr(cache, "CLOSE_GRACE", 0.5)
    senders = cache.Senders(settings)
    batch = lambda: [_request(f"fcm-{uuid.uuid4().hex}") for _ in range(20)]  # noqa: E731
    assert all(o.kind is Kind.OK for o in LOOP.run(senders.send(creds(v1), "GCM", batch()), timeout=30))

    async def eight_at_once():
        v2 = creds(v1 + timedelta(minutes=1))
        return await asyncio.gather(*(senders.send(v2, "GCM", batch()) for _ in range(8)))

    try:
        results = LOOP.run(eight_at_once(), timeout=60)
        assert built == [v1, v1 + timedelta(minutes=1)]
        assert all(o.kind is Kind.OK for outcomes in results for o in outcomes), results
        assert closed == []  # the old one still serves what it has in flight
        LOOP.run(asyncio.sleep(1.0), timeout=5)
        assert closed == [v1]
    finally:
        LOOP.run(senders.close(), timeout=10)
