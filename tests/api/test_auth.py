"""Who may do what: API key scopes, identity tokens limited to their one identity, nothing
across pools, revoked keys, rate limits. Every refusal is 403 NotAuthorizedException (429 for
rate limits) and changes nothing."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from store.db import engine_for, session_scope
from store.models import Device
from tests.conftest import IDENT, POOL, POOL2
from tests.e2e.harness import new_identity, wait_for

from .conftest import identity_token, make_key
from .harness import ApiServer, error_type, paths

GCM = {"Platform": "GCM", "Token": "fcm-auth"}
EVENT = {"identityId": IDENT, "datasetName": "notes", "syncCount": 1}


def _devices(pipe) -> int:
    with session_scope(engine_for(pipe.db_url)) as s:
        return s.execute(select(func.count()).select_from(Device)).scalar()


def _refused(r, text: str | None = None):
    assert r.status_code == 403, r.text
    assert error_type(r) == "NotAuthorizedException"
    if text:
        assert text in r.json()["message"], r.text


def test_missing_or_malformed_credentials_are_refused(api, pipe, keys):
    before = _devices(pipe)
    p = paths(POOL, IDENT)["register"]
    _refused(api.call("POST", p, GCM), "missing credentials")
    _refused(api.call("POST", p, GCM, headers={"Authorization": f"Basic {keys['device']}"}), "Bearer")
    _refused(api.call("POST", p, GCM, "psk_0123456789abcdef_" + "A" * 43), "unknown or revoked")
    _refused(api.call("POST", p, GCM, keys["device"][:-1] + ("A" if keys["device"][-1] != "A" else "B")))
    _refused(api.call("POST", p, GCM, "not.a.jwt"))
    for mistyped in ("wrongkey", keys["device"].replace("psk_", "pks_"), "psk-" + "A" * 20):
        _refused(api.call("POST", p, GCM, mistyped), "not a valid API key (keys start with psk_)")
    assert _devices(pipe) == before


def test_each_scope_allows_its_operations_only(api, keys):
    reg, ev, conf = paths(POOL, IDENT)["register"], paths(POOL, IDENT)["events"], paths(POOL, IDENT)["configuration"]
    _refused(api.call("POST", reg, GCM, keys["producer"]), "device scope")
    _refused(api.call("POST", reg, GCM, keys["admin"]), "device scope")
    _refused(api.call("POST", ev, EVENT, keys["device"]), "producer scope")
    _refused(api.call("POST", ev, EVENT, keys["admin"]), "producer scope")
    _refused(api.call("GET", conf, cred=keys["device"]), "admin scope")
    _refused(api.call("GET", conf, cred=keys["producer"]), "admin scope")
    assert api.call("POST", reg, GCM, keys["device"]).status_code == 200
    assert api.call("POST", ev, EVENT, keys["producer"]).status_code == 202
    assert api.call("GET", conf, cred=keys["admin"]).status_code == 200


def test_a_key_of_one_pool_can_do_nothing_in_another(api, keys, pipe):
    before = _devices(pipe)
    other = keys["other_pool"]
    _refused(api.call("POST", paths(POOL, IDENT)["register"], GCM, other), "not for pool")
    _refused(api.call("POST", paths(POOL, IDENT)["events"], EVENT, other))
    _refused(api.call("GET", paths(POOL, IDENT)["configuration"], cred=other))
    assert _devices(pipe) == before
    # and the same key works on its own pool
    assert api.call("GET", paths(POOL2, IDENT)["configuration"], cred=other).status_code == 200


def test_an_identity_token_cannot_touch_another_identity_another_pool_events_or_configuration(api, keys, secrets,
                                                                                               pipe):
    x, y = new_identity(), new_identity()
    y_device = api.call("POST", paths(POOL, y)["register"], {"Platform": "GCM", "Token": f"fcm-{y[-8:]}"},
                        keys["device"]).json()["DeviceId"]
    x_token = identity_token(secrets, identity=x)
    before = _devices(pipe)
    _refused(api.call("POST", paths(POOL, y)["register"], GCM, x_token), "another identity")
    _refused(api.call("POST", paths(POOL, y, y_device)["subscribe"], cred=x_token), "another identity")
    _refused(api.call("DELETE", paths(POOL, y, y_device)["subscribe"], cred=x_token), "another identity")
    _refused(api.call("POST", paths(POOL, y, y_device)["subscribe_all"], cred=x_token), "another identity")
    # Y's device under X's own path is simply not X's
    r = api.call("POST", paths(POOL, x, y_device)["subscribe"], cred=x_token)
    assert r.status_code == 404 and error_type(r) == "ResourceNotFoundException"
    _refused(api.call("POST", paths(POOL2, x)["register"], GCM, x_token))
    _refused(api.call("POST", paths(POOL, x)["events"], {**EVENT, "identityId": x}, x_token), "identity token")
    _refused(api.call("GET", paths(POOL, x)["configuration"], cred=x_token), "identity token")
    assert _devices(pipe) == before


def test_expired_forged_or_long_lived_identity_tokens_are_refused(api, secrets):
    ident = new_identity()
    reg = paths(POOL, ident)["register"]
    _refused(api.call("POST", reg, GCM, identity_token(secrets, identity=ident, ttl=-120)), "expired")
    _refused(api.call("POST", reg, GCM, identity_token(secrets, identity=ident, ttl=7 * 86400)), "longer than")
    forged = {POOL: secrets[POOL2]}  # signed with the other pool's secret
    _refused(api.call("POST", reg, GCM, identity_token(forged, identity=ident)), "not valid")
    # a token that names POOL2, signed with POOL's secret, used on POOL: refused by its claim
    import jwt

    claims = {"sub": ident, "pool": POOL2, "exp": int(time.time()) + 300}
    _refused(api.call("POST", reg, GCM, jwt.encode(claims, secrets[POOL], algorithm="HS256")), "another pool")
    none_alg = jwt.encode({**claims, "pool": POOL}, key="", algorithm="none")
    _refused(api.call("POST", reg, GCM, none_alg))
    # a back end that writes the ids in upper case signs for the same pool and identity
    upper = jwt.encode({**claims, "pool": POOL.upper(), "sub": ident.upper()}, secrets[POOL], algorithm="HS256")
    assert api.call("POST", reg, {"Platform": "GCM", "Token": f"fcm-upper-{ident[-6:]}"}, upper).status_code == 200


def test_a_revoked_key_stops_working(api, pipe):
    key = make_key(pipe, POOL, "admin")
    conf = paths(POOL, IDENT)["configuration"]
    assert api.call("GET", conf, cred=key).status_code == 200
    key_id = key.split("_")[1]
    assert "revoked" in pipe.cli("apikey", "revoke", key_id).stdout
    _refused(api.call("GET", conf, cred=key), "unknown or revoked")


def test_a_new_signing_secret_ends_the_tokens_of_the_old_one(api, pipe, secrets):
    ident = new_identity()
    old = identity_token(secrets, identity=ident)
    new_secret = pipe.cli("token-secret", POOL).stdout.strip()
    secrets[POOL] = new_secret
    _refused(api.call("POST", paths(POOL, ident)["register"], GCM, old), "not valid")
    fresh = identity_token(secrets, identity=ident)
    assert api.call("POST", paths(POOL, ident)["register"], {"Platform": "GCM", "Token": f"fcm-{ident[-8:]}"},
                    fresh).status_code == 200


@pytest.fixture(scope="module")
def limited(pipe):
    env = {**pipe.env, "PUSHSYNC_API_KEY_RATE": "5", "PUSHSYNC_API_IDENTITY_RATE": "2"}
    server = ApiServer(pipe.dir, env)
    yield server
    server.stop()


def _burst(server, n, *args):
    # start at the beginning of a second, so that the burst falls in one window
    time.sleep(1 - time.time() % 1 + 0.01)
    return [server.call(*args) for _ in range(n)]


def test_rate_limits_answer_429_with_retry_after_per_key_and_per_identity(limited, keys, secrets):
    conf = paths(POOL, IDENT)["configuration"]
    answers = _burst(limited, 8, "GET", conf, None, keys["admin"])
    assert [r.status_code for r in answers[:5]] == [200] * 5
    late = answers[5:]
    assert all(r.status_code == 429 and error_type(r) == "TooManyRequestsException" for r in late)
    assert all(1 <= int(r.headers["Retry-After"]) <= 1 for r in late)
    # another key has its own count
    assert limited.call("GET", conf, cred=keys["all"]).status_code == 200
    ident = new_identity()
    reg = paths(POOL, ident)["register"]
    body = {"Platform": "GCM", "Token": f"fcm-{ident[-8:]}"}
    # two tokens of one identity share its count
    first, second = identity_token(secrets, identity=ident), identity_token(secrets, identity=ident, ttl=300)
    time.sleep(1 - time.time() % 1 + 0.01)
    codes = [limited.call("POST", reg, body, t).status_code for t in (first, second, first, second)]
    assert codes == [200, 200, 429, 429]
    time.sleep(1.1)
    assert limited.call("POST", reg, body, second).status_code == 200


def test_a_body_is_not_read_before_the_credential_is_checked(api):
    """A client that announces a 1 MiB body and sends none of it, without a valid credential, is
    answered at once (403, the body never read): no attacker can make the API read and parse
    megabytes for free. The connection is closed for it, not kept waiting for the body."""
    import socket
    import time

    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        path = f"/identitypools/{POOL}/events"
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer psk_0123456789abcdef_{'A' * 43}\r\n"
                      f"Content-Length: {1024 * 1024 - 10}\r\n\r\n").encode())
        started = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert time.monotonic() - started < 2


def test_with_the_default_key_cache_a_revoked_key_and_a_replaced_secret_stop_working_within_seconds(pipe, secrets):
    """The other API tests turn the cache off; this one runs the default (5 s): a key and a
    signing secret are served from the cache, then the key is revoked and the secret replaced,
    and within the cache's time both are refused (not for as long as the API runs)."""
    env = {k: v for k, v in pipe.env.items() if k != "PUSHSYNC_API_KEY_CACHE"}
    server = ApiServer(pipe.dir, env)
    try:
        key = make_key(pipe, POOL, "admin")
        conf = paths(POOL, IDENT)["configuration"]
        ident = new_identity()
        old_token = identity_token(secrets, identity=ident)
        reg = paths(POOL, ident)["register"]
        assert server.call("GET", conf, cred=key).status_code == 200  # both now cached
        device = {"Platform": "GCM", "Token": f"fcm-c-{ident[-8:]}"}
        assert server.call("POST", reg, device, old_token).status_code == 200
        pipe.cli("apikey", "revoke", key.split("_")[1])
        secrets[POOL] = pipe.cli("token-secret", POOL).stdout.strip()  # the tests after this one sign with it
        changed = time.monotonic()
        assert server.call("GET", conf, cred=key).status_code == 200  # still cached: the default is 5 s

        def both_refused():
            return (server.call("GET", conf, cred=key).status_code == 403
                    and server.call("POST", reg, GCM, old_token).status_code == 403)
        wait_for(both_refused, 10, 0.25, what="the revoked key and the old secret refused")
        assert time.monotonic() - changed <= 7.5
    finally:
        server.stop()


def test_a_caller_without_a_valid_credential_learns_nothing_of_its_body(api, keys):
    """The credential is checked before the body is parsed, whichever way the body is read (one
    declared small is read first, parsed after the check; a larger one only after the check): a
    body that is not JSON, or too large, is refused as the credential is, not as a bad body."""
    p = paths(POOL, IDENT)["register"]
    small_bad, large_bad, too_large = b'{"Platform": ', b"[" + b"1," * 40_000 + b"x", b"[" + b"1," * 600_000 + b"1]"
    for raw in (small_bad, large_bad, too_large):
        _refused(api.call("POST", p, raw=raw), "missing credentials")
        _refused(api.call("POST", p, cred="psk_not-a-key", raw=raw))
        r = api.call("POST", p, cred=keys["device"], raw=raw)  # with one, the body's own error
        assert r.status_code == 400 and error_type(r) == "InvalidParameterException", r.text
