"""Pool credentials are read once per process and again only when they change."""

from __future__ import annotations

from store import repo
from store.db import session_scope
from worker.pools import PoolCache

from ..conftest import POOL, POOL2

ACCOUNT = {"type": "service_account", "project_id": "p", "private_key": "k", "client_email": "e",
           "token_uri": "https://t"}


def test_credentials_are_cached_until_the_pool_changes(engine, monkeypatch):
    loads = []
    real = repo.pool_credentials
    monkeypatch.setattr(repo, "pool_credentials", lambda s, pid: loads.append(pid) or real(s, pid))
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=ACCOUNT)
    pools = PoolCache()
    for _ in range(3):
        with session_scope(engine) as s:
            got = pools.credentials(s, [POOL, POOL2])
        assert got[POOL].fcm_project_id == "p" and got[POOL2] is None
    assert loads == [POOL]
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account={**ACCOUNT, "project_id": "q"})
    with session_scope(engine) as s:
        assert pools.credentials(s, [POOL])[POOL].fcm_project_id == "q"
    assert loads == [POOL, POOL]
