"""The ``pushsync`` command (CONTRACT section 4).

Errors print one line to stderr: exit 2 for bad input (a field, a setting, a file), exit 1
for everything else (unknown pool or device, the store or the broker unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from pushsync import contract
from pushsync.contract import ValidationError
from pushsync.settings import SettingsError, get_settings


class CommandError(Exception):
    """A failure that is not the caller's input: exit 1 with this message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"pushsync: {message}\n")


def _session():
    from store.db import session_scope

    return session_scope()


def _ensure_schema() -> None:
    from sqlalchemy import inspect

    from store.db import get_engine

    if not inspect(get_engine()).has_table("devices"):
        raise CommandError("the store has no schema yet: run `pushsync db upgrade` first")


# -- db, pool -------------------------------------------------------------------------------

def cmd_db_upgrade(args) -> int:
    from store.migrate import current, upgrade

    url = get_settings().database_url
    upgrade(url)
    print(f"store at revision {current(url)}")
    return 0


def cmd_pool_create(args) -> int:
    from pushsync.credentials import load_apns_key, load_fcm_service_account
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    fcm = (load_fcm_service_account(args.fcm_service_account, get_settings().allow_insecure_endpoints)
           if args.fcm_service_account else None)
    apns_given = any([args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic])
    apns = load_apns_key(args.apns_key, args.apns_key_id, args.apns_team_id, args.apns_topic) if apns_given else None
    _ensure_schema()
    with _session() as s:
        created = repo.upsert_pool(s, pool_id, fcm_service_account=fcm, apns=apns)
    enabled = [name for name, cred in (("GCM", fcm), ("APNS", apns)) if cred]
    print(f"pool {pool_id} {'created' if created else 'updated'}"
          + (f"; push credentials set for {', '.join(enabled)}" if enabled else ""))
    return 0


def cmd_pool_show(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    _ensure_schema()
    with _session() as s:
        summary = repo.pool_summary(s, pool_id)
    print(json.dumps(summary, indent=2))
    return 0


# -- devices --------------------------------------------------------------------------------

def cmd_device_register(args) -> int:
    from store import repo

    pool_id = contract.pool_id(args.pool_id)
    identity = contract.identity_id(args.identity_id)
    platform = contract.platform(args.platform)
    token = contract.device_token(args.token, platform)
    _ensure_schema()
    with _session() as s:
        repo.require_pool(s, pool_id)
        device_id = repo.register_device(s, pool_id, identity, platform, token)
    print(device_id)
    return 0


def cmd_device_unregister(args) -> int:
    from store import repo

    device_id = contract.device_id(args.device_id)
    _ensure_schema()
    with _session() as s:
        repo.unregister_device(s, device_id)
    print(f"device {device_id} unregistered")
    return 0


IMPORT_CHUNK = 2000


def parse_import_line(line: str) -> tuple[str, str, str, str, list[str]]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValidationError("line", f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValidationError("line", "must be a JSON object")
    for key in ("identityPoolId", "identityId", "platform", "token"):
        if key not in data:
            raise ValidationError(key, "is required")
    platform = contract.platform(data["platform"])
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list):
        raise ValidationError("datasets", "must be a list of dataset names")
    return (contract.pool_id(data["identityPoolId"]), contract.identity_id(data["identityId"]), platform,
            contract.device_token(data["token"], platform), [contract.dataset_name(d) for d in datasets])


def import_devices(lines, *, on_bad: Callable[[int, str], None],
                   on_progress: Callable[[int, int, int], None] | None = None) -> tuple[int, int]:
    """Register and subscribe devices from JSON lines, one transaction per chunk of lines.

    Returns (imported, bad). A bad line is reported through ``on_bad(line_number, message)``
    and skipped; the good lines of its chunk are still imported.
    """
    from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

    from store import repo

    known_pools: dict[str, bool] = {}
    imported = bad = seen = 0
    pending: list[tuple[str, str, str, str, list[str]]] = []
    numbers: list[int] = []

    def flush():
        nonlocal imported, bad
        if not pending:
            return
        try:
            with _session() as s:
                repo.import_devices(s, pending)
            imported += len(pending)
        except (DataError, IntegrityError, ProgrammingError):
            # the store refused something in the chunk: line by line, so that only the lines
            # it refuses again are reported, and the good lines of the chunk still go in
            for number, row in zip(numbers, pending, strict=True):
                try:
                    with _session() as s:
                        repo.import_devices(s, [row])
                    imported += 1
                except (DataError, IntegrityError, ProgrammingError) as exc:
                    bad += 1
                    on_bad(number, f"the store refused it: {str(exc.orig).strip().splitlines()[0][:200]}")
        pending.clear()
        numbers.clear()

    for number, line in enumerate(lines, start=1):
        seen = number
        if not line.strip():
            continue
        try:
            row = parse_import_line(line)
        except ValidationError as exc:
            bad += 1
            on_bad(number, str(exc))
            continue
        pool = row[0]
        if pool not in known_pools:
            with _session() as s:
                known_pools[pool] = bool(repo.pool_versions(s, [pool]))
        if not known_pools[pool]:
            bad += 1
            on_bad(number, f"identityPoolId: unknown pool {pool} (create it with `pushsync pool create`)")
            continue
        pending.append(row)
        numbers.append(number)
        if len(pending) >= IMPORT_CHUNK:
            flush()
            if on_progress:
                on_progress(seen, imported, bad)
    flush()
    if on_progress:
        on_progress(seen, imported, bad)
    return imported, bad


def cmd_device_import(args) -> int:
    _ensure_schema()
    stream = sys.stdin if args.file == "-" else _open_input(args.file)
    started = time.monotonic()
    last = [0.0]

    def bad(number: int, message: str) -> None:
        print(f"line {number}: {message}", file=sys.stderr)

    def progress(seen: int, imported: int, n_bad: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 1.0:
            last[0] = now
            rate = imported / max(now - started, 1e-9)
            print(f"... {seen} lines read, {imported} devices imported, {n_bad} bad ({rate:,.0f}/s)",
                  file=sys.stderr)

    with stream:
        imported, n_bad = import_devices(stream, on_bad=bad, on_progress=progress)
    elapsed = time.monotonic() - started
    print(f"imported {imported} devices, {n_bad} bad lines, in {elapsed:.1f} s")
    return 1 if n_bad else 0


def _open_input(path: str):
    try:
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise ValidationError("FILE", f"cannot read {path}: {exc.strerror}") from None


# -- subscriptions --------------------------------------------------------------------------

def _pid_iid_dev(args) -> tuple[str, str, str]:
    return (contract.pool_id(args.pool_id), contract.identity_id(args.identity_id),
            contract.device_id(args.device_id))


def cmd_subscribe(args) -> int:
    from store import repo

    pool_id, identity, device_id = _pid_iid_dev(args)
    dataset = contract.dataset_name(args.dataset)
    _ensure_schema()
    with _session() as s:
        repo.require_pool(s, pool_id)
        new = repo.subscribe(s, pool_id, identity, [dataset], device_id)
    print(f"device {device_id} {'subscribed' if new else 'already subscribed'} to {dataset}")
    return 0


def cmd_unsubscribe(args) -> int:
    from store import repo

    pool_id, identity, device_id = _pid_iid_dev(args)
    dataset = contract.dataset_name(args.dataset)
    _ensure_schema()
    with _session() as s:
        repo.require_pool(s, pool_id)
        removed = repo.unsubscribe(s, pool_id, identity, dataset, device_id)
    print(f"device {device_id} {'unsubscribed from' if removed else 'was not subscribed to'} {dataset}")
    return 0


def cmd_subscribe_all(args) -> int:
    from store import repo

    pool_id, identity, device_id = _pid_iid_dev(args)
    subset = None
    if args.datasets is not None:
        subset = [contract.dataset_name(d.strip()) for d in args.datasets.split(",")]
    _ensure_schema()
    with _session() as s:
        repo.require_pool(s, pool_id)
        datasets = subset if subset is not None else repo.known_datasets(s, pool_id, identity)
        repo.subscribe(s, pool_id, identity, datasets, device_id)
    print(f"device {device_id} subscribed to {len(datasets)} datasets"
          + (f": {', '.join(datasets)}" if datasets else ""))
    return 0


# -- producing, running ---------------------------------------------------------------------

def cmd_publish(args) -> int:
    from pushsync.client import PublishError, publish
    from pushsync.settings import redact_url

    try:
        event = publish(args.pool_id, args.identity_id, args.dataset, args.sync_count,
                        origin_device_id=args.origin_device, event_id=args.event_id)
    except PublishError as exc:
        raise CommandError(f"cannot reach the broker at {redact_url(get_settings().broker_url)}: {exc}") from None
    print(f"enqueued {event['datasetName']} sync count {event['syncCount']} for {event['identityId']}")
    return 0


NO_SUPERVISE = "--no-supervise"


def _supervise(args: list[str], what: str) -> int:
    from pushsync.supervisor import child_command, supervise
    from worker.logs import configure

    configure()
    return supervise(child_command([*args, NO_SUPERVISE]), what)


def run_worker(argv: list[str]) -> int:
    if NO_SUPERVISE not in argv:
        return _supervise(["worker", *argv], "celery worker")
    from worker.app import QUEUES, app

    # Defaults first: Celery lets the operator's own -Q, -c, -l ... given after them win.
    app.worker_main(["worker", "-Q", ",".join(QUEUES), "-l", "INFO", *[a for a in argv if a != NO_SUPERVISE]])
    return 0


def cmd_emulator(args) -> int:
    from emulators.server import main as run_emulators

    return run_emulators(args)


def cmd_demo(args) -> int:
    from pushsync.demo import main as run_demo

    return run_demo(args.state_dir)


def cmd_demo_producer(args) -> int:
    from pushsync.demo import produce

    return produce(args.emulator_dir)


def cmd_dlq_list(args) -> int:
    from store import repo

    _ensure_schema()
    with _session() as s:
        items = repo.list_dead_letters(s, limit=args.limit)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no dead letters")
    for d in items:
        what = d["payload"] if isinstance(d["payload"], dict) else {}
        key = " ".join(str(what.get(k)) for k in ("identityId", "datasetName", "syncCount") if k in what)
        # reasons and payloads came from outside: no terminal escapes reach the operator's screen
        print(contract.printable(f"{d['id']:>6}  {d['created_at'][:19]}  {d['kind']:<8} "
                                 f"{d.get('platform') or '-':<12} {d['reason']}  [{key}]", limit=400))
    return 0


def cmd_dlq_replay(args) -> int:
    from kombu.exceptions import OperationalError as BrokerError

    from worker.app import app
    from worker.replay import replay

    if bool(args.ids) == bool(args.all):
        raise ValidationError("ID", "give dead-letter ids or --all, not both and not neither")
    ids = None
    if args.ids:
        try:
            ids = [int(i) for i in args.ids]
        except ValueError:
            raise ValidationError("ID", "dead-letter ids are whole numbers (see `pushsync dlq list`)") from None
    _ensure_schema()
    started = time.monotonic()
    last = [0.0]

    def progress(done: int) -> None:
        if time.monotonic() - last[0] >= 1.0:
            last[0] = time.monotonic()
            print(f"... {done} dead letters replayed", file=sys.stderr)

    try:
        with app.producer_or_acquire() as producer:
            def send(name, arg, queue):
                app.send_task(name, args=[arg], queue=queue, producer=producer)

            res = replay(ids, send, progress=progress)
    except BrokerError as exc:
        raise CommandError(f"cannot reach the broker: {exc}") from None
    print(f"replayed {res.events} events and {res.deliveries} deliveries; {res.stale} deliveries dropped as "
          f"stale (a newer sync count was notified since) in {time.monotonic() - started:.1f} s")
    if res.unusable:
        print(f"pushsync: {res.unusable} dead letters hold no event or delivery (malformed messages); they stay "
              "in the store for reading (`pushsync dlq list`) and can be purged", file=sys.stderr)
    if res.missing:
        print(f"pushsync: {res.missing} of the ids given are not in the dead-letter store", file=sys.stderr)
        return 1
    return 0


def cmd_scheduler(args) -> int:
    if not args.no_supervise:
        return _supervise(["scheduler"], "scheduler")
    from scheduler.beat import run

    return run()


def _snapshot() -> dict:
    import redis

    from store import repo
    from worker.app import QUEUES
    from worker.metrics import snapshot

    client = redis.Redis.from_url(get_settings().broker_url, socket_connect_timeout=3)
    dead = None
    try:
        with _session() as s:
            dead = repo.count_dead_letters(s)
    except Exception:  # the store may not be migrated yet; the rest is still worth showing
        dead = None
    return snapshot(client, QUEUES, dead)


def cmd_stats(args) -> int:
    import redis

    try:
        snap = _snapshot()
    except redis.RedisError as exc:
        raise CommandError(f"cannot reach Redis: {exc}") from None
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
        return 0
    print("queues:        " + ", ".join(f"{q} {n}" for q, n in snap["queues"].items()))
    print("events:        " + (", ".join(f"{k} {v}" for k, v in sorted(snap["events"].items())) or "none yet"))
    for platform in sorted(set(snap["sent"]) | set(snap["failed"])):
        failed = snap["failed"].get(platform, {})
        lat = snap["latency"].get(platform, {})
        mean = lat.get("sum", 0.0) / lat["count"] if lat.get("count") else None
        print(f"{platform + ':':<14} sent {snap['sent'].get(platform, 0)}, failed {sum(failed.values())}"
              + (f" ({', '.join(f'{r} {n}' for r, n in sorted(failed.items()))})" if failed else "")
              + f", tokens invalidated {snap['invalidated'].get(platform, 0)}"
              + (f", mean enqueue-to-accepted {mean:.3f} s" if mean is not None else ""))
    print(f"dead letters:  {snap['dead_letters'] if snap['dead_letters'] is not None else 'unknown (store)'} "
          f"in the store; written so far: "
          + (", ".join(f"{k} {v}" for k, v in sorted(snap["dead_lettered"].items())) or "none"))
    return 0


def cmd_metrics(args) -> int:
    from worker.metrics import serve

    serve(args.host, args.port, _snapshot)
    return 0


def cmd_dlq_purge(args) -> int:
    from datetime import timedelta

    from store import repo

    older = timedelta(days=args.older_than) if args.older_than is not None else None
    _ensure_schema()
    with _session() as s:
        n = repo.purge_dead_letters(s, older)
    print(f"purged {n} dead letters")
    return 0


# -- the parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pushsync", description="Self-hosted push sync for FCM and APNs.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = sub.add_parser("db", help="the store schema").add_subparsers(dest="db_command", required=True,
                                                                       parser_class=_Parser)
    db.add_parser("upgrade", help="create or migrate the store schema").set_defaults(func=cmd_db_upgrade)

    pool = sub.add_parser("pool", help="identity pools and their push credentials").add_subparsers(
        dest="pool_command", required=True, parser_class=_Parser)
    create = pool.add_parser("create", help="register a pool and its push credentials")
    create.add_argument("pool_id", metavar="POOL_ID")
    create.add_argument("--fcm-service-account", metavar="FILE")
    create.add_argument("--apns-key", metavar="FILE")
    create.add_argument("--apns-key-id", metavar="ID")
    create.add_argument("--apns-team-id", metavar="ID")
    create.add_argument("--apns-topic", metavar="BUNDLE_ID")
    create.set_defaults(func=cmd_pool_create)
    show = pool.add_parser("show", help="the pool's settings, secrets redacted")
    show.add_argument("pool_id", metavar="POOL_ID")
    show.set_defaults(func=cmd_pool_show)

    device = sub.add_parser("device", help="device registration").add_subparsers(
        dest="device_command", required=True, parser_class=_Parser)
    reg = device.add_parser("register", help="register a device; prints its id")
    reg.add_argument("pool_id", metavar="POOL_ID")
    reg.add_argument("identity_id", metavar="IDENTITY_ID")
    reg.add_argument("--platform", required=True, metavar="P")
    reg.add_argument("--token", required=True, metavar="T")
    reg.set_defaults(func=cmd_device_register)
    unreg = device.add_parser("unregister", help="remove a device and its subscriptions")
    unreg.add_argument("device_id", metavar="DEVICE_ID")
    unreg.set_defaults(func=cmd_device_unregister)
    imp = device.add_parser("import", help="bulk registration from JSON lines (FILE or - for stdin)")
    imp.add_argument("file", metavar="FILE")
    imp.set_defaults(func=cmd_device_import)

    for name, func, text in (("subscribe", cmd_subscribe, "subscribe a device to a dataset"),
                             ("unsubscribe", cmd_unsubscribe, "unsubscribe a device from a dataset")):
        sp = sub.add_parser(name, help=text)
        for arg in ("pool_id", "identity_id", "dataset", "device_id"):
            sp.add_argument(arg, metavar=arg.upper())
        sp.set_defaults(func=func)
    sa = sub.add_parser("subscribe-all", help="subscribe a device to every dataset of its identity")
    for arg in ("pool_id", "identity_id", "device_id"):
        sa.add_argument(arg, metavar=arg.upper())
    sa.add_argument("--datasets", metavar="A,B", help="only these datasets")
    sa.set_defaults(func=cmd_subscribe_all)

    pub = sub.add_parser("publish", help="enqueue one change event")
    for arg in ("pool_id", "identity_id", "dataset"):
        pub.add_argument(arg, metavar=arg.upper())
    pub.add_argument("sync_count", metavar="SYNC_COUNT")
    pub.add_argument("--origin-device", metavar="DEVICE_ID", help="the device that made the change; not notified")
    pub.add_argument("--event-id", metavar="ID", help="your idempotency key, kept with the event")
    pub.set_defaults(func=cmd_publish)

    sub.add_parser("worker", help="run a worker on the project's queues (Celery worker options follow)")
    sched = sub.add_parser("scheduler", help="run the periodic jobs (exactly one per deployment)")
    sched.add_argument(NO_SUPERVISE, action="store_true",
                       help="run beat in this process; by default a supervisor restarts it if it exits by itself")
    sched.set_defaults(func=cmd_scheduler)

    from emulators.options import add_arguments as emulator_arguments

    emu = sub.add_parser("emulator", help="run the local FCM and APNs emulators")
    emulator_arguments(emu)
    emu.set_defaults(func=cmd_emulator)

    demo = sub.add_parser("demo", help="run the whole pipeline locally against the emulators")
    demo.add_argument("--state-dir", default="demo-state", help="logs, keys and the demo store (wiped first)")
    demo.set_defaults(func=cmd_demo)

    st = sub.add_parser("stats", help="queue depths, pushes sent and failed, dead letters, invalidated tokens")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)
    me = sub.add_parser("metrics", help="serve Prometheus metrics over HTTP")
    me.add_argument("--host", default="127.0.0.1")
    me.add_argument("--port", type=int, default=9464)
    me.set_defaults(func=cmd_metrics)

    dp_ = sub.add_parser("demo-producer", help="compose dev profile: demo pool, devices and changes")
    dp_.add_argument("--emulator-dir", default="emulator-state")
    dp_.set_defaults(func=cmd_demo_producer)

    dlq = sub.add_parser("dlq", help="the dead-letter store").add_subparsers(dest="dlq_command", required=True,
                                                                            parser_class=_Parser)
    dl = dlq.add_parser("list", help="what could not be delivered, with the reason")
    dl.add_argument("--json", action="store_true")
    dl.add_argument("--limit", type=int, default=1000)
    dl.set_defaults(func=cmd_dlq_list)
    dr = dlq.add_parser("replay", help="send dead letters through the normal path again")
    dr.add_argument("ids", nargs="*", metavar="ID")
    dr.add_argument("--all", action="store_true")
    dr.set_defaults(func=cmd_dlq_replay)
    dp = dlq.add_parser("purge", help="empty the dead-letter store")
    dp.add_argument("--older-than", type=float, metavar="DAYS", help="only those older than DAYS days")
    dp.set_defaults(func=cmd_dlq_purge)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import OperationalError

    from store.repo import NotFound

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        get_settings()
        if argv[:1] == ["worker"]:
            return run_worker(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValidationError, SettingsError) as exc:
        print(f"pushsync: {exc}", file=sys.stderr)
        return 2
    except (NotFound, CommandError) as exc:
        print(f"pushsync: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:
        print(f"pushsync: the store is unreachable or failing: {str(exc.orig).strip().splitlines()[0]}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
