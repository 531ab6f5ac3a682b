"""Store behaviour on SQLite and PostgreSQL (every test runs on both)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from store import repo
from store.db import engine_for, session_scope
from store.models import Device, Subscription

from ..conftest import IDENT, IDENT2, POOL, POOL2
from .conftest import run_racers


def _resolve(s, pool, ident, dataset, origin=None) -> list[tuple[str, str]]:
    """(device, platform) that ingest would push to, through the resolve it runs."""
    return [(dev, plat) for _p, _i, _d, dev, plat in repo.resolve_many(s, [(pool, ident, dataset)])
            if dev != origin]


def _subscriptions(s, dev) -> list[str]:
    return sorted(s.execute(select(Subscription.dataset_name).where(Subscription.device_id == dev)).scalars())


def _register(engine, pool, ident, platform, token):
    with session_scope(engine) as s:
        return repo.register_device(s, pool, ident, platform, token)


def test_registering_the_same_token_again_returns_the_same_id(pools):
    a = _register(pools, POOL, IDENT, "GCM", "tok-1")
    b = _register(pools, POOL, IDENT, "GCM", "tok-1")
    assert a == b
    # the same token on another platform or in another pool is another device
    assert _register(pools, POOL, IDENT, "APNS", "ab01") != _register(pools, POOL, IDENT, "APNS_SANDBOX", "ab01")
    assert _register(pools, POOL2, IDENT, "GCM", "tok-1") != a
    with session_scope(pools) as s:
        assert s.execute(select(func.count()).select_from(Device)).scalar_one() == 4


def test_moving_a_token_to_another_identity_drops_its_old_subscriptions(pools):
    dev = _register(pools, POOL, IDENT, "GCM", "phone")
    with session_scope(pools) as s:
        repo.subscribe(s, POOL, IDENT, ["contacts", "notes"], dev)
    assert _register(pools, POOL, IDENT2, "GCM", "phone") == dev
    with session_scope(pools) as s:
        assert _subscriptions(s, dev) == []
        assert s.get(Device, dev).identity_id == IDENT2
        assert _resolve(s, POOL, IDENT, "contacts") == []
        # the old identity's subscription calls now refuse the device
        with pytest.raises(repo.NotFound):
            repo.subscribe(s, POOL, IDENT, ["notes"], dev)


def test_reregistering_a_deactivated_device_reactivates_it(pools):
    dev = _register(pools, POOL, IDENT, "GCM", "t")
    with session_scope(pools) as s:
        repo.subscribe(s, POOL, IDENT, ["d"], dev)
        assert repo.deactivate_devices(s, [dev], "UNREGISTERED") == 1
        assert _resolve(s, POOL, IDENT, "d") == []
    assert _register(pools, POOL, IDENT, "GCM", "t") == dev
    with session_scope(pools) as s:
        assert _resolve(s, POOL, IDENT, "d") == [(dev, "GCM")]


def test_subscribe_all_uses_known_datasets_or_the_subset(pools):
    a = _register(pools, POOL, IDENT, "GCM", "a")
    b = _register(pools, POOL, IDENT, "GCM", "b")
    with session_scope(pools) as s:
        repo.subscribe(s, POOL, IDENT, ["one", "two", "three"], a)
        known = repo.known_datasets(s, POOL, IDENT)
        assert known == ["one", "three", "two"]
        repo.subscribe(s, POOL, IDENT, known, b)
        assert _subscriptions(s, b) == ["one", "three", "two"]
        c = repo.register_device(s, POOL, IDENT, "GCM", "c")
        repo.subscribe(s, POOL, IDENT, ["two", "four"], c)
        assert _subscriptions(s, c) == ["four", "two"]
        # subscribing again is harmless
        assert repo.subscribe(s, POOL, IDENT, ["two"], c) == 0


def test_resolve_leaves_out_origin_inactive_unsubscribed_and_strangers(pools):
    with session_scope(pools) as s:
        d1 = repo.register_device(s, POOL, IDENT, "GCM", "g1")
        d2 = repo.register_device(s, POOL, IDENT, "APNS", "aa11")
        d3 = repo.register_device(s, POOL, IDENT, "APNS_SANDBOX", "bb22")
        d4 = repo.register_device(s, POOL, IDENT, "GCM", "unsubscribed")
        other_ident = repo.register_device(s, POOL, IDENT2, "GCM", "g2")
        other_pool = repo.register_device(s, POOL2, IDENT, "GCM", "g3")
        for dev in (d1, d2, d3):
            repo.subscribe(s, POOL, IDENT, ["ds"], dev)
        repo.subscribe(s, POOL, IDENT, ["other"], d4)
        repo.subscribe(s, POOL, IDENT2, ["ds"], other_ident)
        repo.subscribe(s, POOL2, IDENT, ["ds"], other_pool)
        repo.deactivate_devices(s, [d3], "BadDeviceToken")
        got = sorted(_resolve(s, POOL, IDENT, "ds", origin=d1))
        assert got == [(d2, "APNS")]
        assert sorted(_resolve(s, POOL, IDENT, "ds")) == sorted([(d1, "GCM"), (d2, "APNS")])
        many = repo.resolve_many(s, [(POOL, IDENT, "ds"), (POOL2, IDENT, "ds"), (POOL, IDENT2, "ds")])
        assert sorted(r[3] for r in many) == sorted([d1, d2, other_pool, other_ident])


def test_unregister_removes_device_and_subscriptions(pools):
    dev = _register(pools, POOL, IDENT, "GCM", "x")
    with session_scope(pools) as s:
        repo.subscribe(s, POOL, IDENT, ["a", "b"], dev)
    with session_scope(pools) as s:
        repo.unregister_device(s, dev)
    with session_scope(pools) as s:
        assert s.execute(select(func.count()).select_from(Subscription)).scalar_one() == 0
        with pytest.raises(repo.NotFound):
            repo.unregister_device(s, dev)


def test_dead_letters_round_trip_and_keep_what_json_cannot_hold(pools):
    from pushsync.messages import DeadLetter

    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with session_scope(pools) as s:
        assert repo.add_dead_letters(s, [DeadLetter.event({"identityPoolId": "x"}, "unknown pool", "x"),
                                         DeadLetter.message(deep, "unreadable message", "too deep"),
                                         DeadLetter.message(b"\x00\xff" * 20_000, "unreadable message", "bytes")]) == 3
    with session_scope(pools) as s:
        event, deep_one, raw = repo.list_dead_letters(s)
        assert event["reason"] == "unknown pool: x" and event["payload"] == {"identityPoolId": "x"}
        assert event["pool_id"] is None  # only a well-formed id goes in the column
        assert deep_one["payload"]["unreadable"].startswith("{'message': [[[[")
        assert raw["payload"]["message"]["length"] == 40_000 and len(raw["payload"]["message"]["raw"]) == 16_384
        assert repo.purge_dead_letters(s) == 3


# -- concurrency: real processes, each with its own engine ----------------------------------

def _race_register(url, token, barrier, out):
    engine = engine_for(url)
    barrier.wait()
    with session_scope(engine) as s:
        out.put(repo.register_device(s, POOL, IDENT, "GCM", token))


def test_two_processes_registering_the_same_token_end_with_one_device(pools, db_url):
    for i in range(3):
        ids = run_racers(_race_register, [(db_url, f"race-{i}"), (db_url, f"race-{i}")])
        assert ids[0] == ids[1]
    with session_scope(pools) as s:
        rows = s.execute(select(Device.token, func.count()).group_by(Device.token)).all()
    assert sorted(rows) == [("race-0", 1), ("race-1", 1), ("race-2", 1)]


# -- a large store ---------------------------------------------------------------------------

def test_resolve_many_on_a_store_of_100k_devices_is_exact_and_indexed(pools, db_url):
    n_ident = 25_000  # 4 devices each: 100,000 devices
    rows, subs = [], []
    for i in range(n_ident):
        ident = f"us-east-1:{i:08x}-0000-4000-8000-000000000000"
        for k, plat in enumerate(("GCM", "APNS", "APNS_SANDBOX", "GCM")):
            token = f"{i:08x}{k:02x}" if plat != "GCM" else f"fcm-{i}-{k}"
            rows.append((POOL, ident, plat, token))
    with session_scope(pools) as s:
        ids = repo.register_devices(s, rows)
        for (pool, ident, _p, _t), dev, n in zip(rows, ids, range(len(rows)), strict=True):
            # device k of every identity: k=0,1 subscribed to "ds", k=2 to "other", k=3 to none
            k = n % 4
            if k < 2:
                subs.append((pool, ident, dev, "ds"))
            elif k == 2:
                subs.append((pool, ident, dev, "other"))
        repo.subscribe_many(s, subs)
        assert s.execute(select(func.count()).select_from(Device)).scalar_one() == 100_000
    target = 12_345
    ident = f"us-east-1:{target:08x}-0000-4000-8000-000000000000"
    expected = sorted((ids[target * 4 + k], plat) for k, plat in ((0, "GCM"), (1, "APNS")))
    with session_scope(pools) as s:
        assert sorted(_resolve(s, POOL, ident, "ds")) == expected
        assert _resolve(s, POOL, ident, "ds", origin=ids[target * 4]) == [expected[1]] \
            if expected[1][0] != ids[target * 4] else [expected[0]]
        assert _resolve(s, POOL2, ident, "ds") == []
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("ANALYZE devices"))
            s.execute(text("ANALYZE subscriptions"))
            stmt = repo.resolve_statement([(POOL, ident, "ds"), (POOL, f"us-east-1:{7:08x}-0000-4000-8000-000000000000",
                                                                 "other")])
            compiled = stmt.compile(dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True})
            plan = "\n".join(r[0] for r in s.execute(text(f"EXPLAIN {compiled}")))
            assert "ix_devices_pool_identity" in plan, plan
            assert "Seq Scan on devices" not in plan, plan
        else:
            stmt = repo.resolve_statement([(POOL, ident, "ds")])
            compiled = stmt.compile(dialect=s.get_bind().dialect, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(r[-1]) for r in s.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
            assert "ix_devices_pool_identity" in plan, plan


def test_apns_410_keeps_a_device_that_registered_after_the_token_ended(pools):
    from datetime import timedelta

    from store.models import utcnow

    dev = _register(pools, POOL, IDENT, "APNS", "ab12")
    with session_scope(pools) as s:
        # APNs says the token ended an hour ago; the device registered since: it stays
        hour_ago = utcnow() - timedelta(hours=1)
        assert repo.deactivate_devices(s, [dev], "Unregistered", not_registered_after=hour_ago) == 0
    with session_scope(pools) as s:
        before = s.get(Device, dev).updated_at
    _register(pools, POOL, IDENT, "APNS", "ab12")  # registering again is news: it moves updated_at
    with session_scope(pools) as s:
        assert s.get(Device, dev).updated_at > before
        soon = utcnow() + timedelta(seconds=1)
        assert repo.deactivate_devices(s, [dev], "Unregistered", not_registered_after=soon) == 1
        assert _resolve(s, POOL, IDENT, "x") == []
        assert s.get(Device, dev).active is False


def test_prune_deletes_only_devices_dead_for_long_enough(pools):
    from datetime import timedelta

    from store.models import utcnow

    old, recent, live = (_register(pools, POOL, IDENT, "GCM", t) for t in ("old", "recent", "live"))
    with session_scope(pools) as s:
        repo.subscribe(s, POOL, IDENT, ["d"], old)
        repo.deactivate_devices(s, [old, recent], "UNREGISTERED")
        s.get(Device, old).deactivated_at = utcnow() - timedelta(days=40)
    with session_scope(pools) as s:
        assert repo.delete_inactive_devices(s, timedelta(days=30)) == 1
    with session_scope(pools) as s:
        assert s.get(Device, old) is None and s.get(Device, recent) is not None and s.get(Device, live).active
        assert s.execute(select(func.count()).select_from(Subscription)).scalar_one() == 0


def test_migration_0002_keys_existing_devices_by_token_hash(db_url):
    """A store made before 0002 keeps its devices: each gets its hash, and registering the same
    token again still finds the same device."""
    from alembic import command

    from store.migrate import alembic_config, upgrade

    command.downgrade(alembic_config(db_url), "0001")
    engine = engine_for(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO pools (id, created_at, updated_at) VALUES (:p, :t, :t)"),
                         {"p": POOL, "t": "2026-01-01T00:00:00+00:00"})
            conn.execute(text("INSERT INTO devices (id, pool_id, identity_id, platform, token, active, created_at, "
                              "updated_at) VALUES ('old-device', :p, :i, 'GCM', 'legacy-token', true, :t, :t)"),
                         {"p": POOL, "i": IDENT, "t": "2026-01-01T00:00:00+00:00"})
    finally:
        upgrade(db_url)
    with session_scope(engine) as s:
        assert s.execute(select(Device.token_hash).where(Device.id == "old-device")).scalar_one() == \
            repo.token_hash("legacy-token")
        assert repo.register_device(s, POOL, IDENT, "GCM", "legacy-token") == "old-device"
