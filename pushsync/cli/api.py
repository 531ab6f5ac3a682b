"""`pushsync api`, `pushsync apikey create|list|revoke`, `pushsync token-secret` and `pushsync token`."""

from __future__ import annotations

import json
import sys

from pushsync import contract, tokens
from pushsync.cli.common import CommandError, ensure_schema, group, session
from pushsync.contract import ValidationError


def serve(args) -> int:
    from api.server import serve as run

    if not 1 <= args.port <= 65535:
        raise ValidationError("--port", "must be 1-65535", args.port)
    if args.workers < 1:
        raise ValidationError("--workers", "must be at least 1", args.workers)
    ensure_schema()
    return run(args.host, args.port, args.workers)


def key_create(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    scopes = tokens.scopes(args.scope)
    ensure_schema()
    with session() as s:
        key_id, key = repo.create_api_key(s, pool_id, scopes)
    print(key)
    print(f"API key {key_id} for pool {pool_id}, scopes {','.join(scopes)}: shown once, keep it", file=sys.stderr)
    return 0


def key_list(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    ensure_schema()
    with session() as s:
        keys = repo.list_api_keys(s, pool_id)
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    for k in keys:
        state = f"revoked {k['revokedAt']}" if k["revokedAt"] else "active"
        print(f"{k['keyId']}  {','.join(k['scopes']):<22} created {k['createdAt']}  {state}")
    return 0


def key_revoke(args) -> int:
    from store import repo

    if not tokens.is_key_id(args.key_id):
        raise ValidationError("KEY_ID", "must be the 16-character key id that `apikey list` shows", args.key_id)
    ensure_schema()
    with session() as s:
        revoked = repo.revoke_api_key(s, args.key_id)
    print(f"API key {args.key_id} {'revoked' if revoked else 'was already revoked'}")
    return 0


def token_secret(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    ensure_schema()
    with session() as s:
        secret = repo.set_token_secret(s, pool_id)
    print(secret)
    print(f"new identity-token signing secret for pool {pool_id}: shown once; tokens signed with the previous "
          "one no longer work", file=sys.stderr)
    return 0


def token(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    identity = contract.identity_id(args.identity_id)
    if not 1 <= args.ttl <= 86400:
        raise ValidationError("--ttl", "must be 1-86400 seconds", args.ttl)
    ensure_schema()
    with session() as s:
        repo.require_pool(s, pool_id)
        secret = repo.token_secret(s, pool_id)
    if secret is None:
        raise CommandError(f"pool {pool_id} has no signing secret: run `pushsync token-secret {pool_id}` first")
    print(tokens.sign_identity_token(secret, pool_id, identity, args.ttl))
    return 0


def register(sub) -> None:
    a = sub.add_parser("api", help="serve the HTTP API")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8080)
    a.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    a.set_defaults(func=serve)
    keys = group(sub, "apikey", "API keys of the HTTP API")
    c = keys.add_parser("create", help="make a key for a pool; prints it once")
    c.add_argument("pool_id", metavar="POOL_ID")
    c.add_argument("--scope", required=True, metavar="device[,producer,admin]")
    c.set_defaults(func=key_create)
    ls = keys.add_parser("list", help="the pool's keys (never the keys themselves)")
    ls.add_argument("pool_id", metavar="POOL_ID")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=key_list)
    r = keys.add_parser("revoke", help="revoke a key")
    r.add_argument("key_id", metavar="KEY_ID")
    r.set_defaults(func=key_revoke)
    ts = sub.add_parser("token-secret", help="make a new identity-token signing secret for a pool; prints it once")
    ts.add_argument("pool_id", metavar="POOL_ID")
    ts.set_defaults(func=token_secret)
    t = sub.add_parser("token", help="sign an identity token (what the app's back end does), for trying the API")
    t.add_argument("pool_id", metavar="POOL_ID")
    t.add_argument("identity_id", metavar="IDENTITY_ID")
    t.add_argument("--ttl", type=int, default=900, help="seconds it lives (default 900)")
    t.set_defaults(func=token)
