"""The worker's check of the pools' credentials (``worker.pools.KeyCheck``) on a real store and
Redis database 7: which pools do not open with its PUSHSYNC_SECRET_KEY, logged at ERROR by pool
id only, counted in Redis for `pushsync metrics`, and cleared when they open again."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest
import redis

from pushsync.secrets import Keyring, new_key
from pushsync.settings import get_settings
from store import repo
from store.db import session_scope
from worker import exporter, metrics
from worker.pools import KeyCheck

from ..conftest import POOL, POOL2
from ..e2e.harness import free_port, wait_for

POOL3 = "ap-south-1:4c3b2a19-0f8e-4d7c-b6a5-948372615a0b"
PRIVATE = "-----BEGIN PRIVATE KEY-----\nMIIEvQ-unmistakable-material\n-----END PRIVATE KEY-----\n"
ACCOUNT = {"type": "service_account", "project_id": "p", "private_key": PRIVATE, "client_email": "e",
           "token_uri": "https://t"}
NODE = "keys@test"


@pytest.fixture
def client(store_settings):
    return redis.Redis.from_url("redis://127.0.0.1:6379/7")


def _pools(engine, other: str, tmp_path) -> None:
    """POOL sealed with the test's key, POOL2 with another one, POOL3 a key file that is gone."""
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=ACCOUNT)
        repo.upsert_pool(s, POOL2, fcm_service_account=ACCOUNT, keyring=Keyring.from_setting(other))
        repo.upsert_pool(s, POOL3, apns={"key": "", "key_id": "K", "team_id": "T", "topic": "t"},
                         apns_reference=str(tmp_path / "gone.p8"))


def _unreadable(client) -> dict[str, int]:
    return metrics.snapshot(client, ["events"], dead_letters=None)["pools_key_unreadable"]


def test_pools_that_do_not_open_are_logged_by_id_counted_and_cleared_when_fixed(engine, client, tmp_path, caplog):
    other = new_key()
    _pools(engine, other, tmp_path)
    check = KeyCheck(client, NODE, get_settings())
    with caplog.at_level(logging.INFO, logger="pushsync.worker"):
        check.check()
        check.publish()
    assert set(check.failing) == {POOL2, POOL3}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # one line per reason
    wrong_key = next(e for e in errors if POOL2 in e)
    assert "do not open with any key of PUSHSYNC_SECRET_KEY" in wrong_key and POOL not in wrong_key
    assert any(POOL3 in e and "gone.p8" in e for e in errors)
    logged = caplog.text
    assert "unmistakable" not in logged and other not in logged and get_settings().secret_key not in logged
    assert _unreadable(client) == {NODE: 2}
    s = {(x.name, tuple(x.labels.items())): x.value for f in _families(client) for x in f.samples}
    assert s[("pushsync_pools_key_unreadable", (("worker", NODE),))] == 2

    caplog.clear()
    with session_scope(engine) as s:  # `pool create` again, under the workers' key
        repo.upsert_pool(s, POOL2, fcm_service_account=ACCOUNT)
    with caplog.at_level(logging.INFO, logger="pushsync.worker"):
        check.check()
        check.publish()
    assert set(check.failing) == {POOL3} and _unreadable(client) == {NODE: 1}
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]  # POOL3's was said already
    assert any(POOL2 in r.getMessage() and "open again" in r.getMessage() for r in caplog.records)

    (tmp_path / "gone.p8").write_text("-----BEGIN PRIVATE KEY-----\nback\n-----END PRIVATE KEY-----\n")
    check.check()  # a failing pool is looked at again each time: the file back heals it
    check.publish()
    assert check.failing == {} and _unreadable(client) == {NODE: 0}
    check.stop()
    assert _unreadable(client) == {}  # a clean stop takes its figure away


def _families(client):
    from prometheus_client.parser import text_string_to_metric_families

    page = exporter.prometheus(metrics.snapshot(client, ["events"], dead_letters=None))
    return list(text_string_to_metric_families(page))


def test_unchanged_pools_that_opened_are_not_opened_again(engine, client, tmp_path, monkeypatch):
    _pools(engine, new_key(), tmp_path)
    opened = []
    real = repo.pool_credentials
    monkeypatch.setattr(repo, "pool_credentials", lambda s, pid, k=None: opened.append(pid) or real(s, pid, k))
    check = KeyCheck(client, NODE, get_settings())
    check.check()
    assert sorted(opened) == sorted([POOL, POOL2, POOL3])
    opened.clear()
    check.check()
    assert sorted(opened) == sorted([POOL2, POOL3])  # only those that did not open


def test_a_worker_whose_key_opens_everything_says_so_once(engine, client, caplog):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, fcm_service_account=ACCOUNT)
    check = KeyCheck(client, NODE, get_settings())
    with caplog.at_level(logging.INFO, logger="pushsync.worker"):
        check.check()
        check.check()
    assert [r.getMessage() for r in caplog.records] == [
        "the push credentials of all 1 pool(s) open with this worker's PUSHSYNC_SECRET_KEY"]


def test_a_store_out_of_reach_is_warned_about_and_nothing_is_published(client, caplog):
    settings = dataclasses.replace(get_settings(),
                                   database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    check = KeyCheck(client, NODE, settings, interval=0.2)
    with caplog.at_level(logging.WARNING, logger="pushsync.worker"):
        check.start()
        try:
            wait_for(lambda: "cannot check which pools' credentials open" in caplog.text, 20, 0.1,
                     "the warning")
            time.sleep(0.5)
            assert not check.checked and _unreadable(client) == {}
        finally:
            check.stop()
    assert not check.is_alive()
