"""The ASGI app: routes, the credential and rate-limit check every operation goes through, the
translation of every failure into a Cognito-shaped error, and JSON access logs."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

from api import configuration, operations, trail
from api.auth import authenticate
from api.errors import Answer, ApiError, InternalError, InvalidParameter, MethodNotAllowed, NotFound, Unavailable
from api.errors import LimitExceeded as LimitError
from api.ratelimit import RateLimiter
from api.server import iso_time, log_setup
from pushsync import contract
from pushsync.settings import get_settings

log = logging.getLogger("pushsync.api")
access = logging.getLogger("pushsync.api.access")

MAX_BODY = 1024 * 1024
P = "/identitypools/{pool}"
CHECKS: dict[str, Callable[[str], str]] = {
    "pool": contract.pool_id, "identity": contract.identity_id, "dataset": contract.dataset_name,
    "device": contract.device_id,
}


def translate(exc: BaseException) -> ApiError:
    """Every failure as the error the caller gets; what is not the caller's fault is logged."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from pushsync.secrets import SecretError
    from store.repo import NotFound as Missing

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, contract.LimitExceeded):
        return LimitError(str(exc))
    if isinstance(exc, contract.ValidationError):
        return InvalidParameter(str(exc))
    if isinstance(exc, Missing):
        return NotFound(str(exc))
    if isinstance(exc, SecretError):
        log.error("key material cannot be used: %s", exc)
        return InternalError(f"the server cannot use the pool's key material: {exc}")
    if isinstance(exc, OperationalError | PoolTimeout) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        log.warning("store out of reach: %s", type(exc).__name__)
        return Unavailable("the store is out of reach; try again shortly", retry_after=5)
    log.exception("unexpected error")
    return InternalError("internal error")


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


# A client gets this long to send its whole body (a slow sender holds a connection, not a thread).
BODY_DEADLINE = 10.0


async def read_json(request: Request):
    """The body as JSON (None when empty), at most MAX_BODY bytes, within BODY_DEADLINE seconds."""
    return parse_json(await read_body(request))


async def read_body(request: Request) -> bytes:
    """The body's bytes, at most MAX_BODY, within BODY_DEADLINE seconds."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise InvalidParameter(f"the body is larger than {MAX_BODY} bytes")
    data = bytearray()
    try:
        with anyio.fail_after(BODY_DEADLINE):
            async for chunk in request.stream():
                data += chunk
                if len(data) > MAX_BODY:
                    raise InvalidParameter(f"the body is larger than {MAX_BODY} bytes")
    except TimeoutError:
        raise InvalidParameter(f"the body did not arrive within {BODY_DEADLINE:.0f} s") from None
    return bytes(data)


def parse_json(data: bytes):
    """JSON (None for an empty body); a clear error for anything else."""
    if not data.strip():
        return None
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise InvalidParameter("the body is not valid JSON (UTF-8)") from None


_limiter: anyio.CapacityLimiter | None = None


def _threads() -> anyio.CapacityLimiter:
    """The threads that run the blocking store and Redis calls, PUSHSYNC_API_THREADS per process: a
    request past them waits its turn in order (a request whose publish waits for Redis holds one
    for up to PUSHSYNC_API_PUBLISH_WAIT seconds)."""
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(get_settings().api_threads)
    return _limiter


# A body declared this small (or none) is read before the credential is checked, so that the
# check, the parse and the operation share one trip to a thread (two cost a third of a small
# request's time): its bytes are in the server's buffer already. It is parsed only after the check;
# a larger or chunked body is read only for a caller who may send it.
SMALL_BODY = 64 * 1024


def endpoint(op, params: tuple[str, ...]):
    """An operation served: path checks, body, credential, rate limit, then ``op`` in a thread."""
    async def handle(request: Request):
        try:
            values = [CHECKS[name](request.path_params[name]) for name in params]
            header = request.headers.get("authorization")
            declared = request.headers.get("content-length", "")
            bodiless = not declared and "transfer-encoding" not in request.headers
            if bodiless or (declared.isdigit() and int(declared) <= SMALL_BODY):
                try:
                    raw, unread = await read_body(request), None
                except InvalidParameter as exc:  # said only to a caller whose credential holds
                    raw, unread = b"", exc
                result = await anyio.to_thread.run_sync(_serve, op, request, values, header, raw, unread,
                                                        limiter=_threads())
            else:
                principal = await anyio.to_thread.run_sync(_authorised, request, values, header, limiter=_threads())
                body = await read_json(request)
                result = await anyio.to_thread.run_sync(op, principal, *values, body, limiter=_threads())
        except Exception as exc:  # noqa: BLE001 - every failure becomes a Cognito-shaped answer
            return translate(exc).response()
        status, data = result if isinstance(result, tuple) else (200, result)
        return Answer(data, status_code=status)
    return handle


def _serve(op, request: Request, values: list[str], header: str | None, raw: bytes, unread: Exception | None):
    """In one thread: the credential, then the body parsed, then the operation."""
    principal = _authorised(request, values, header)
    if unread is not None:
        raise unread
    return op(principal, *values, parse_json(raw))


def _authorised(request: Request, values: list[str], header: str | None):
    principal = authenticate(header, values[0])
    request.state.principal = principal.label
    settings = get_settings()
    limit = settings.api_key_rate if principal.kind == "key" else settings.api_identity_rate
    request.app.state.limiter.check(principal.bucket, limit)
    return principal


async def healthz(_request: Request):
    return Answer({"status": "ok"})


def _ready(limiter: RateLimiter) -> dict[str, str]:
    from sqlalchemy import text

    from store.db import session_scope

    checks = {}
    try:
        with session_scope() as s:
            s.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["store"] = f"unreachable: {type(exc).__name__}"
    try:
        limiter.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    return checks


async def readyz(request: Request):
    checks = await run_in_threadpool(_ready, request.app.state.limiter)
    if all(v == "ok" for v in checks.values()):
        return Answer({"status": "ready", **checks})
    failing = ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok")
    return Unavailable(f"not ready: {failing}", retry_after=5).response()


async def openapi(_request: Request):
    from api.openapi import document

    return Answer(document())


async def _http_error(_request: Request, exc: Exception):
    assert isinstance(exc, HTTPException)  # registered for HTTPException only
    if exc.status_code == 405:
        answer = MethodNotAllowed("this method is not allowed on this path").response()
        answer.headers["Allow"] = (exc.headers or {}).get("Allow", "")
        return answer
    if exc.status_code == 404:
        return NotFound("no such path").response()
    return InvalidParameter(str(exc.detail)).response()


def _by_method(**handlers):
    """One route per path, so that a 405 names every method the path has in its Allow header."""
    async def handle(request: Request):
        # Starlette answers HEAD on a GET route
        return await (handlers.get(request.method) or handlers["GET"])(request)
    return handle, list(handlers)


def routes() -> list[Route]:
    ops, conf = operations, configuration
    sub = ("pool", "identity", "dataset", "device")
    table = {
        P + "/identity/{identity}/device": {"POST": endpoint(ops.register_device, ("pool", "identity"))},
        P + "/identities/{identity}/datasets/{dataset}/subscriptions/{device}": {
            "POST": endpoint(ops.subscribe, sub), "DELETE": endpoint(ops.unsubscribe, sub)},
        P + "/identities/{identity}/subscriptions/{device}": {
            "POST": endpoint(ops.subscribe_all, ("pool", "identity", "device"))},
        P + "/configuration": {"GET": endpoint(conf.get_configuration, ("pool",)),
                               "POST": endpoint(conf.set_configuration, ("pool",))},
        P + "/events": {"POST": endpoint(ops.publish_events, ("pool",))},
        P + "/identities/{identity}/trail": {"GET": endpoint(trail.trail, ("pool", "identity"))},
        P + "/identities/{identity}/datasets/{dataset}/trail": {"GET": endpoint(trail.dataset_trail, sub[:3])},
        "/healthz": {"GET": healthz},
        "/readyz": {"GET": readyz},
        "/openapi.json": {"GET": openapi},
    }
    out = []
    for path, handlers in table.items():
        handle, methods = _by_method(**handlers)
        out.append(Route(path, handle, methods=methods))
    return out


class AccessLog:
    """One JSON line per request: method, path, status, milliseconds and who called (a key id or
    an identity id, never the credential); nothing of the body or the headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            who = scope.get("state", {}).get("principal")
            access.info(json.dumps({
                "time": iso_time(time.time()), "method": scope["method"],
                "path": contract.printable(scope["path"], 300), "status": status["code"],
                "ms": round((time.perf_counter() - started) * 1000, 1), "caller": who}))


def create_app() -> Starlette:

    log_setup()
    settings = get_settings()
    from pushsync import client

    client.prepare()
    app = Starlette(routes=routes(), exception_handlers={HTTPException: _http_error})
    app.state.limiter = RateLimiter(settings)
    app.add_middleware(AccessLog)
    return app
