"""Running and watching: `pushsync worker|scheduler|stats|metrics|emulator`."""

from __future__ import annotations

import json
import logging
import sys

from pushsync.cli.common import CommandError, UsageProblem, session
from pushsync.redact import redact_url
from pushsync.settings import SettingsError, get_settings

NO_SUPERVISE = "--no-supervise"
log = logging.getLogger("pushsync.cli")


def _supervise(args: list[str], what: str) -> int:
    from pushsync.supervisor import child_command, supervise
    from worker.logs import configure

    configure()
    # once per start: what this deployment runs with, passwords hidden
    log.info("%s starting with settings %s", what, json.dumps(get_settings().redacted(), default=str))
    return supervise(child_command([*args, NO_SUPERVISE]), what)


def worker_health(argv: list[str]) -> int:
    """`pushsync worker --health [-n NAME]`: exit 0 only if the local worker is consuming (see
    worker.health); one line saying why, either way."""
    import redis

    from pushsync import broker
    from worker.health import judge, node_name, stall_seconds

    node = node_name(argv)
    try:
        verdict = judge(broker.redis_client(socket_connect_timeout=3, socket_timeout=3), node,
                        stall_seconds(get_settings()))
    except redis.RedisError as exc:
        print(f"unhealthy: cannot reach Redis to read {node}'s heartbeat: {exc}", file=sys.stderr)
        return 1
    print(("healthy: " if verdict.healthy else "unhealthy: ") + verdict.reason,
          file=sys.stdout if verdict.healthy else sys.stderr)
    return 0 if verdict.healthy else 1


def celery_usage_error(argv: list[str]) -> str | None:
    """Parse the worker's options as Celery will, without starting anything: the message of an option
    Celery refuses (unknown, or a bad value such as ``-c abc``), else None. Checked before supervising,
    since a child that fails on its options would only be started again and again."""
    import click
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker as command

    from worker.app import app

    try:
        command.make_context("pushsync worker", list(argv), obj=CLIContext(app=app, no_color=True, workdir=None))
    except click.UsageError as exc:
        hint = " (see `pushsync worker --help`)" if isinstance(exc, click.NoSuchOption) else ""
        return f"worker: {exc.format_message().rstrip('.')}{hint}"
    return None


def run_worker(argv: list[str]) -> int:
    """`pushsync worker [celery worker options]`: Celery parses the options itself."""
    import click

    if "--health" in argv:
        return worker_health(argv)
    if NO_SUPERVISE not in argv:
        try:
            problem = celery_usage_error(argv)
        except click.exceptions.Exit as done:  # --help: Celery printed it
            return done.exit_code
        if problem:
            raise UsageProblem(problem)
        return _supervise(["worker", *argv], "celery worker")
    from pushsync.queues import QUEUES
    from worker.app import app

    # Defaults first: Celery lets the operator's own -Q, -c, -l ... given after them win.
    app.worker_main(["worker", "-Q", ",".join(QUEUES), "-l", "INFO", *[a for a in argv if a != NO_SUPERVISE]])
    return 0


def scheduler(args) -> int:
    if not args.no_supervise:
        return _supervise(["scheduler"], "scheduler")
    from scheduler.beat import run

    return run()


def _snapshot() -> dict:
    from pushsync import broker
    from pushsync.queues import QUEUES
    from scheduler.beat import LOCK_KEY
    from store import repo
    from store.db import probe
    from worker.health import census, stall_seconds
    from worker.metrics import snapshot

    client = broker.redis_client(socket_connect_timeout=3)
    down = probe(get_settings().database_url)  # bounded: a silent store is reported, not waited on
    dead = None
    if down is None:
        try:
            with session() as s:
                dead = repo.count_dead_letters(s)
        except Exception:  # the store may not be migrated yet; the rest is still worth showing
            pass
    snap = snapshot(client, QUEUES, dead)
    snap["store"] = {"up": down is None, "error": down}
    snap["workers"] = census(client, stall_seconds(get_settings()))
    snap["scheduler_lock_held"] = int(bool(client.exists(LOCK_KEY)))
    return snap


def stats(args) -> int:
    import redis

    from worker.metrics import summary_lines

    try:
        snap = _snapshot()
    except redis.RedisError as exc:
        raise CommandError(f"cannot reach Redis: {exc}") from None
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
        return 0
    settings = get_settings()  # which deployment this is: a shell without the settings reads the defaults
    print(f"broker: {redact_url(settings.broker_url)}  store: {redact_url(settings.database_url)}")
    print("\n".join(summary_lines(snap)))
    return 0


def metrics(args) -> int:
    from worker.exporter import serve

    serve(args.host, args.port, _snapshot)
    return 0


FLOWER_MIN_PASSWORD = 12


def flower_auth_problem(value: str | None) -> str | None:
    """Why FLOWER_BASIC_AUTH cannot guard Flower, or None. A Flower login can put any task on
    the queues and shut workers down, so it gets the care of a producer's credentials."""
    from pushsync.settings import is_placeholder

    if not value:
        return "FLOWER_BASIC_AUTH is not set: Flower would serve its API to anyone who reaches it"
    for pair in value.split(","):
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            return "FLOWER_BASIC_AUTH must be user:password pairs separated by commas"
        if is_placeholder(password):
            return f"FLOWER_BASIC_AUTH: the password of {user} is still the example's placeholder"
        if len(password) < FLOWER_MIN_PASSWORD:
            return f"FLOWER_BASIC_AUTH: the password of {user} is shorter than {FLOWER_MIN_PASSWORD} characters"
    return None


def flower(args) -> int:
    """Flower with its login checked first. The passwords reach Flower through its own
    FLOWER_BASIC_AUTH variable, not the command line that `ps` shows."""
    import os

    problem = flower_auth_problem(os.environ.get("FLOWER_BASIC_AUTH"))
    if problem:
        raise SettingsError(problem)
    argv = [sys.executable, "-m", "celery", "-A", "worker.app:app", "flower", f"--address={args.address}",
            f"--port={args.port}", "--persistent=False", *args.flower_args]
    os.execvp(argv[0], argv)
    return 1  # not reached


def emulator(args) -> int:
    """`pushsync emulator`: a port it cannot have, a --dir or env file it cannot write: one line, exit 1."""
    from emulators.ports import EmulatorError
    from emulators.server import main as run_emulators

    try:
        return run_emulators(args)
    except EmulatorError as exc:
        raise CommandError(str(exc)) from None


def register(sub) -> None:
    from emulators.options import add_arguments as emulator_arguments

    sub.add_parser("worker", help="run a worker on the project's queues (Celery worker options follow; "
                                  f"{NO_SUPERVISE} runs Celery in this process; --health [-n NODE] "
                                  "checks that the worker on this host is consuming)")
    sched = sub.add_parser("scheduler", help="run the periodic jobs (exactly one per deployment)")
    sched.add_argument(NO_SUPERVISE, action="store_true",
                       help="run beat in this process; by default a supervisor restarts it if it exits by itself")
    sched.set_defaults(func=scheduler)
    st = sub.add_parser("stats", help="queue depths, pushes sent and failed, dead letters, invalidated tokens")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=stats)
    me = sub.add_parser("metrics", help="serve Prometheus metrics over HTTP")
    me.add_argument("--host", default="127.0.0.1")
    me.add_argument("--port", type=int, default=9464)
    me.set_defaults(func=metrics)
    fl = sub.add_parser("flower", help="run Flower behind the login in FLOWER_BASIC_AUTH (refused if weak)")
    fl.add_argument("--address", default="127.0.0.1")
    fl.add_argument("--port", type=int, default=5555)
    fl.add_argument("flower_args", nargs="*", metavar="FLOWER_OPTION", help="more Flower options, after --")
    fl.set_defaults(func=flower)
    emu = sub.add_parser("emulator", help="run the local FCM and APNs emulators (on the same ports at each start "
                                          "in a --dir; --env-file FILE writes a worker's settings for them)")
    emulator_arguments(emu)
    emu.set_defaults(func=emulator)
