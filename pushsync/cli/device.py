"""`pushsync device register|unregister|import`."""

from __future__ import annotations

import sys

from pushsync import contract
from pushsync.cli.common import Progress, counted, ensure_schema, group, session
from pushsync.contract import ValidationError


def register_device(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    identity = contract.identity_id(args.identity_id)
    platform = contract.platform(args.platform)
    token = contract.device_token(args.token, platform)
    ensure_schema()
    with session() as s:
        repo.require_pool(s, pool_id)
        device_id = repo.register_device(s, pool_id, identity, platform, token)
    print(device_id)
    return 0


def unregister(args) -> int:
    from store import repo

    device_id = contract.device_id(args.device_id)
    ensure_schema()
    with session() as s:
        repo.unregister_device(s, device_id)
    print(f"device {device_id} unregistered")
    return 0


def import_(args) -> int:
    from store.imports import import_lines

    ensure_schema()
    stream = sys.stdin if args.file == "-" else _open_input(args.file)
    progress = Progress()

    def bad(number: int, message: str) -> None:
        print(f"line {number}: {message}", file=sys.stderr)

    def report(seen: int, imported: int, n_bad: int) -> None:
        rate = imported / max(progress.elapsed, 1e-9)
        progress.say(f"... {seen} lines read, {imported} devices imported, {n_bad} bad ({rate:,.0f}/s)")

    with stream:
        imported, n_bad = import_lines(stream, on_bad=bad, on_progress=report)
    print(f"imported {counted(imported, 'device')}, {counted(n_bad, 'bad line')}, in {progress.elapsed:.1f} s")
    return 1 if n_bad else 0


def _open_input(path: str):
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise ValidationError("FILE", f"cannot read {path}: {exc.strerror}") from None


def register(sub) -> None:
    device = group(sub, "device", "device registration")
    reg = device.add_parser("register", help="register a device; prints its id")
    reg.add_argument("pool_id", metavar="POOL_ID")
    reg.add_argument("identity_id", metavar="IDENTITY_ID")
    reg.add_argument("--platform", required=True, metavar="P")
    reg.add_argument("--token", required=True, metavar="T")
    reg.set_defaults(func=register_device)
    unreg = device.add_parser("unregister", help="remove a device and its subscriptions")
    unreg.add_argument("device_id", metavar="DEVICE_ID")
    unreg.set_defaults(func=unregister)
    imp = device.add_parser("import", help="bulk registration from JSON lines (FILE or - for stdin)")
    imp.add_argument("file", metavar="FILE")
    imp.set_defaults(func=import_)
