"""FCM HTTP v1 sender.

Only public APIs of the libraries: google-auth's service-account credentials give the OAuth2
token (fetched from the file's ``token_uri``, refreshed through a requests session that trusts
PUSHSYNC_CA_FILE); ``message`` builds the message as pyfcm's ``parse_payload`` would; the messages
go through one aiohttp session per sender (pooled HTTP/1.1 connections) or one libcurl client.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import tempfile
import time

import aiohttp
import certifi
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from worker.senders.base import Kind, Outcome, PushRequest, Sender, parse_retry_after, tls_context
from worker.senders.curl import CurlClient, TransportError
from worker.senders.reasons import exception_reason

# Error table: (HTTP status, FcmError errorCode) -> outcome kind.
# https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode
# https://firebase.google.com/docs/cloud-messaging/manage-tokens (UNREGISTERED, INVALID_ARGUMENT)
ERRORS: dict[tuple[int, str], Kind] = {
    (404, "UNREGISTERED"): Kind.TOKEN_INVALID,
    (400, "INVALID_ARGUMENT"): Kind.PERMANENT,  # unless it is the token: see classify()
    (403, "SENDER_ID_MISMATCH"): Kind.PERMANENT,
    (401, "THIRD_PARTY_AUTH_ERROR"): Kind.PERMANENT,
    (429, "QUOTA_EXCEEDED"): Kind.RETRY,
    (503, "UNAVAILABLE"): Kind.RETRY,
    (500, "INTERNAL"): Kind.RETRY,
}
# Google asks for at least this back-off after QUOTA_EXCEEDED.
QUOTA_MIN_BACKOFF = 60.0
SCOPES = ["https://www.googleapis.com/auth/firebase.messaging"]


def _error_details(body: object) -> tuple[str, bool]:
    """(FcmError errorCode, whether a field violation names the registration token).

    Every level is checked for its type: an answer of another shape yields ("", False)."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", False
    code = ""
    token_field = False
    details = err.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if str(detail.get("@type", "")).endswith("FcmError") and isinstance(detail.get("errorCode"), str):
            code = detail["errorCode"]
        violations = detail.get("fieldViolations")
        for violation in violations if isinstance(violations, list) else []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                token_field = True
    message = err.get("message")
    if isinstance(message, str) and "registration token" in message.lower():
        token_field = True
    status = err.get("status")
    return code or (status if isinstance(status, str) else ""), token_field


def classify(device_id: str, status: int, body: object, retry_after: str | None) -> Outcome:
    if status == 200:
        return Outcome(device_id, Kind.OK, status=200)
    code, token_field = _error_details(body)
    kind = ERRORS.get((status, code))
    if kind is None:
        kind = Kind.RETRY if status >= 500 or status == 429 else Kind.PERMANENT
    if code == "INVALID_ARGUMENT" and token_field:
        kind = Kind.TOKEN_INVALID
    wait = parse_retry_after(retry_after)
    if code == "QUOTA_EXCEEDED":
        wait = max(wait or 0.0, QUOTA_MIN_BACKOFF)
    return Outcome(device_id, kind, reason=code or f"HTTP {status}", status=status,
                   retry_after=wait if kind is Kind.RETRY else None)


@functools.lru_cache(maxsize=4)
def _ca_bundle(ca_file: str | None) -> str | bool:
    """requests (used by google-auth for the token) takes one CA file: ours plus certifi's.
    Written once per process and removed when it exits."""
    if not ca_file:
        return True
    fd, path = tempfile.mkstemp(prefix="pushsync-ca-", suffix=".pem")
    atexit.register(_remove, path)
    with os.fdopen(fd, "w") as out, open(ca_file) as extra, open(certifi.where()) as public:
        out.write(extra.read())
        out.write("\n")
        out.write(public.read())
    return path


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _VerifyingSession(requests.Session):
    """requests lets REQUESTS_CA_BUNDLE from the environment override a session's own
    ``verify`` (psf/requests#3829); pass it with every request so that ours holds. And
    google-auth asks for 120 s per token request: ``timeout`` bounds it (connect and each read)."""

    timeout: float = 10.0

    def request(self, *args, **kwargs):
        kwargs.setdefault("verify", self.verify)
        asked = kwargs.get("timeout")
        kwargs["timeout"] = self.timeout if not isinstance(asked, (int, float)) else min(asked, self.timeout)
        return super().request(*args, **kwargs)


# After the token endpoint failed, this many seconds in which the sender fails at once instead of
# asking again (the batches retry through the retry set, with backoff).
AUTH_FAIL_FAST = 5.0


class OAuthUnavailable(Exception):
    """The OAuth token could not be had: every push waiting on it is a retry, not a failure."""


class FCMSender(Sender):
    """One service account's sender, over aiohttp (HTTP/1.1, a pool of ``connections``) or libcurl
    (HTTP/2, multiplexed on one connection, more only when its streams are full): ``transport``,
    PUSHSYNC_FCM_TRANSPORT. The same messages, the same tables, the same outcomes."""

    def __init__(self, account: dict, *, fcm_url: str, ca_file: str | None, connections: int, timeout: float,
                 transport: str = "curl"):
        self._credentials = service_account.Credentials.from_service_account_info(account, scopes=SCOPES)
        self._token_session = _VerifyingSession()
        self._token_session.verify = _ca_bundle(ca_file)
        self._token_session.timeout = timeout
        self._url = f"{fcm_url}/v1/projects/{account['project_id']}/messages:send"
        self._ca_file = ca_file
        self._connections = connections
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._curl = CurlClient(ca_file=ca_file, max_connections=connections) if transport == "curl" else None
        self._auth: str | None = None
        self._auth_expires = 0.0
        self._auth_lock = asyncio.Lock()
        self._auth_failed: tuple[float, str] | None = None  # (until, why): the endpoint just failed

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # the TLS context only for the aiohttp transport (libcurl reads the CA file itself)
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=tls_context(self._ca_file),
                                             keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def _authorization(self, stale: str | None = None) -> str:
        async with self._auth_lock:
            if self._auth and self._auth != stale and time.time() < self._auth_expires:
                return self._auth
            if self._auth_failed and time.time() < self._auth_failed[0]:
                # the endpoint failed a moment ago: the batches queued behind it do not each wait
                # for it again (a stalled endpoint would hold every one for the whole timeout)
                raise OAuthUnavailable(self._auth_failed[1])
            refresh = asyncio.get_running_loop().run_in_executor(None, self._refresh)
            try:
                # the session's own timeout bounds each request; this bounds google-auth's retries
                await asyncio.wait_for(refresh, self._timeout * 2)
            except Exception as exc:
                why = "token endpoint did not answer in time" if isinstance(exc, TimeoutError) else str(exc)[:200]
                self._auth_failed = (time.time() + AUTH_FAIL_FAST, why)
                raise OAuthUnavailable(why) from None
            self._auth_failed = None
            token, expiry = self._credentials.token, self._credentials.expiry
            # refresh a minute before Google says the token ends
            self._auth_expires = (expiry.timestamp() if expiry else time.time() + 3000) - 60
            self._auth = f"Bearer {token}"
            return self._auth

    def _refresh(self) -> None:
        self._credentials.refresh(google.auth.transport.requests.Request(session=self._token_session))

    def message(self, req: PushRequest) -> bytes:
        """A data message with no notification block is silent; collapse_key lets FCM keep only the
        newest push per dataset for a device that is offline. The same message pyfcm's
        ``parse_payload`` makes (a test holds them equal), built here: pyfcm's JSON encoder (a
        class of its own, keys sorted) was 15 % of the sending thread's CPU in a worker."""
        return json.dumps({"message": {"token": req.token, "data": req.data,
                                       "android": {"collapse_key": req.dataset, "priority": "normal"}},
                           "validate_only": False}, separators=(",", ":"), ensure_ascii=False).encode()

    async def send_one(self, req: PushRequest) -> Outcome:
        try:
            return await self._send_one(req)
        except OAuthUnavailable as exc:
            return Outcome(req.device_id, Kind.RETRY, reason=f"oauth: {exc}")

    async def _send_one(self, req: PushRequest) -> Outcome:
        body = self.message(req)
        auth = await self._authorization()
        for attempt in (1, 2):
            answer = await (self._post_curl(req, body, auth) if self._curl is not None else self._post(req, body, auth))
            if isinstance(answer, Outcome):
                return answer
            status, text, retry_after = answer
            try:
                parsed = json.loads(text) if text else {}
            except ValueError:
                if status != 200:  # an error we cannot read: try again later, say why
                    return Outcome(req.device_id, Kind.RETRY, reason=f"HTTP {status} with an unreadable body",
                                   status=status)
                parsed = {}
            code, _ = _error_details(parsed) if status != 200 else ("", False)
            if status == 401 and code != "THIRD_PARTY_AUTH_ERROR" and attempt == 1:
                # the OAuth token expired or was revoked: fetch a new one and try once more
                auth = await self._authorization(stale=auth)
                continue
            return classify(req.device_id, status, parsed, retry_after)
        raise AssertionError("unreachable")

    async def _post(self, req: PushRequest, body: bytes, auth: str) -> Outcome | tuple[int, str, str | None]:
        """One message over aiohttp (HTTP/1.1): (status, body text, Retry-After), or the outcome of no answer."""
        try:
            async with self._http().post(self._url, data=body, headers={
                    "Authorization": auth, "Content-Type": "application/json"}) as resp:
                return resp.status, await resp.text(), resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            why = exception_reason(getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc)
            return Outcome(req.device_id, Kind.RETRY, reason=why or f"connection: {type(exc).__name__}")

    async def _post_curl(self, req: PushRequest, body: bytes, auth: str) -> Outcome | tuple[int, str, str | None]:
        """One message over libcurl (HTTP/2, multiplexed); one the server did not process (GOAWAY, a
        refused stream) goes once more."""
        headers = [f"authorization: {auth}", "content-type: application/json"]
        assert self._curl is not None  # called on the curl transport only
        try:
            answer = await self._curl.post_again_if_unprocessed(self._url, headers, body, self._timeout)
        except TransportError as exc:
            return Outcome(req.device_id, Kind.RETRY, reason=exc.reason)
        if answer.status == 200:
            return 200, "", None  # the message name is not read
        return answer.status, answer.body.decode("utf-8", "replace"), answer.headers.get("retry-after")

    async def prepare(self, requests: list[PushRequest]) -> list[Outcome] | None:
        try:
            await self._authorization()
        except Exception as exc:  # the token endpoint refused, is unreachable or does not answer
            return [Outcome(r.device_id, Kind.RETRY, reason=f"oauth: {str(exc)[:200]}") for r in requests]
        return None

    async def close(self) -> None:
        if self._curl is not None:
            await self._curl.close()
        if self._session is not None:
            await self._session.close()
