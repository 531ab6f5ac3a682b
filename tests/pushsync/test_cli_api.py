"""`pushsync apikey create|list|revoke`, `token-secret`, `token` and `api`: what they print,
what the store keeps (a hash, a sealed secret) and how they refuse."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from pushsync import tokens
from store.db import engine_for, session_scope
from store.models import ApiKey, Pool

from ..conftest import IDENT, POOL, POOL2, run_cli
from .conftest import one_error_line


def test_apikey_create_prints_the_key_once_and_the_store_keeps_a_hash(store):
    r = run_cli(store, "apikey", "create", POOL, "--scope", "producer,DEVICE")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    key_id = tokens.parse_api_key(key)
    assert key_id and len(r.stdout.splitlines()) == 1
    with session_scope(engine_for(store)) as s:
        row = s.get(ApiKey, key_id)
        assert row.scopes == "device,producer" and row.key_hash == tokens.key_hash(key)
        assert key.split("_", 2)[2] not in row.key_hash
    listed = json.loads(run_cli(store, "apikey", "list", POOL, "--json").stdout)
    assert listed == [{"keyId": key_id, "scopes": ["device", "producer"], "createdAt": listed[0]["createdAt"],
                       "revokedAt": None}]
    assert key not in run_cli(store, "apikey", "list", POOL).stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same SQL as the PostgreSQL tests above
def test_apikey_revoke_and_its_errors(store):
    key_id = tokens.parse_api_key(run_cli(store, "apikey", "create", POOL, "--scope", "admin").stdout.strip())
    assert "revoked" in run_cli(store, "apikey", "revoke", key_id).stdout
    assert "already revoked" in run_cli(store, "apikey", "revoke", key_id).stdout
    assert json.loads(run_cli(store, "apikey", "list", POOL, "--json").stdout)[0]["revokedAt"]
    assert "unknown API key" in one_error_line(run_cli(store, "apikey", "revoke", "0" * 16), 1)
    assert "KEY_ID" in one_error_line(run_cli(store, "apikey", "revoke", "psk_whole_key"), 2)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same SQL as the PostgreSQL tests above
def test_apikey_create_refuses_bad_scopes_and_unknown_pools(store):
    assert "scope" in one_error_line(run_cli(store, "apikey", "create", POOL, "--scope", "device,root"), 2)
    assert "scope" in one_error_line(run_cli(store, "apikey", "create", POOL, "--scope", ","), 2)
    assert "unknown pool" in one_error_line(run_cli(store, "apikey", "create", POOL2, "--scope", "device"), 1)
    with session_scope(engine_for(store)) as s:
        assert s.execute(select(ApiKey)).first() is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same SQL as the PostgreSQL tests above
def test_token_secret_is_sealed_and_token_signs_for_one_identity(store):
    assert "token-secret" in one_error_line(run_cli(store, "token", POOL, IDENT), 1)
    secret = run_cli(store, "token-secret", POOL).stdout.strip()
    with session_scope(engine_for(store)) as s:
        stored = s.get(Pool, POOL).token_secret
    assert stored.startswith("fernet:") and secret not in stored
    tok = run_cli(store, "token", POOL, IDENT, "--ttl", "60").stdout.strip()
    assert tokens.verify_identity_token(tok, secret, POOL, max_ttl=3600) == IDENT
    assert "--ttl" in one_error_line(run_cli(store, "token", POOL, IDENT, "--ttl", "0"), 2)
    assert "unknown pool" in one_error_line(run_cli(store, "token-secret", POOL2), 1)


def test_pool_rekey_reseals_the_token_secret_too(store):
    from pushsync.secrets import new_key

    secret = run_cli(store, "token-secret", POOL).stdout.strip()
    from ..conftest import TEST_SECRET_KEY, cli_env

    fresh = new_key()
    env = cli_env(store, PUSHSYNC_SECRET_KEY=f"{fresh},{TEST_SECRET_KEY}")
    assert run_cli(store, "pool", "rekey", env=env).returncode == 0
    only_new = cli_env(store, PUSHSYNC_SECRET_KEY=fresh)
    tok = run_cli(store, "token", POOL, IDENT, env=only_new)
    assert tok.returncode == 0, tok.stderr
    assert tokens.verify_identity_token(tok.stdout.strip(), secret, POOL, max_ttl=3600) == IDENT


def test_api_refuses_a_bad_port_and_a_store_without_schema(tmp_path):
    assert "--port" in one_error_line(run_cli(f"sqlite:///{tmp_path}/x.db", "api", "--port", "70000"), 2)
    assert "db upgrade" in one_error_line(run_cli(f"sqlite:///{tmp_path}/y.db", "api", "--port", "18999"), 1)


def test_identity_tokens_with_absurd_claims_are_refused_not_raised():
    """Signed with the right secret (so past the signature check) but with claims no back end
    would write: each is a refusal (403 in the API), never an exception (a 500)."""
    import jwt

    secret = "s" * 32
    for exp in ("9" * 400, "1e400", "Infinity", '"soon"', "true"):
        payload = f'{{"sub": "{IDENT}", "pool": "{POOL}", "exp": {exp}}}'.encode()
        token = jwt.api_jws.encode(payload, secret, algorithm="HS256")
        with pytest.raises(tokens.TokenRefused):
            tokens.verify_identity_token(token, secret, POOL, max_ttl=3600)
    for claims in ({"sub": 5, "pool": POOL}, {"sub": IDENT, "pool": ["x"]}, {"sub": IDENT, "pool": None}):
        token = jwt.encode({**claims, "exp": 2_000_000_000}, secret, algorithm="HS256")
        with pytest.raises(tokens.TokenRefused):
            tokens.verify_identity_token(token, secret, POOL, max_ttl=10**12)
