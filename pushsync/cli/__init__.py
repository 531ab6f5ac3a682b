"""The ``pushsync`` command (CONTRACT section 4): one module per command group, found here.

Errors print one line to stderr: exit 2 for bad input (a field, a setting, a file), exit 1
for everything else (unknown pool or device, the store or the broker unreachable). This package
is the one place that imports everything; each group's module only handles its arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pushsync.cli import api, db, demo, device, dlq, ops, pool, publish, subscribe, trace
from pushsync.cli.common import CommandError, Parser, UsageProblem
from pushsync.contract import ValidationError
from pushsync.secrets import SecretError
from pushsync.settings import SettingsError, get_settings

GROUPS = (db, pool, device, subscribe, publish, ops, dlq, trace, api, demo)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pushsync")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> Parser:
    p = Parser(prog="pushsync", description="Self-hosted push sync for FCM and APNs.")
    p.add_argument("--version", action="version", version=f"pushsync {_version()}")
    p.set_defaults(main=main)  # for the commands that run others (demo-producer)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in GROUPS:
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import OperationalError

    from store.repo import NotFound

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        get_settings()
        if argv[:1] == ["worker"]:
            return ops.run_worker(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValidationError, SettingsError, SecretError, UsageProblem) as exc:
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
    except BrokenPipeError:  # the reader went away (`pushsync stats --json | head`): nothing left to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit is quiet too
        return 141
