"""What every command module shares: errors, the store session, the schema check, progress."""

from __future__ import annotations

import argparse
import sys
import time


class CommandError(Exception):
    """A failure that is not the caller's input: exit 1 with this message."""


class UsageProblem(Exception):
    """The caller's input is wrong (an option, a value): exit 2 with this message."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 device``, ``2 devices``: the command's own sentences read as English."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: one line, exit 2
        self.exit(2, f"pushsync: {message}\n")


def session():
    from store.db import session_scope

    return session_scope()


def ensure_schema() -> None:
    from sqlalchemy import inspect

    from store.db import get_engine

    if not inspect(get_engine()).has_table("devices"):
        from pushsync.redact import redact_url
        from pushsync.settings import get_settings

        raise CommandError(f"the store {redact_url(get_settings().database_url)} (PUSHSYNC_DATABASE_URL) has no "
                           "schema yet: run `pushsync db upgrade` first, or set PUSHSYNC_DATABASE_URL if this "
                           "is not the store you meant")


class Progress:
    """A line on stderr at most once a second, for long commands (import, replay)."""

    def __init__(self, every: float = 1.0):
        self.started = time.monotonic()
        self.every = every
        self._last = 0.0

    def say(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            print(text, file=sys.stderr)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def group(sub, name: str, text: str):
    """A command group (`pushsync NAME ...`) whose sub-commands are required."""
    return sub.add_parser(name, help=text).add_subparsers(dest=f"{name}_command", required=True, parser_class=Parser)
