"""`pushsync pool create|show`."""

from __future__ import annotations

import json

from pushsync import contract
from pushsync.cli.common import ensure_schema, group, session
from pushsync.settings import get_settings


def create(args) -> int:
    from pushsync.credentials import load_apns_key, load_fcm_service_account
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    fcm = (load_fcm_service_account(args.fcm_service_account, get_settings().allow_insecure_endpoints)
           if args.fcm_service_account else None)
    apns_given = any([args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic])
    apns = load_apns_key(args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic) if apns_given else None
    ensure_schema()
    with session() as s:
        created = repo.upsert_pool(s, pool_id, fcm_service_account=fcm, apns=apns)
    enabled = [name for name, cred in (("GCM", fcm), ("APNS", apns)) if cred]
    print(f"pool {pool_id} {'created' if created else 'updated'}"
          + (f"; push credentials set for {', '.join(enabled)}" if enabled else ""))
    return 0


def show(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    ensure_schema()
    with session() as s:
        summary = repo.pool_summary(s, pool_id)
    print(json.dumps(summary, indent=2))
    return 0


def register(sub) -> None:
    pool = group(sub, "pool", "identity pools and their push credentials")
    c = pool.add_parser("create", help="register a pool and its push credentials")
    c.add_argument("pool_id", metavar="POOL_ID")
    c.add_argument("--fcm-service-account", metavar="FILE")
    c.add_argument("--apns-key", metavar="FILE")
    c.add_argument("--apns-key-id", metavar="ID")
    c.add_argument("--apns-team-id", metavar="ID")
    c.add_argument("--apns-topic", metavar="BUNDLE_ID")
    c.set_defaults(func=create)
    s = pool.add_parser("show", help="the pool's settings, secrets redacted")
    s.add_argument("pool_id", metavar="POOL_ID")
    s.set_defaults(func=show)
