"""`pushsync trace POOL_ID IDENTITY_ID [--dataset D] [--json]`: why did this phone (not) get the
push? The identity's trail (``worker.trail``): its last events, newest first, each with what
ingest made of it and what became of each device's push."""

from __future__ import annotations

import json

from pushsync import contract
from pushsync.cli.common import CommandError, counted, ensure_schema, session
from pushsync.redact import redact_url
from pushsync.settings import get_settings


def load(pool_id: str, identity_id: str, dataset: str | None) -> dict:
    """The trail as ``pushsync.trail.read`` gives it; ``NotFound`` for an unknown pool,
    ``CommandError`` when Redis cannot be reached."""
    import redis

    from pushsync.broker import redis_client
    from pushsync.trail import read
    from store import repo

    ensure_schema()
    with session() as s:
        repo.require_pool(s, pool_id)
    settings = get_settings()
    try:
        return read(redis_client(settings, socket_timeout=5), pool_id, identity_id, dataset)
    except redis.RedisError as exc:
        raise CommandError(f"cannot reach Redis at {redact_url(settings.broker_url)}: {exc}") from None


def human(out: dict, trail_on: bool) -> list[str]:
    """The trail as lines for a terminal (every string in it was made printable by the reader)."""
    what = f"{out['identity']} in {out['pool']}" + (f", dataset {out['dataset']}" if out["dataset"] else "")
    head = f"trail of {what}: {counted(len(out['events']), 'event')}"
    if out["expires_in"] is not None:
        head += f", kept {out['expires_in'] / 3600:.1f} h more"
    if out["skipped"]:
        head += f"; {out['skipped']} unreadable entries skipped"
    if out.get("omitted"):
        head += f"; {out['omitted']} lines left out by the worker (an entry holds at most 300)"
    if not trail_on:
        head += " (the trail is off: PUSHSYNC_TRAIL_ENTRIES or PUSHSYNC_TRAIL_DAYS is 0)"
    lines = [head]
    for e in out["events"]:
        lines.append(f"{e['time']}  {e['dataset']}  count {e['count']}  {e['text']}")
        if e["flushed"]:
            lines.append(f"    {e['flushed']['time']}  {e['flushed']['text']}")
        for d in e["devices"]:
            lines.append(f"    {d['time']}  device {d['device']}  {d['token'] or '-'}  {d['text']}")
    return lines


def trace(args) -> int:
    from worker.trail import limits

    pool_id, identity = contract.pool_id(args.pool_id), contract.identity_id(args.identity_id)
    dataset = contract.dataset_name(args.dataset) if args.dataset is not None else None
    out = load(pool_id, identity, dataset)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(human(out, limits(get_settings())[0] > 0)))
    return 0


def register(sub) -> None:
    tr = sub.add_parser("trace", help="what became of an identity's last events and their pushes")
    tr.add_argument("pool_id", metavar="POOL_ID")
    tr.add_argument("identity_id", metavar="IDENTITY_ID")
    tr.add_argument("--dataset", metavar="D", help="only this dataset's events")
    tr.add_argument("--json", action="store_true", help="the trail as JSON (what the API's trail path answers)")
    tr.set_defaults(func=trace)
