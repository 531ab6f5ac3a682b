"""API keys of the HTTP API and the pools' identity-token signing secrets."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pushsync import tokens
from pushsync.secrets import Keyring
from pushsync.settings import get_settings
from store.models import ApiKey, Pool, utcnow
from store.repo.common import NotFound, rowcount
from store.repo.pools import require_pool


@dataclass(frozen=True)
class Grant:
    """What a valid API key allows: one pool, some scopes."""

    key_id: str
    pool_id: str
    scopes: tuple[str, ...]


def create_api_key(session: Session, pool_id: str, scopes: tuple[str, ...]) -> tuple[str, str]:
    """A new key for the pool: (key id, key). Only a hash of the key is stored."""
    require_pool(session, pool_id)
    key_id, key = tokens.new_api_key()
    session.add(ApiKey(id=key_id, pool_id=pool_id, scopes=",".join(scopes), key_hash=tokens.key_hash(key),
                       created_at=utcnow()))
    session.flush()
    return key_id, key


def list_api_keys(session: Session, pool_id: str) -> list[dict]:
    require_pool(session, pool_id)
    rows = session.execute(select(ApiKey).where(ApiKey.pool_id == pool_id).order_by(ApiKey.created_at, ApiKey.id))
    return [{"keyId": k.id, "scopes": k.scopes.split(","), "createdAt": k.created_at.isoformat(),
             "revokedAt": k.revoked_at.isoformat() if k.revoked_at else None} for k in rows.scalars()]


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke the key; False if it already was. ``NotFound`` for an unknown id."""
    if session.get(ApiKey, key_id) is None:
        raise NotFound(f"unknown API key {key_id}")
    res = session.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                          .values(revoked_at=utcnow()))
    return rowcount(res) > 0


def api_key_grant(session: Session, key: str) -> Grant | None:
    """The grant of a key that exists, matches its hash and is not revoked; else None."""
    key_id = tokens.parse_api_key(key)
    if key_id is None:
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, tokens.key_hash(key)):
        return None
    return Grant(key_id=row.id, pool_id=row.pool_id, scopes=tuple(row.scopes.split(",")))


def set_token_secret(session: Session, pool_id: str, keyring: Keyring | None = None) -> str:
    """A new signing secret for the pool's identity tokens, sealed like key material; returns it
    (to be shown once). Tokens signed with the previous secret stop working."""
    require_pool(session, pool_id)
    keyring = get_settings().keyring() if keyring is None else keyring
    secret = tokens.new_signing_secret()
    session.execute(update(Pool).where(Pool.id == pool_id).values(token_secret=keyring.seal(secret)))
    return secret


def token_secret(session: Session, pool_id: str, keyring: Keyring | None = None) -> str | None:
    """The pool's signing secret opened (``SecretError`` if it cannot be); None without one."""
    stored = session.execute(select(Pool.token_secret).where(Pool.id == pool_id)).scalar()
    if stored is None:
        return None
    return (get_settings().keyring() if keyring is None else keyring).open(stored)
