"""APNs sender: HTTP/2 with token (JWT ES256) authentication, through aioapns.

aioapns takes its host from a class attribute of its protocol and sets no ALPN of its own;
both are wired here, so PUSHSYNC_APNS_PRODUCTION_URL / PUSHSYNC_APNS_SANDBOX_URL and
PUSHSYNC_CA_FILE apply, with "h2" offered in the TLS handshake as Apple requires. The provider
token is this module's own (``ProviderToken``, signed with pyjwt), handed to each connection
through the protocol's ``auth_provider`` argument, so that it can be renewed when APNs says it
expired without reaching into aioapns's private state.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import jwt
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsTLSClientProtocol, AuthorizationHeaderProvider

from worker.senders.base import Kind, Outcome, PushRequest, Sender, collapse_id, parse_retry_after, tls_context
from worker.senders.curl import CurlClient, TransportError
from worker.senders.reasons import exception_reason

# Error table: (HTTP status, reason) -> outcome kind.
# https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns
ERRORS: dict[tuple[int, str], Kind] = {
    (400, "BadDeviceToken"): Kind.TOKEN_INVALID,
    # The pool's --apns-topic does not match the app, or the key may not push to it: a mistake
    # in the pool's configuration, not a dead token. Deactivating here would wipe out every iOS
    # device of a pool over one typo.
    (400, "DeviceTokenNotForTopic"): Kind.PERMANENT,
    (400, "TopicDisallowed"): Kind.PERMANENT,
    (410, "Unregistered"): Kind.TOKEN_INVALID,
    (410, "ExpiredToken"): Kind.TOKEN_INVALID,
    (400, "IdleTimeout"): Kind.RETRY,
    (403, "ExpiredProviderToken"): Kind.RETRY,  # after a fresh JWT, once: see send_one
    (403, "InvalidProviderToken"): Kind.RETRY,
    (429, "TooManyRequests"): Kind.RETRY,
    (429, "TooManyProviderTokenUpdates"): Kind.RETRY,
    (500, "InternalServerError"): Kind.RETRY,
    (503, "ServiceUnavailable"): Kind.RETRY,
    (503, "Shutdown"): Kind.RETRY,
}
JWT_ERRORS = {"ExpiredProviderToken", "InvalidProviderToken"}
# Reasons that say the pool is configured wrong; dead letters carry the hint, metrics the reason.
POOL_CONFIG_ERRORS = {
    "DeviceTokenNotForTopic": "the pool's --apns-topic is not the bundle id these devices registered with",
    "TopicDisallowed": "the pool's APNs key may not push to its --apns-topic",
    "InvalidProviderToken": "APNs refused a freshly signed provider token: the pool's --apns-key-id or "
                            "--apns-team-id does not belong to its --apns-key",
}
# An answer that could not be read: set by the protocol below, retried like a 5xx.
MALFORMED = "MalformedResponse"
# How long APNs keeps a push for an offline device; a sync push older than this is stale anyway.
EXPIRATION_SECONDS = 24 * 3600
PRIORITY_BACKGROUND = 5  # Apple requires 5 for background (content-available) pushes


def _moment(timestamp: object) -> datetime | None:
    """APNs gives the moment a token ended in milliseconds; anything else is ignored."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float, str)):
        return None
    try:
        ms = float(timestamp)
        return datetime.fromtimestamp(ms / 1000, UTC) if math.isfinite(ms) and ms > 0 else None
    except (ValueError, OverflowError, OSError):
        return None


def classify(device_id: str, status: int, reason: object, timestamp: object = None,
             retry_after: float | None = None) -> Outcome:
    if status == 200:
        return Outcome(device_id, Kind.OK, status=200)
    reason = reason if isinstance(reason, str) else ""
    kind = ERRORS.get((status, reason))
    if kind is None:
        kind = Kind.RETRY if status >= 500 or status == 429 or status == 0 or reason == MALFORMED else Kind.PERMANENT
    since = _moment(timestamp) if kind is Kind.TOKEN_INVALID and status == 410 else None
    return Outcome(device_id, kind, reason=reason or f"HTTP {status}", status=status, invalid_since=since,
                   retry_after=retry_after if kind is Kind.RETRY else None)


class ProviderToken(AuthorizationHeaderProvider):
    """The APNs provider token: an ES256 JWT of the team id and the time, signed with the pool's
    .p8 key. One per sender, shared by its connections; Apple accepts a token for an hour and
    refuses renewals more often than every 20 minutes, so it is signed again every 30 minutes,
    or at once when APNs answers ExpiredProviderToken/InvalidProviderToken."""

    TTL = 30 * 60

    def __init__(self, key: str, key_id: str, team_id: str):
        self._key, self._key_id, self._team_id = key, key_id, team_id
        self._lock = threading.Lock()
        self._header: str | None = None
        self.issued_at = 0.0

    def get_header(self) -> str:
        with self._lock:
            if self._header is None or time.time() - self.issued_at > self.TTL:
                self.issued_at = time.time()
                token = jwt.encode({"iss": self._team_id, "iat": int(self.issued_at)}, self._key,
                                   algorithm="ES256", headers={"kid": self._key_id})
                self._header = f"bearer {token}"
            return self._header

    def renew(self, refused_at: float) -> None:
        """APNs refused the token a request sent at ``refused_at`` carried: sign a new one,
        unless another refused request already did since."""
        with self._lock:
            if self.issued_at <= refused_at:
                self._header = None


class _Protocol(APNsTLSClientProtocol):
    """aioapns's protocol with this sender's provider token, keeping the Retry-After header
    that aioapns's result object drops."""

    retry_after: dict[str, str]
    provider_token: ProviderToken

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.auth_provider = self.provider_token

    def on_response_received(self, headers):
        value = headers.get(b"retry-after")
        if value:
            self.retry_after[headers.get(b"apns-id", b"").decode(errors="replace")] = value.decode(errors="replace")
        super().on_response_received(headers)

    def on_stream_ended(self, stream_id):
        # aioapns forgets a stream's notification id only when an error body arrives: after a
        # 200 it stays in request_streams for the connection's life, one entry per push sent
        # (found with tracemalloc as the benchmark's pool processes grew about 4 MiB a minute)
        super().on_stream_ended(stream_id)
        self.request_streams.pop(stream_id, None)

    def on_data_received(self, data, stream_id):
        # aioapns parses an error body with a bare json.loads: a body that is not a JSON object
        # with a reason raises inside the protocol and takes the connection, and every push in
        # flight on it, down. Such an answer is made that one push's MalformedResponse instead.
        try:
            body = json.loads(data.decode())
            if not isinstance(body, dict) or not isinstance(body.get("reason"), str) or not body["reason"]:
                raise ValueError("no reason")
        except (ValueError, UnicodeDecodeError):
            body = {"reason": MALFORMED}
        super().on_data_received(json.dumps(body).encode(), stream_id)


def protocol_for(url: str, token: ProviderToken | None = None) -> type[_Protocol]:
    parts = urlsplit(url)
    attrs: dict[str, object] = {"APNS_SERVER": parts.hostname, "APNS_PORT": parts.port or 443, "retry_after": {},
                                "provider_token": token}
    return type("PushsyncAPNsProtocol", (_Protocol,), attrs)


async def _quiet(_request, _result) -> None:
    """aioapns logs every failure itself; outcomes are recorded by the worker instead."""


class APNsSender(Sender):
    """One pool's key, one APNs host (production or sandbox), over aioapns or libcurl
    (``transport``, PUSHSYNC_APNS_TRANSPORT): the same requests, the same tables, the same outcomes."""

    def __init__(self, *, key: str, key_id: str, team_id: str, topic: str, url: str, ca_file: str | None,
                 connections: int, timeout: float, transport: str = "curl"):
        self.topic = topic
        self._timeout = timeout
        self._token = ProviderToken(key, key_id, team_id)
        self._curl: CurlClient | None = None
        if transport == "curl":
            self._curl = CurlClient(ca_file=ca_file, max_connections=connections)
            self._base = url.rstrip("/") + "/3/device/"
            self._static = [f"apns-topic: {topic}", "apns-push-type: background",
                            f"apns-priority: {PRIORITY_BACKGROUND}", "content-type: application/json"]
            return
        self._client = APNs(key=key, key_id=key_id, team_id=team_id, topic=topic, max_connections=connections,
                            max_connection_attempts=3, ssl_context=tls_context(ca_file, ["h2"]), err_func=_quiet)
        self._protocol = protocol_for(url, self._token)
        self._client.pool.protocol_class = self._protocol
        self._connect_error: BaseException | None = None
        # an instance's method replaced on purpose (aioapns has no hook for a failed connection)
        self._client.pool.create_connection = self._remembering(  # type: ignore[method-assign]
            self._client.pool.create_connection)

    def _remembering(self, create):
        """aioapns logs why a connection failed (a certificate refused, ...) and then raises only
        MaxAttemptsExceeded: the cause is kept here for the push's reason."""
        async def create_connection():
            try:
                connection = await create()
            except Exception as exc:
                self._connect_error = exc
                raise
            self._connect_error = None
            return connection
        return create_connection

    def request(self, req: PushRequest) -> NotificationRequest:
        return NotificationRequest(
            device_token=req.token,
            message={"aps": {"content-available": 1}, "data": req.data},
            time_to_live=EXPIRATION_SECONDS,
            priority=PRIORITY_BACKGROUND,
            collapse_key=collapse_id(req.dataset),
            push_type=PushType.BACKGROUND,
        )

    async def send_one(self, req: PushRequest) -> Outcome:
        for attempt in (1, 2):
            sent_at = time.time()
            answer = await (self._exchange_curl(req) if self._curl is not None else self._exchange(req))
            if isinstance(answer, Outcome):
                return answer
            status, reason, timestamp, retry_after = answer
            if status == 403 and reason in JWT_ERRORS and attempt == 1:
                self._token.renew(refused_at=sent_at)
                continue  # a new apns-id for the second try
            if status == 403 and reason == "InvalidProviderToken":
                # refused again with a token signed after the first refusal: not the token's age
                # but the pool's key id or team id, which no retry mends
                return Outcome(req.device_id, Kind.PERMANENT, reason=reason, status=status)
            return classify(req.device_id, status, reason, timestamp, retry_after)
        raise AssertionError("unreachable")

    async def _exchange(self, req: PushRequest) -> Outcome | tuple[int, str, object, float | None]:
        """One push over aioapns: (status, reason, timestamp, Retry-After), or the outcome of no answer."""
        note = self.request(req)
        try:
            result = await asyncio.wait_for(self._client.send_notification(note), self._timeout)
        except TimeoutError:
            return Outcome(req.device_id, Kind.RETRY, reason="timeout")
        except Exception as exc:  # connection refused, dropped, TLS failure, max attempts
            why = exception_reason(exc) or exception_reason(self._connect_error)
            return Outcome(req.device_id, Kind.RETRY, reason=why or f"connection: {type(exc).__name__}")
        status = int(result.status) if str(result.status).isdigit() else 0
        reason = result.description if isinstance(result.description, str) else ""
        return status, reason, result.timestamp, parse_retry_after(self._protocol.retry_after.pop(
            note.notification_id, None))

    async def _exchange_curl(self, req: PushRequest) -> Outcome | tuple[int, str, object, float | None]:
        """One push over libcurl; a request the server did not process (GOAWAY, a refused stream)
        goes once more, on whatever connection libcurl has then."""
        # no apns-id: APNs makes one (nothing here reads it back)
        headers = [*self._static, f"authorization: {self._token.get_header()}",
                   f"apns-expiration: {int(time.time()) + EXPIRATION_SECONDS}",
                   f"apns-collapse-id: {collapse_id(req.dataset)}"]
        body = json.dumps({"aps": {"content-available": 1}, "data": req.data}, separators=(",", ":")).encode()
        assert self._curl is not None  # called on the curl transport only
        try:
            answer = await self._curl.post_again_if_unprocessed(self._base + req.token, headers, body, self._timeout)
        except TransportError as exc:
            return Outcome(req.device_id, Kind.RETRY, reason=exc.reason)
        if answer.status == 200:
            return 200, "", None, None
        reason, timestamp = _error_body(answer.body)
        return answer.status, reason, timestamp, parse_retry_after(answer.headers.get("retry-after"))

    async def close(self) -> None:
        if self._curl is not None:
            await self._curl.close()
        else:
            self._client.pool.close()


def _error_body(raw: bytes) -> tuple[str, object]:
    """(reason, timestamp) of an APNs error body; MALFORMED for one that is not a JSON object
    with a reason (as the aioapns protocol above makes it)."""
    try:
        body = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return MALFORMED, None
    if not isinstance(body, dict) or not isinstance(body.get("reason"), str) or not body["reason"]:
        return MALFORMED, None
    return body["reason"], body.get("timestamp")
