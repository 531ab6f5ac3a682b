"""`pushsync db upgrade`."""

from __future__ import annotations

from pushsync.cli.common import group
from pushsync.settings import get_settings


def upgrade(args) -> int:
    from store.migrate import current, upgrade

    url = get_settings().database_url
    upgrade(url)
    print(f"store at revision {current(url)}")
    return 0


def register(sub) -> None:
    db = group(sub, "db", "the store schema")
    db.add_parser("upgrade", help="create or migrate the store schema").set_defaults(func=upgrade)
