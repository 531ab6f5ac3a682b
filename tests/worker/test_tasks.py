"""The ingest task body against a real store: when the store refuses a micro-batch for its
data, the events go again one by one and only the refused one is dead-lettered."""

from __future__ import annotations

import sqlalchemy.exc

from store import repo
from store.db import session_scope

from ..conftest import IDENT, IDENT2, POOL
from .test_fanout import FCM_ONLY


def test_a_micro_batch_the_store_refuses_goes_again_event_by_event(store_settings, engine, monkeypatch):
    from worker import tasks

    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=FCM_ONLY)
        devices = {ident: repo.register_device(s, POOL, ident, "GCM", f"tok-{n}")
                   for n, ident in enumerate((IDENT, IDENT2))}
        for ident, dev in devices.items():
            repo.subscribe(s, POOL, ident, ["notes"], dev)
    real_advance = repo.advance_sync_count

    def refuses_ident2(session, pool, identity, dataset, count):
        if identity == IDENT2:  # as PostgreSQL refuses a value it cannot store
            raise sqlalchemy.exc.DataError("UPDATE datasets ...", {}, ValueError("value refused by the store"))
        return real_advance(session, pool, identity, dataset, count)

    monkeypatch.setattr(repo, "advance_sync_count", refuses_ident2)
    sent = []
    monkeypatch.setattr(tasks, "_enqueue", lambda platform, batch: sent.append(batch))
    events = [{"identityPoolId": POOL, "identityId": ident, "datasetName": "notes", "syncCount": 3}
              for ident in (IDENT, IDENT2)]
    result = tasks.ingest(events)  # as the worker calls it: through the base task
    assert (result["notified"], result["dead_lettered"]) == (1, 1)
    assert [item[0] for b in sent for item in b["items"]] == [devices[IDENT]]
    with session_scope(engine) as s:
        [letter] = repo.list_dead_letters(s)
        assert repo.last_sync_count(s, POOL, IDENT, "notes") == 3
    assert letter["reason"] == "the store refused the event: ValueError: value refused by the store"
    assert letter["payload"]["identityId"] == IDENT2
