"""APNs emulator: HTTP/2 over TLS (ALPN h2), token authentication with ES256 JWTs.

It answers as Apple documents in "Handling notification responses from APNs": 200 with an
apns-id, or an error status with {"reason": ...} (and a timestamp for 410), and it checks
the headers and body that pushsync's contract requires of a background push.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import re
import time
import uuid

import h2.errors
import h2.exceptions
import h2.settings
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from emulators.h2http import H2Server
from emulators.state import State

JWT_MAX_AGE = 3600  # Apple refuses provider tokens older than one hour
_HEX = re.compile(r"[0-9a-f]+")
MAX_PAYLOAD = 4096
DEFAULT_REASONS = {400: "BadRequest", 403: "ExpiredProviderToken", 410: "Unregistered", 413: "PayloadTooLarge",
                   429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}


MAX_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS


class KeyRing:
    """The provider keys APNs knows: key id -> (team id, public key, allowed topics)."""

    def __init__(self):
        self.keys: dict[str, tuple[str, EllipticCurvePublicKey, set[str]]] = {}

    def add(self, key_id: str, team_id: str, pem: bytes, topics: set[str]) -> None:
        public = load_pem_private_key(pem, None).public_key()
        if not isinstance(public, EllipticCurvePublicKey):  # ES256 is the one algorithm APNs takes
            raise ValueError(f"APNs key {key_id} is not an elliptic curve (P-256) key")
        self.keys[key_id] = (team_id, public, topics)


class APNsProtocol(H2Server):
    def __init__(self, state: State, keys: KeyRing, host: str):
        super().__init__()
        self.state, self.keys, self.host = state, keys, host
        self.max_streams: int | None = None

    def connection_made(self, transport):
        self.transport = transport
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None and ssl_obj.selected_alpn_protocol() != "h2":
            transport.close()  # APNs speaks HTTP/2 only
            return
        self.state.connections[f"apns-{self.host}"] += 1
        self.max_streams = self.state.apns_max_streams
        if self.max_streams is not None:  # in the first SETTINGS, as APNs sends it
            self.conn.local_settings = h2.settings.Settings(client=False, initial_values={
                **dict(self.conn.local_settings.items()), MAX_STREAMS: self.max_streams})
        self.conn.initiate_connection()
        if self.max_streams is not None:
            # h2 would end the connection over a stream past the limit; APNs refuses that stream
            # alone (REFUSED_STREAM, below), which a client that has not read the setting yet meets
            self.conn.local_settings._settings[MAX_STREAMS] = collections.deque([2 ** 31 - 1])
        self._flush()

    def _accept(self, stream_id: int) -> bool:
        if self.max_streams is not None and self.conn.open_inbound_streams > self.max_streams:
            self.conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
            self.state.apns_refused["after settings" if self.acked else "before settings"] += 1
            return False
        return True

    async def _serve(self, stream_id: int, headers: list, body: bytes) -> None:
        await self._answer(stream_id, {"headers": dict(headers), "body": body})

    def _check_auth(self, headers: dict, topic: str | None) -> tuple[int, str] | None:
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return 403, "MissingProviderToken"
        token = auth[7:]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        key = self.keys.keys.get(header.get("kid", ""))
        if key is None or header.get("alg") != "ES256":
            return 403, "InvalidProviderToken"
        team, public, topics = key
        try:
            claims = jwt.decode(token, public, algorithms=["ES256"], options={"verify_iat": False,
                                                                               "require": ["iss", "iat"]})
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken"
        if claims.get("iss") != team:
            return 403, "InvalidProviderToken"
        if time.time() - int(claims["iat"]) > JWT_MAX_AGE:
            return 403, "ExpiredProviderToken"
        if topic is not None and topic not in topics:
            return 400, "TopicDisallowed"
        return None

    def _validate(self, headers: dict, body: bytes, token: str) -> tuple[int, str, dict | None]:
        if headers.get(":method") != "POST":
            return 405, "MethodNotAllowed", None
        if not headers.get(":path", "").startswith("/3/device/"):
            return 404, "BadPath", None
        topic = headers.get("apns-topic")
        auth_error = self._check_auth(headers, topic)
        if auth_error:
            return (*auth_error, None)
        if not token:
            return 400, "MissingDeviceToken", None
        if not topic:
            return 400, "MissingTopic", None
        if len(body) > MAX_PAYLOAD:
            return 413, "PayloadTooLarge", None
        if not body:
            return 400, "PayloadEmpty", None
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "BadPayload", None
        if headers.get("apns-push-type") != "background":
            return 400, "InvalidPushType", payload
        if headers.get("apns-priority") != "5":
            return 400, "BadPriority", payload  # background pushes must use priority 5
        collapse = headers.get("apns-collapse-id")
        if collapse is None or len(collapse.encode()) > 64:
            return 400, "BadCollapseId", payload
        if not headers.get("apns-expiration", "").isdigit():
            return 400, "BadExpirationDate", payload
        aps = payload.get("aps") if isinstance(payload, dict) else None
        if aps != {"content-available": 1} or not isinstance(payload.get("data"), dict):
            return 400, "BadPayload", payload
        if not _HEX.fullmatch(token):
            return 400, "BadDeviceToken", payload
        return 200, "", payload

    async def _answer(self, stream_id: int, stream: dict):
        headers = stream["headers"]
        body = bytes(stream["body"])
        token = headers.get(":path", "").rsplit("/", 1)[-1]
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        if self.last_stream is not None and stream_id > self.last_stream:
            return  # after our GOAWAY: not processed, the client sends it again elsewhere
        fault = self.state.fault_for("apns", token)
        if fault and fault.goaway:
            self.state.record({"service": "apns", "host": self.host, "token": token, "status": 0, "reason": "goaway"})
            self._goaway(stream_id)
            return
        if fault and fault.latency:
            await asyncio.sleep(fault.latency)
        entry = {"service": "apns", "host": self.host, "authority": headers.get(":authority") or headers.get("host"),
                 "token": token, "headers": {k: v for k, v in headers.items() if k != "authorization"},
                 # which provider token signed it, without keeping the token itself
                 "auth_id": hashlib.sha256(headers.get("authorization", "").encode()).hexdigest()[:12]}
        if fault and fault.stall:
            await self.state.stalled(fault)
        if fault and (fault.drop or fault.stall):
            self._drop(entry, body)
            return
        status, reason, payload = self._validate(headers, body, token)
        if status == 200 and fault and fault.body is not None:
            await self._raw(stream_id, entry, fault, payload, apns_id)
            return
        extra = []
        if status == 200 and fault and fault.status:
            status, reason = fault.status, fault.reason or DEFAULT_REASONS.get(fault.status, "BadRequest")
            if fault.retry_after:
                extra.append(("retry-after", str(fault.retry_after)))
        if status == 200 and self.state.is_dead(token):
            status, reason = 410, "Unregistered"
        entry.update(status=status, reason=reason, body=payload,
                     data=payload.get("data") if isinstance(payload, dict) else None)
        self.state.record(entry)
        self._send(stream_id, status, reason, apns_id, extra)

    def _drop(self, entry: dict, body: bytes) -> None:
        """Cut the connection without an answer, recording what the push carried."""
        try:
            dropped = json.loads(body)
        except ValueError:
            dropped = None
        data = dropped.get("data") if isinstance(dropped, dict) else None
        self.state.record({**entry, "status": 0, "reason": "dropped", "body": dropped, "data": data})
        if self.transport is not None:  # not yet closed by the peer
            self.transport.abort()

    def _send(self, stream_id: int, status: int, reason: str, apns_id: str, extra: list) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            if status == 200:
                self.conn.send_headers(stream_id, [(":status", "200"), ("apns-id", apns_id)], end_stream=True)
            else:
                err: dict[str, str | int] = {"reason": reason}
                if status == 410:
                    err["timestamp"] = int(time.time() * 1000)
                data = json.dumps(err).encode()
                self.conn.send_headers(stream_id, [(":status", str(status)), ("apns-id", apns_id),
                                                   ("content-type", "application/json"),
                                                   ("content-length", str(len(data))), *extra])
                self.conn.send_data(stream_id, data, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()

    async def _raw(self, stream_id: int, entry: dict, fault, payload, apns_id: str) -> None:
        """Answer exactly what the fault rule says, however wrong it is."""
        status = fault.status or 400
        self.state.record({**entry, "status": status, "reason": "raw answer", "body": payload,
                           "data": payload.get("data") if isinstance(payload, dict) else None})
        data = fault.body.encode()
        extra = [(k.lower(), str(v)) for k, v in (fault.headers or {}).items()]
        try:
            self.conn.send_headers(stream_id, [(":status", str(status)), ("apns-id", apns_id), *extra],
                                   end_stream=not data)
            if data:
                self.conn.send_data(stream_id, data, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()
