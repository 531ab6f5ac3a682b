"""`pushsync publish`."""

from __future__ import annotations

from pushsync.cli.common import CommandError, ensure_schema, session
from pushsync.redact import redact_url
from pushsync.settings import get_settings


def _check_pool(pool_id: str) -> None:
    """A mistyped pool id would otherwise look like success: the event goes to the dead letters."""
    from sqlalchemy.exc import OperationalError

    from store.repo import NotFound, require_pool

    try:
        ensure_schema()
        with session() as s:
            require_pool(s, pool_id)
    except NotFound:
        raise CommandError(f"unknown pool {pool_id}: nothing enqueued (create it with `pushsync pool create`, "
                           "or publish with --no-check to skip this look-up)") from None
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0]
        raise CommandError(f"the store is unreachable or failing ({first}), so the pool could not be checked: "
                           "nothing enqueued (--no-check publishes without asking the store)") from None


def publish(args) -> int:
    from pushsync import contract
    from pushsync.client import PublishError, publish

    if not args.no_check:
        contract.event({"identityPoolId": args.pool_id, "identityId": args.identity_id,  # bad input first: exit 2
                        "datasetName": args.dataset, "syncCount": args.sync_count})
        _check_pool(args.pool_id)
    try:
        event = publish(args.pool_id, args.identity_id, args.dataset, args.sync_count,
                        origin_device_id=args.origin_device, event_id=args.event_id)
    except PublishError as exc:
        raise CommandError(f"cannot reach the broker at {redact_url(get_settings().broker_url)}: {exc}") from None
    print(f"enqueued {event['datasetName']} sync count {event['syncCount']} for {event['identityId']}")
    return 0


def register(sub) -> None:
    pub = sub.add_parser("publish", help="enqueue one change event")
    for arg in ("pool_id", "identity_id", "dataset"):
        pub.add_argument(arg, metavar=arg.upper())
    pub.add_argument("sync_count", metavar="SYNC_COUNT")
    pub.add_argument("--origin-device", metavar="DEVICE_ID", help="the device that made the change; not notified")
    pub.add_argument("--event-id", metavar="ID", help="your idempotency key, kept with the event")
    pub.add_argument("--no-check", action="store_true",
                     help="do not ask the store whether the pool exists (for producers without store access)")
    pub.set_defaults(func=publish)
