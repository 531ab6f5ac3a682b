"""Bulk registration from JSON lines (`pushsync device import`): parse, check, register and
subscribe in chunks, one transaction a chunk; a line the store refuses is retried alone so that
it never takes the good lines of its chunk with it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError

from pushsync import contract
from pushsync.contract import LimitExceeded, ValidationError
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope

CHUNK = 2000
Row = tuple[str, str, str, str, list[str]]
REFUSED = (DataError, IntegrityError, ProgrammingError)
LINE_SHAPE = ('{"identityPoolId": ..., "identityId": ..., "platform": "GCM|APNS|APNS_SANDBOX", "token": ..., '
              '"datasets": [...]} (datasets optional)')


def parse_line(line: str) -> Row:
    """(pool, identity, platform, token, datasets) of one line, or ``ValidationError``."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValidationError("line", f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValidationError("line", "must be a JSON object")
    for alias, key in (("Platform", "platform"), ("Token", "token")):  # as the HTTP API's bodies spell them
        if alias in data and key not in data:
            data[key] = data.pop(alias)
    for key in ("identityPoolId", "identityId", "platform", "token"):
        if key not in data:
            raise ValidationError(key, f"is required; a line is {LINE_SHAPE}")
    platform = contract.platform(data["platform"])
    datasets = data.get("datasets", [])
    if not isinstance(datasets, list):
        raise ValidationError("datasets", "must be a list of dataset names")
    limit = get_settings().max_datasets_per_line
    if len(datasets) > limit:
        raise LimitExceeded("datasets", f"{len(datasets)} datasets on one line; the limit is {limit} "
                                        "(PUSHSYNC_MAX_DATASETS_PER_LINE)")
    return (contract.pool_id(data["identityPoolId"]), contract.identity_id(data["identityId"]), platform,
            contract.device_token(data["token"], platform), [contract.dataset_name(d) for d in datasets])


class Importer:
    """Feed it lines; it reports bad ones through ``on_bad(line_number, message)``."""

    def __init__(self, on_bad: Callable[[int, str], None]):
        self.on_bad = on_bad
        self.imported = self.bad = self.seen = 0
        self._pools: dict[str, bool] = {}
        self._rows: list[Row] = []
        self._numbers: list[int] = []

    def add(self, number: int, line: str) -> None:
        self.seen = number
        if not line.strip():
            return
        try:
            row = parse_line(line)
        except ValidationError as exc:
            self._refuse(number, str(exc))
            return
        if not self._known_pool(row[0]):
            self._refuse(number, f"identityPoolId: unknown pool {row[0]} (create it with `pushsync pool create`)")
            return
        self._rows.append(row)
        self._numbers.append(number)

    def full(self) -> bool:
        return len(self._rows) >= CHUNK

    def flush(self) -> None:
        if not self._rows:
            return
        try:
            with session_scope() as s:
                repo.import_devices(s, self._rows)
            self.imported += len(self._rows)
        except (*REFUSED, LimitExceeded):
            for number, row in zip(self._numbers, self._rows, strict=True):
                self._one(number, row)
        self._rows.clear()
        self._numbers.clear()

    def _one(self, number: int, row: Row) -> None:
        try:
            with session_scope() as s:
                repo.import_devices(s, [row])
            self.imported += 1
        except LimitExceeded as exc:
            self._refuse(number, str(exc))
        except REFUSED as exc:
            self._refuse(number, f"the store refused it: {str(exc.orig).strip().splitlines()[0][:200]}")

    def _known_pool(self, pool: str) -> bool:
        if pool not in self._pools:
            with session_scope() as s:
                self._pools[pool] = bool(repo.pool_versions(s, [pool]))
        return self._pools[pool]

    def _refuse(self, number: int, message: str) -> None:
        self.bad += 1
        self.on_bad(number, message)


def import_lines(lines: Iterable[str], *, on_bad: Callable[[int, str], None],
                 on_progress: Callable[[int, int, int], None] | None = None) -> tuple[int, int]:
    """Register and subscribe devices from JSON lines; returns (imported, bad)."""
    importer = Importer(on_bad)
    for number, line in enumerate(lines, start=1):
        importer.add(number, line)
        if importer.full():
            importer.flush()
            if on_progress:
                on_progress(importer.seen, importer.imported, importer.bad)
    importer.flush()
    if on_progress:
        on_progress(importer.seen, importer.imported, importer.bad)
    if importer.imported >= ANALYZE_AFTER:
        _analyze()
    return importer.imported, importer.bad


# PostgreSQL plans from table statistics that autovacuum refreshes only after a while: right
# after a bulk import it can take the send-time query for a scan of every device (measured:
# 574 ms instead of 2 ms for 300 devices, 5,000 devices in the store)
ANALYZE_AFTER = 1000


def _analyze() -> None:
    with session_scope() as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("ANALYZE devices, subscriptions, datasets"))
