"""`pushsync publish`."""

from __future__ import annotations

from pushsync.cli.common import CommandError
from pushsync.redact import redact_url
from pushsync.settings import get_settings


def publish(args) -> int:
    from pushsync.client import PublishError, publish

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
    pub.set_defaults(func=publish)
