"""Credentials of the HTTP API (CONTRACT section 7): API keys and identity tokens.

An API key is ``psk_<key id>_<secret>``: the key id finds the row, the store keeps only a SHA-256
of the whole key (the secret is 256 random bits, so a plain hash is as good as a slow one), and
the key is shown once, when it is made.

An identity token is a JWT (HS256) that the app's back end signs with its pool's signing secret
(``pushsync pool token-secret``), naming one identity of that pool: it lets the app register that
identity's devices and manage their subscriptions, nothing else. Claims: ``sub`` the identity id,
``pool`` the pool id, ``exp`` (required; at most PUSHSYNC_API_TOKEN_MAX_TTL seconds ahead) and
``iat``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from pushsync import contract
from pushsync.contract import ValidationError

SCOPES = ("device", "producer", "admin")
KEY_PREFIX = "psk_"
_KEY_RE = re.compile(r"psk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
ALGORITHM = "HS256"


def scopes(value: str | list[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = {s.strip().lower() for s in items if s.strip()}
    unknown = [s for s in out if s not in SCOPES]
    if not out or unknown:
        raise ValidationError("scope", f"must be one or more of {', '.join(SCOPES)}, comma-separated",
                              ",".join(sorted(unknown)) or value)
    return tuple(s for s in SCOPES if s in out)


def new_api_key() -> tuple[str, str]:
    """A new (key id, key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def parse_api_key(value: str) -> str | None:
    """The key id of something shaped like an API key, else None."""
    match = _KEY_RE.fullmatch(value)
    return match.group(1) if match else None


def key_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_signing_secret() -> str:
    return secrets.token_urlsafe(32)


def sign_identity_token(secret: str, pool_id: str, identity_id: str, ttl: float = 900.0,
                        now: float | None = None) -> str:
    """What the app's back end does (in any language with a JWT library); here for the CLI and tests."""
    import jwt

    now = time.time() if now is None else now
    claims = {"sub": contract.identity_id(identity_id), "pool": contract.pool_id(pool_id),
              "iat": int(now), "exp": int(now + ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class TokenRefused(ValueError):
    """An identity token that does not authorise anything; the message says why (never the token)."""


def verify_identity_token(token: str, secret: str, pool_id: str, max_ttl: float, leeway: float = 30.0) -> str:
    """The identity id the token names, after checking its signature (with this pool's secret),
    its pool and its lifetime."""
    import jwt

    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], leeway=leeway,
                            options={"require": ["exp", "sub", "pool"]})
    except jwt.ExpiredSignatureError:
        raise TokenRefused("the identity token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenRefused(f"the identity token is not valid for this pool ({type(exc).__name__})") from None
    except (OverflowError, ValueError, TypeError):  # claims PyJWT's own checks do not expect
        raise TokenRefused("the identity token's claims are not numbers a token can have") from None
    pool = claims.get("pool")
    # ids are accepted in any case and compared lower-case (CONTRACT section 1)
    if not isinstance(pool, str) or pool.lower() != pool_id:
        raise TokenRefused("the identity token is for another pool")
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not exp <= time.time() + max_ttl + leeway:
        raise TokenRefused(f"the identity token lives longer than {max_ttl:g} s (PUSHSYNC_API_TOKEN_MAX_TTL)")
    try:
        return contract.identity_id(claims["sub"])
    except ValidationError:
        raise TokenRefused("the identity token's sub is not an identity id") from None


def is_key_id(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{16}", value))
