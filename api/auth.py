"""Who is calling: an API key of the pool (with scopes) or an identity token of the pool (one
identity), from ``Authorization: Bearer <credential>``. Each answer of the store is kept for
PUSHSYNC_API_KEY_CACHE seconds per process, so that a revoked key or a new signing secret takes
effect within that time without a store round trip per request."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from api.errors import InternalError, NotAuthorized
from pushsync import tokens
from pushsync.secrets import SecretError
from pushsync.settings import get_settings


@dataclass(frozen=True)
class Principal:
    kind: str  # "key" or "identity"
    pool_id: str
    scopes: tuple[str, ...] = ()
    identity_id: str | None = None
    key_id: str | None = None

    @property
    def bucket(self) -> str:
        """What its rate limit counts: the key, or the identity (however many tokens it holds)."""
        return f"key:{self.key_id}" if self.kind == "key" else f"identity:{self.pool_id}:{self.identity_id}"

    @property
    def label(self) -> str:
        """For the access log: never the credential itself."""
        return f"key {self.key_id}" if self.kind == "key" else f"identity {self.identity_id}"


class _Cache:
    def __init__(self):
        self._items: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load):
        ttl = get_settings().api_key_cache
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        if ttl > 0:
            with self._lock:
                if len(self._items) > 10_000:
                    self._items.clear()
                self._items[key] = (now + ttl, value)
        return value

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


_grants = _Cache()
_secrets = _Cache()
_platforms = _Cache()


def pool_platforms(pool_id: str) -> set[str]:
    """The platforms the pool has credentials for, from the same short-lived cache (``NotFound``
    for an unknown pool is not cached)."""
    from store import repo
    from store.db import session_scope

    def load():
        with session_scope() as s:
            return repo.pool_platforms(s, pool_id)

    return _platforms.get(pool_id, load)


def pool_changed(pool_id: str) -> None:
    """This process changed the pool: its next requests read it again."""
    _platforms.forget(pool_id)


def _credential(header: str | None) -> str:
    if not header:
        raise NotAuthorized("missing credentials: send Authorization: Bearer <API key or identity token>")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NotAuthorized("the Authorization header must be: Bearer <API key or identity token>")
    return value.strip()


def authenticate(header: str | None, pool_id: str) -> Principal:
    """The caller, for a request on ``pool_id``; ``NotAuthorized`` for anything that is not a valid
    credential of that very pool."""
    from store import repo
    from store.db import session_scope

    credential = _credential(header)
    if credential.startswith(tokens.KEY_PREFIX):
        def load_grant():
            with session_scope() as s:
                return repo.api_key_grant(s, credential)

        grant = _grants.get(tokens.key_hash(credential), load_grant)
        if grant is None:
            raise NotAuthorized("unknown or revoked API key")
        if grant.pool_id != pool_id:
            raise NotAuthorized(f"this API key is not for pool {pool_id}")
        return Principal("key", pool_id, scopes=grant.scopes, key_id=grant.key_id)
    if credential.count(".") != 2:  # an identity token is a JWT: three dot-separated parts
        raise NotAuthorized(f"not a valid API key (keys start with {tokens.KEY_PREFIX}) nor an identity token "
                            "(a signed JWT)")

    def load_secret():
        with session_scope() as s:
            return repo.token_secret(s, pool_id)

    try:
        secret = _secrets.get(pool_id, load_secret)
    except SecretError as exc:
        raise InternalError(f"the pool's token signing secret cannot be opened: {exc}") from None
    if secret is None:
        raise NotAuthorized(f"identity tokens are not enabled for pool {pool_id} (no signing secret)")
    try:
        identity = tokens.verify_identity_token(credential, secret, pool_id, get_settings().api_token_max_ttl)
    except tokens.TokenRefused as exc:
        raise NotAuthorized(str(exc)) from None
    return Principal("identity", pool_id, identity_id=identity)


def require(principal: Principal, scope: str, identity_id: str | None = None) -> None:
    """``scope`` is what the operation needs; an identity token may do device work on its own
    identity and nothing else."""
    if principal.kind == "identity":
        if scope != "device":
            raise NotAuthorized(f"an identity token cannot do this (needs an API key with the {scope} scope)")
        if identity_id != principal.identity_id:
            raise NotAuthorized("this identity token is for another identity")
        return
    if scope not in principal.scopes:
        raise NotAuthorized(f"this API key lacks the {scope} scope")
