"""FCM emulator: the HTTP v1 send endpoint and Google's OAuth2 token endpoint.

The token endpoint takes a JWT-bearer grant (RFC 7523) signed with the service account's
RSA key, as google-auth sends it, and checks its signature, issuer, audience and scope. The
send endpoint takes only tokens it issued, and answers errors in the shape of the v1 API:
{"error": {"code", "message", "status", "details": [{"@type": ...FcmError, "errorCode"}]}}.
Both endpoints speak HTTP/2 and HTTP/1.1, chosen by ALPN, as Google's do (emulators/h2http.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import secrets
import time

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from emulators.state import State

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# google-auth signs every grant for Google's own token endpoint, whatever token_uri it posts to
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
DEFAULT_CODES = {400: "INVALID_ARGUMENT", 403: "SENDER_ID_MISMATCH", 404: "UNREGISTERED", 429: "QUOTA_EXCEEDED",
                 500: "INTERNAL", 503: "UNAVAILABLE"}
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def fcm_error(status: int, error_code: str | None, message: str, token_field: bool = False) -> web.Response:
    details: list[dict] = []
    if error_code:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if token_field:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]})
    body = {"error": {"code": status, "message": message, "status": _STATUS_NAMES.get(status, "UNKNOWN"),
                      "details": details}}
    return web.json_response(body, status=status)


def _transport(request: web.Request) -> asyncio.Transport:
    """The request's connection. aiohttp drops it (None) once the client has closed it: no one is
    left to answer, as when a fault rule cuts the connection."""
    if request.transport is None:
        raise ConnectionResetError("the client closed the connection")
    return request.transport


class FCMEmulator:
    def __init__(self, state: State, token_uri: str):
        self.state = state
        self.token_uri = token_uri
        self.accounts: dict[str, tuple[str, RSAPublicKey]] = {}  # client_email -> (project_id, public key)

    def add_account(self, account: dict) -> None:
        public = load_pem_private_key(account["private_key"].encode(), None).public_key()
        if not isinstance(public, RSAPublicKey):  # Google signs service account keys for RS256 only
            raise ValueError(f"service account {account['client_email']}: the private key is not an RSA key")
        self.accounts[account["client_email"]] = (account["project_id"], public)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/projects/{project}/messages:send", self.send)
        return app

    def routes(self) -> list:
        """The same endpoints for the HTTP/2 side (emulators/h2http.py)."""
        return [("POST", re.compile(r"/token"), self.token),
                ("POST", re.compile(r"/v1/projects/(?P<project>[^/]+)/messages:send"), self.send)]

    async def token(self, request: web.Request) -> web.Response:
        self.state.saw_peer("fcm-token", _transport(request).get_extra_info("peername"))
        fault = self.state.fault_for("oauth", None)
        if fault and fault.latency:  # a stalled token endpoint: the connection open, no answer yet
            await asyncio.sleep(fault.latency)
        if fault and fault.stall:
            await self.state.stalled(fault)
            _transport(request).abort()
            raise ConnectionResetError("stalled by fault rule")
        if fault and fault.status:
            return web.json_response({"error": fault.reason or "temporarily_unavailable"}, status=fault.status)
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        assertion = form.get("assertion", "")
        if not isinstance(assertion, str | bytes):  # a file part of a multipart form: no JWT
            return web.json_response({"error": "invalid_grant", "error_description": "the assertion is not text"},
                                     status=400)
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            project, public = self.accounts[claims["iss"]]
            claims = jwt.decode(assertion, public, algorithms=["RS256"],
                                audience=[GOOGLE_TOKEN_AUDIENCE, self.token_uri],
                                options={"require": ["iss", "aud", "exp", "iat"]})
        except (jwt.PyJWTError, KeyError) as exc:
            return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope"}, status=400)
        access = "emu." + secrets.token_urlsafe(24)
        self.state.oauth_tokens[access] = {"project": project, "expires": time.time() + 3600}
        self.state.oauth_issued += 1
        return web.json_response({"access_token": access, "expires_in": 3600, "token_type": "Bearer"})

    async def send(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        self.state.saw_peer("fcm-send", _transport(request).get_extra_info("peername"))
        raw = await request.read()
        try:
            body = json.loads(raw)
            message = body["message"]
        except (ValueError, KeyError, TypeError):
            message = None
        token = message.get("token") if isinstance(message, dict) else None
        auth = request.headers.get("Authorization", "")
        entry = {"service": "fcm", "host": None, "authority": request.host, "project": project, "token": token,
                 "http": "2" if request.version[0] == 2 else "1.1",
                 "auth_id": hashlib.sha256(auth.encode()).hexdigest()[:12],
                 "headers": {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
                 "body": message, "data": message.get("data") if isinstance(message, dict) else None}
        fault = self.state.fault_for("fcm", token)
        await self._unanswered(request, entry, fault)
        response = self._check(request, project, message, token)
        if response is None:
            response = self._quota(project)
        if response is None and fault and fault.body is not None:
            response = web.Response(status=fault.status or 400, body=fault.body.encode(),
                                    headers=fault.headers or {}, content_type="application/json")
            self.state.record({**entry, "status": response.status, "reason": "raw answer"})
            return response
        if response is None and fault and fault.status:
            # 401 without a reason is an expired OAuth token: Google sends no FcmError then
            code = fault.reason or DEFAULT_CODES.get(fault.status)
            response = fcm_error(fault.status, code, "fault injected by the emulator")
            if fault.retry_after:
                response.headers["Retry-After"] = str(fault.retry_after)
        # no response yet: _check found the token a non-empty string
        if response is None and isinstance(token, str) and self.state.is_dead(token):
            response = fcm_error(404, "UNREGISTERED", "Requested entity was not found.")
        if response is None:
            response = web.json_response({"name": f"projects/{project}/messages/{secrets.token_hex(8)}"})
        reason = ""
        if response.status != 200:
            assert isinstance(response.body, bytes)  # a json_response's (fcm_error): the raw answer returned above
            err = json.loads(response.body)["error"]
            reason = err["details"][0]["errorCode"] if err["details"] else err["status"]
        if response.status == 200 and isinstance(token, str):
            android = message.get("android") if isinstance(message, dict) else None
            collapse = android.get("collapse_key") if isinstance(android, dict) else None
            if self.state.keep_offline(token, collapse, {"collapse_key": collapse, "data": entry["data"]}):
                entry["kept_offline"] = True
        self.state.record({**entry, "status": response.status, "reason": reason})
        return response

    async def _unanswered(self, request, entry: dict, fault) -> None:
        """The fault rules that leave a message without an answer: GOAWAY, latency, drop, stall."""
        if fault and fault.goaway:
            self.state.record({**entry, "status": 0, "reason": "goaway"})
            goaway = getattr(request, "goaway", None)  # an HTTP/2 request's (emulators/h2http.py)
            if goaway is not None:
                goaway()
            else:  # HTTP/1.1 has no GOAWAY: the connection ends
                request.transport.abort()
            raise ConnectionResetError("goaway by fault rule")
        if fault and fault.latency:
            await asyncio.sleep(fault.latency)
        if fault and fault.stall:
            await self.state.stalled(fault)
        if fault and (fault.drop or fault.stall):
            self.state.record({**entry, "status": 0, "reason": "dropped"})
            request.transport.abort()
            raise ConnectionResetError("dropped by fault rule")

    def _quota(self, project: str) -> web.Response | None:
        """Past the project's quota: 429 QUOTA_EXCEEDED with the seconds left of its window, as
        FCM answers (``State.over_quota``; refused requests count too)."""
        left = self.state.over_quota(project)
        if left is None:
            return None
        response = fcm_error(429, "QUOTA_EXCEEDED", "Quota exceeded for the project's messages per minute.")
        response.headers["Retry-After"] = str(max(1, math.ceil(left)))
        return response

    def _check(self, request: web.Request, project: str, message, token) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        grant = self.state.oauth_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if grant is None or grant["expires"] < time.time():
            # an expired or unknown OAuth token: 401 without an FcmError, as Google answers
            return fcm_error(401, None, "Request had invalid authentication credentials.")
        if grant["project"] != project:
            return fcm_error(403, "SENDER_ID_MISMATCH", "Permission denied for this project.")
        if not isinstance(message, dict):
            return fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(token, str) or not token or token.startswith("invalid"):
            return fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                             token_field=True)
        data = message.get("data")
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return fcm_error(400, "INVALID_ARGUMENT", "message.data must map strings to strings")
        if "notification" in message:
            return fcm_error(400, "INVALID_ARGUMENT", "pushsync expects silent data messages only")
        if not (message.get("android") or {}).get("collapse_key"):
            return fcm_error(400, "INVALID_ARGUMENT", "android.collapse_key is required by pushsync's contract")
        return None
