"""`pushsync dlq list|replay|purge`."""

from __future__ import annotations

import json
import sys

from pushsync import contract
from pushsync.cli.common import CommandError, Progress, counted, ensure_schema, group, session
from pushsync.contract import ValidationError


def list_(args) -> int:
    from store import repo

    ensure_schema()
    with session() as s:
        items = repo.list_dead_letters(s, limit=args.limit)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no dead letters")
    else:
        print(f"{'ID':>6}  {'CREATED (UTC)':<19}  {'KIND':<8} {'PLATFORM':<12} REASON  [IDENTITY DATASET SYNC_COUNT]")
    for d in items:
        what = d["payload"] if isinstance(d["payload"], dict) else {}
        key = " ".join(str(what.get(k)) for k in ("identityId", "datasetName", "syncCount") if k in what)
        # reasons and payloads came from outside: no terminal escapes reach the operator's screen
        print(contract.printable(f"{d['id']:>6}  {d['created_at'][:19]}  {d['kind']:<8} "
                                 f"{d.get('platform') or '-':<12} {d['reason']}  [{key}]", limit=400))
    return 0


def _ids(args) -> list[int] | None:
    if bool(args.ids) == bool(args.all):
        raise ValidationError("ID", "give dead-letter ids or --all, not both and not neither")
    if not args.ids:
        return None
    try:
        return [int(i) for i in args.ids]
    except ValueError:
        raise ValidationError("ID", "dead-letter ids are whole numbers (see `pushsync dlq list`)") from None


def replay(args) -> int:
    from kombu.exceptions import OperationalError as BrokerError

    from worker.app import app
    from worker.replay import replay

    ids = _ids(args)
    ensure_schema()
    progress = Progress()
    try:
        with app.producer_or_acquire() as producer:
            def send(name, arg, queue):
                app.send_task(name, args=[arg], queue=queue, producer=producer)

            res = replay(ids, send, progress=lambda done: progress.say(f"... {done} dead letters replayed"))
    except BrokerError as exc:
        raise CommandError(f"cannot reach the broker: {exc}") from None
    print(f"replayed {counted(res.events, 'event')} and {counted(res.deliveries, 'delivery', 'deliveries')}; "
          f"{counted(res.stale, 'delivery', 'deliveries')} dropped as "
          f"stale (a newer sync count was notified since) in {progress.elapsed:.1f} s")
    if res.unusable:
        print(f"pushsync: {res.unusable} dead letters hold no event or delivery (malformed messages); they stay "
              "in the store for reading (`pushsync dlq list`) and can be purged", file=sys.stderr)
    if res.missing:
        print(f"pushsync: {res.missing} of the ids given are not in the dead-letter store", file=sys.stderr)
        return 1
    return 0


def purge(args) -> int:
    from datetime import timedelta

    from store import repo

    older = timedelta(days=args.older_than) if args.older_than is not None else None
    ensure_schema()
    with session() as s:
        n = repo.purge_dead_letters(s, older)
    print(f"purged {counted(n, 'dead letter')}")
    return 0


def register(sub) -> None:
    dlq = group(sub, "dlq", "the dead-letter store")
    dl = dlq.add_parser("list", help="what could not be delivered, with the reason")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--limit", type=int, default=1000)
    dl.set_defaults(func=list_)
    dr = dlq.add_parser("replay", help="send dead letters through the normal path again")
    dr.add_argument("ids", nargs="*", metavar="ID")
    dr.add_argument("--all", action="store_true")
    dr.set_defaults(func=replay)
    dp = dlq.add_parser("purge", help="empty the dead-letter store")
    dp.add_argument("--older-than", type=float, metavar="DAYS", help="only those older than DAYS days")
    dp.set_defaults(func=purge)
