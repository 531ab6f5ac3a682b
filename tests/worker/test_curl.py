"""The transports over the real protocols (the emulators: HTTP/2 with TLS and JWT, FCM's HTTP v1), for what
a transport must do beyond answers: one connection per (credentials, host), the server's limit on
concurrent streams, GOAWAY, a per-request timeout, and a connection that stops answering. Each runs
on both transports (PUSHSYNC_APNS_TRANSPORT); where aioapns, the reference, does less, the test says
what it does instead, so a change in either shows up here."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from worker.senders.apns import APNsSender
from worker.senders.base import Kind
from worker.senders.fcm import FCMSender

from ..e2e.proxy import CuttableProxy
from .test_sender_answers import FCM_TRANSPORTS, LOOP, TRANSPORTS, _request, apns_token

HOST = "apns-production"


@pytest.fixture
def fresh(emulator):
    emulator.reset()
    yield emulator
    emulator.reset()


def _sender(emulator, transport: str, url: str | None = None, timeout: float = 5, connections: int = 1):
    info = emulator.info

    async def make():
        return APNsSender(key=Path(info["apns_key"]).read_text(), key_id=info["apns_key_id"],
                          team_id=info["apns_team_id"], topic=info["apns_topic"],
                          url=url or info["apns_production_url"], ca_file=info["ca_file"], connections=connections,
                          timeout=timeout, transport=transport)
    return LOOP.run(make(), timeout=10)


def _tokens(n: int) -> list[str]:
    return [apns_token() for _ in range(n)]


def _accepted(emulator) -> Counter:
    return Counter(r["token"] for r in emulator.requests() if r["status"] == 200)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_many_pushes_at_once_share_one_connection(fresh, transport):
    """90 pushes at once, fewer than the streams the server allows on one connection (100)."""
    sender = _sender(fresh, transport, connections=4)
    try:
        outcomes = LOOP.run(sender.send([_request(t) for t in _tokens(90)]), timeout=60)
        assert all(o.kind is Kind.OK for o in outcomes), (Counter(o.reason for o in outcomes), fresh.stats())
        if transport == "curl":  # multiplexed: a second connection only when the first one's streams are full
            assert fresh.stats()["connections"][HOST] == 1
        else:  # aioapns opens up to its max_connections when pushes queue up
            assert 1 <= fresh.stats()["connections"][HOST] <= 4
    finally:
        LOOP.run(sender.close(), timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_servers_limit_on_concurrent_streams_is_honoured(fresh, transport):
    """APNs lowers SETTINGS_MAX_CONCURRENT_STREAMS, to 1 at times, and refuses a stream past it
    (REFUSED_STREAM: not processed). libcurl's transport sends a fresh connection's first push alone
    (its answer comes after the server's SETTINGS), then keeps to the limit: every push accepted,
    none refused. aioapns sends a burst before it has read the setting; when a stream of it is
    refused (about one run in six here) the pushes behind it wait out their timeout and come back
    as retries, which the batch path sends again: slower, nothing lost."""
    fresh._call("POST", "/apns/settings", {"max_concurrent_streams": 1})
    sender = _sender(fresh, transport, timeout=2)
    try:
        outcomes = LOOP.run(sender.send([_request(t) for t in _tokens(40)]), timeout=60)
        refused = fresh.stats()["apns_refused_streams"]
        assert refused.get("after settings", 0) == 0, refused
        assert fresh.stats()["connections"][HOST] == 1
        assert max(_accepted(fresh).values()) == 1
        if transport == "curl":
            assert [o.kind for o in outcomes] == [Kind.OK] * 40, (Counter(o.reason for o in outcomes), refused)
            assert refused == {}
        else:
            assert all(o.kind in (Kind.OK, Kind.RETRY) for o in outcomes), Counter(o.reason for o in outcomes)
    finally:
        LOOP.run(sender.close(), timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_goaway_sends_the_unprocessed_pushes_again_on_a_new_connection(fresh, transport):
    """The server answers one push of a batch with GOAWAY (its last stream id the one before):
    that push and every later one on the connection went unprocessed. libcurl's transport sends
    them again on a new connection, once, as successes; aioapns makes them retries (the batch
    path sends them later). Either way no push is accepted twice."""
    tokens = _tokens(30)
    fresh.fault(service="apns", token=tokens[10], goaway=True, count=1)
    sender = _sender(fresh, transport)
    try:
        outcomes = LOOP.run(sender.send([_request(t) for t in tokens]), timeout=60)
        accepted = _accepted(fresh)
        assert max(accepted.values()) == 1  # nothing processed twice
        ok = {t for t, o in zip(tokens, outcomes, strict=True) if o.kind is Kind.OK}
        assert ok == set(accepted)  # an OK is an accepted push, a retry one that was not
        if transport == "curl":
            assert ok == set(tokens), [o.reason for o in outcomes if o.kind is not Kind.OK]
            assert fresh.stats()["connections"][HOST] == 2
        else:
            assert all(o.kind in (Kind.OK, Kind.RETRY) for o in outcomes)
    finally:
        LOOP.run(sender.close(), timeout=10)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_push_past_its_timeout_is_a_retry_and_the_others_go_on(fresh, transport):
    slow, others = _tokens(1)[0], _tokens(5)
    fresh.fault(service="apns", token=slow, stall=True)
    sender = _sender(fresh, transport, timeout=1)
    try:
        started = time.monotonic()
        outcomes = LOOP.run(sender.send([_request(t) for t in [slow, *others]]), timeout=30)
        assert time.monotonic() - started < 3
        assert (outcomes[0].kind, outcomes[0].reason) == (Kind.RETRY, "timeout")
        assert all(o.kind is Kind.OK for o in outcomes[1:])
    finally:
        fresh.clear_faults()
        LOOP.run(sender.close(), timeout=10)


def test_a_connection_that_stops_answering_is_left_for_a_new_one(fresh):
    """Behind a proxy that blackholes it for good (an address that moved: the old connection
    never answers again, new ones do): the first push times out, the next one goes through on a
    new connection instead of timing out on the dead one. (aioapns keeps the dead connection: it
    is not run here; its pushes time out until the pool's connection breaks.)"""
    port = int(fresh.info["apns_production_url"].rsplit(":", 1)[1])
    proxy = CuttableProxy(port)
    sender = _sender(fresh, "curl", url=f"https://127.0.0.1:{proxy.port}", timeout=1)
    try:
        [first] = LOOP.run(sender.send([_request(_tokens(1)[0])]), timeout=30)
        assert first.kind is Kind.OK
        proxy.blackhole(True)
        [lost] = LOOP.run(sender.send([_request(_tokens(1)[0])]), timeout=30)
        assert (lost.kind, lost.reason) == (Kind.RETRY, "timeout")
        proxy.blackhole(False, forget=True)
        [after] = LOOP.run(sender.send([_request(_tokens(1)[0])]), timeout=30)
        assert after.kind is Kind.OK, after
        assert sender._curl.retirements == 1
        assert fresh.stats()["connections"][HOST] == 2
    finally:
        LOOP.run(sender.close(), timeout=10)
        proxy.close()



def test_an_answer_body_is_read_up_to_its_bound_and_no_further():
    """The write callback keeps at most MAX_BODY bytes of an answer; the chunk that would pass it
    is refused (0: libcurl ends the transfer with CURLE_WRITE_ERROR, which the sender makes a
    retry). (The emulator cannot send a body past HTTP/2's flow-control window to test it whole.)"""
    from io import BytesIO

    from worker.senders.curl import MAX_BODY, _bounded

    out = BytesIO()
    write = _bounded(out)
    assert write(b"x" * (MAX_BODY - 10)) is None and write(b"y" * 10) is None  # exactly the bound: kept
    assert write(b"z") == 0  # one byte past it: refused
    assert out.getvalue() == b"x" * (MAX_BODY - 10) + b"y" * 10


# FCM HTTP v1 over both transports (PUSHSYNC_FCM_TRANSPORT): the emulator offers h2 and http/1.1 by
# ALPN, as Google's endpoint does; aiohttp speaks HTTP/1.1, libcurl HTTP/2.


def _fcm_sender(emulator, transport: str, timeout: float = 5, connections: int = 4):
    info = emulator.info

    async def make():
        return FCMSender(json.loads(Path(info["service_account"]).read_text()), fcm_url=info["fcm_url"],
                         ca_file=info["ca_file"], connections=connections, timeout=timeout, transport=transport)
    return LOOP.run(make(), timeout=10)


def _fcm_tokens(n: int) -> list[str]:
    return [f"fcm-{uuid.uuid4().hex}" for _ in range(n)]


@pytest.mark.parametrize("transport", FCM_TRANSPORTS)
def test_fcm_messages_at_once_share_one_http2_connection(fresh, transport):
    sender = _fcm_sender(fresh, transport)
    try:
        outcomes = LOOP.run(sender.send([_request(t) for t in _fcm_tokens(60)]), timeout=60)
        assert all(o.kind is Kind.OK for o in outcomes), Counter(o.reason for o in outcomes)
        sent = [r for r in fresh.requests() if r["service"] == "fcm"]
        peers = fresh.stats()["connections"]["fcm-send-peers"]
        if transport == "curl":
            assert {r["http"] for r in sent} == {"2"} and peers == 1
        else:  # a pool of HTTP/1.1 connections, one message at a time on each
            assert {r["http"] for r in sent} == {"1.1"} and 1 <= peers <= 4
    finally:
        LOOP.run(sender.close(), timeout=10)


@pytest.mark.parametrize("transport", FCM_TRANSPORTS)
def test_an_expired_oauth_token_is_fetched_again_once_and_the_message_goes(fresh, transport):
    """401 without an FcmError: the access token expired; a new one, then the same message again."""
    token = _fcm_tokens(1)[0]
    fresh.fault(service="fcm", token=token, status=401, count=1)
    sender = _fcm_sender(fresh, transport)
    try:
        [o] = LOOP.run(sender.send([_request(token)]), timeout=30)
        assert o.kind is Kind.OK, o
        assert fresh.stats()["oauth_tokens_issued"] == 2
        assert _accepted(fresh)[token] == 1
    finally:
        LOOP.run(sender.close(), timeout=10)


@pytest.mark.parametrize("transport", FCM_TRANSPORTS)
def test_an_fcm_goaway_or_stall_loses_no_message_and_sends_none_twice(fresh, transport):
    """A GOAWAY in the middle of a batch (over HTTP/1.1 the connection drops instead) and one message
    that stalls past its timeout: the unprocessed ones go again on a new connection over libcurl (which
    resends a request a GOAWAY left unprocessed itself; the sender's own second try is for the errors
    it gives up on), aiohttp makes them retries; the stalled one is a retry on both; nothing is
    accepted twice."""
    tokens = _fcm_tokens(30)
    fresh.fault(service="fcm", token=tokens[10], goaway=True, count=1)
    fresh.fault(service="fcm", token=tokens[20], stall=True)
    sender = _fcm_sender(fresh, transport, timeout=1, connections=1)
    try:
        outcomes = LOOP.run(sender.send([_request(t) for t in tokens]), timeout=60)
        accepted = _accepted(fresh)
        assert max(accepted.values()) == 1
        ok = {t for t, o in zip(tokens, outcomes, strict=True) if o.kind is Kind.OK}
        assert ok == set(accepted) and tokens[20] not in ok
        assert all(o.kind in (Kind.OK, Kind.RETRY) for o in outcomes)
        if transport == "curl":
            assert ok == set(tokens) - {tokens[20]}, [o.reason for o in outcomes if o.kind is not Kind.OK]
    finally:
        fresh.clear_faults()
        LOOP.run(sender.close(), timeout=10)


def test_a_request_the_server_did_not_process_goes_once_more_and_no_other_does():
    """The senders' second try, on its own (libcurl resends a GOAWAY's unprocessed requests itself,
    so the emulator tests above rarely reach it): once for an unprocessed request, never for one
    that may have been processed (a timeout), never a third time."""
    import asyncio

    import pycurl

    from worker.senders.curl import E_HTTP2_STREAM, Answer, CurlClient, TransportError

    async def attempt(errors: list[TransportError]) -> tuple[object, int]:
        client = CurlClient(ca_file=None)
        calls = []

        async def post(*_args):
            calls.append(1)
            if errors:
                raise errors.pop(0)
            return Answer(200, [], b"")
        client.post = post
        try:
            return await client.post_again_if_unprocessed("https://x", [], b"", 1.0), len(calls)
        except TransportError as exc:
            return exc.reason, len(calls)
        finally:
            await client.close()

    refused = TransportError("connection: refused stream", E_HTTP2_STREAM)
    assert asyncio.run(attempt([refused]))[1] == 2
    assert asyncio.run(attempt([refused]))[0].status == 200
    assert asyncio.run(attempt([TransportError("timeout", pycurl.E_OPERATION_TIMEDOUT)])) == ("timeout", 1)
    assert asyncio.run(attempt([refused, TransportError("connection: again", pycurl.E_HTTP2)])) == (
        "connection: again", 2)
