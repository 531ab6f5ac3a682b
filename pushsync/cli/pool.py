"""`pushsync pool create|show`."""

from __future__ import annotations

import json

from pushsync import contract
from pushsync.cli.common import counted, ensure_schema, group, session
from pushsync.contract import ValidationError
from pushsync.settings import get_settings


def create(args) -> int:
    from pushsync.credentials import load_apns_key, load_fcm_service_account
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    fcm = (load_fcm_service_account(args.fcm_service_account, get_settings().allow_insecure_endpoints)
           if args.fcm_service_account else None)
    apns_given = any([args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic])
    apns = load_apns_key(args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic) if apns_given else None
    rate = contract.fcm_rate(args.fcm_rate) if args.fcm_rate is not None else None
    windows = {platform: contract.window(given, flag) for platform, given, flag in
               (("APNS", args.apns_window, "--apns-window"), ("GCM", args.fcm_window, "--fcm-window"))
               if given is not None}
    by_ref = {"fcm_reference": args.fcm_service_account, "apns_reference": args.apns_key} if args.by_reference else {}
    if args.by_reference and not (fcm or apns):
        raise ValidationError("--by-reference", "needs --fcm-service-account or --apns-key")
    ensure_schema()
    with session() as s:
        created = repo.upsert_pool(s, pool_id, fcm_service_account=fcm, apns=apns, fcm_rate=rate, windows=windows,
                                   **by_ref)
    enabled = [name for name, cred in (("GCM", fcm), ("APNS", apns)) if cred]
    how = "by file reference" if args.by_reference else "encrypted with PUSHSYNC_SECRET_KEY"
    print(f"pool {pool_id} {'created' if created else 'updated'}"
          + (f"; push credentials set for {', '.join(enabled)} ({how})" if enabled else "")
          + (f"; FCM budget {rate} pushes a minute" if rate is not None else "")
          + "".join(f"; {'FCM' if p == 'GCM' else 'APNs'} window {w:g} s" for p, w in windows.items()))
    return 0


def rekey(args) -> int:
    from store import repo

    ring = get_settings().keyring()
    if not ring:
        raise ValidationError("PUSHSYNC_SECRET_KEY", "is not set: put the new key first, then the old ones")
    ensure_schema()
    with session() as s:
        counts = repo.rekey_pools(s, ring)
    print(f"{counted(counts['sealed'], 'secret')} of {counted(counts['pools'], 'pool')} sealed under the first key of "
          f"PUSHSYNC_SECRET_KEY; {counts['references']} file references left as they are")
    return 0


def new_key(_args) -> int:
    from pushsync.secrets import new_key as make

    print(make())
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
    c.add_argument("--fcm-rate", metavar="N/min",
                   help="FCM pushes a minute that all workers together send for this pool's project "
                        f"(default {contract.DEFAULT_FCM_RATE}/min, FCM's default quota); also N/s")
    for name, service in (("apns", "APNs"), ("fcm", "FCM")):
        c.add_argument(f"--{name}-window", metavar="SECONDS",
                       help=f"coalescing window of this pool's {service} pushes: at most one push per device and "
                            "dataset at the start of a window and one with the newest count at its end "
                            "(default PUSHSYNC_COALESCE_WINDOW, 1 s; Apple's guidance for background pushes is "
                            "two or three an hour: 1200)")
    c.add_argument("--by-reference", action="store_true",
                   help="store the files' paths instead of their content (encrypted); the workers read them")
    c.set_defaults(func=create)
    r = pool.add_parser("rekey", help="seal every pool's key material under the first key of PUSHSYNC_SECRET_KEY")
    r.set_defaults(func=rekey)
    k = pool.add_parser("new-key", help="print a new random key for PUSHSYNC_SECRET_KEY")
    k.set_defaults(func=new_key)
    s = pool.add_parser("show", help="the pool's settings, secrets redacted")
    s.add_argument("pool_id", metavar="POOL_ID")
    s.set_defaults(func=show)
