"""Key material at rest: encrypted in the store, refused without a key, rotated by `pool rekey`,
and what a worker does when it cannot open a pool's credentials."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from pushsync import contract
from pushsync.secrets import Keyring, SecretError, new_key
from store import repo
from store.db import engine_for, session_scope
from worker import plan
from worker.pools import PoolCache

from ..conftest import IDENT, POOL, TEST_SECRET_KEY, cli_env, run_cli
from .conftest import one_error_line

APNS_ARGS = ["--apns-key-id", "ABC123DEFG", "--apns-team-id", "TEAM123456", "--apns-topic", "com.example.app"]


def _stored(db_url: str, pool: str = POOL) -> tuple[str, str]:
    with engine_for(db_url).connect() as conn:
        return tuple(conn.execute(text("SELECT fcm_service_account, apns_key FROM pools WHERE id = :p"),
                                  {"p": pool}).one())


def _create(db_url, creds, env=None, *extra):
    return run_cli(db_url, "pool", "create", POOL, "--fcm-service-account", creds["sa"], "--apns-key", creds["p8"],
                   *APNS_ARGS, *extra, env=env)


def test_keyring_round_trip_rotation_and_tampering():
    old, new = new_key(), new_key()
    sealed = Keyring((old,)).seal("-----BEGIN PRIVATE KEY-----\nabc\n")
    assert sealed.startswith("fernet:") and "abc" not in sealed
    both = Keyring((new, old))
    assert both.open(sealed) == "-----BEGIN PRIVATE KEY-----\nabc\n"
    resealed = both.reseal(sealed)
    assert Keyring((new,)).open(resealed) == "-----BEGIN PRIVATE KEY-----\nabc\n"
    with pytest.raises(SecretError, match="do not open"):
        Keyring((new,)).open(sealed)
    with pytest.raises(SecretError, match="do not open"):
        both.open(sealed[:-4] + "AAAA")
    with pytest.raises(SecretError, match="not set"):
        Keyring(()).open(sealed)
    with pytest.raises(SecretError, match="refusing to store"):
        Keyring(()).seal("x")
    with pytest.raises(SecretError, match="key 2 of 2"):
        Keyring.from_setting(f"{old},not-a-key")


def test_pool_create_stores_key_material_encrypted_and_show_tells_how(db_url, creds):
    r = _create(db_url, creds)
    assert r.returncode == 0, r.stderr
    assert "encrypted with PUSHSYNC_SECRET_KEY" in r.stdout
    fcm, apns = _stored(db_url)
    for value in (fcm, apns):
        assert value.startswith("fernet:")
        assert "PRIVATE KEY" not in value
    assert creds["rsa_pem"].splitlines()[1] not in fcm and creds["p8_pem"].splitlines()[1] not in apns
    shown = json.loads(run_cli(db_url, "pool", "show", POOL).stdout)
    assert shown["fcm"]["stored"] == "encrypted" and shown["apns"]["stored"] == "encrypted"
    assert shown["fcm"]["client_email"] == "pushsync@demo-project.iam.gserviceaccount.com"
    assert "error" not in shown["fcm"] and "error" not in shown["apns"]
    # with another key neither opens, and show says so for both platforms
    other = json.loads(run_cli(db_url, "pool", "show", POOL, env=cli_env(db_url, PUSHSYNC_SECRET_KEY=new_key())).stdout)
    assert "do not open" in other["fcm"]["error"] and other["apns"]["error"] == other["fcm"]["error"]
    # what a worker opens is the material that was given
    with session_scope(engine_for(db_url)) as s:
        got = repo.pool_credentials(s, POOL)
    assert got.apns_key == creds["p8_pem"] and got.fcm_service_account["private_key"] == creds["rsa_pem"]


def test_pool_create_without_a_key_refuses_and_writes_nothing(db_url, creds):
    env = cli_env(db_url)
    del env["PUSHSYNC_SECRET_KEY"]
    line = one_error_line(_create(db_url, creds, env), 2)
    assert "PUSHSYNC_SECRET_KEY" in line and "--by-reference" in line
    assert "unknown pool" in one_error_line(run_cli(db_url, "pool", "show", POOL), 1)
    # a pool without credentials needs no key
    assert run_cli(db_url, "pool", "create", POOL, env=env).returncode == 0


def test_a_bad_secret_key_setting_is_refused_at_start_up(db_url):
    r = run_cli(db_url, "pool", "show", POOL, env=cli_env(db_url, PUSHSYNC_SECRET_KEY="hunter2"))
    line = one_error_line(r, 2)
    assert line.startswith("pushsync: PUSHSYNC_SECRET_KEY: key 1 of 1") and "hunter2" not in line


def test_by_reference_stores_only_the_path_and_the_worker_reads_the_file(db_url, creds, tmp_path):
    env = cli_env(db_url)
    del env["PUSHSYNC_SECRET_KEY"]
    r = _create(db_url, creds, env, "--by-reference")
    assert r.returncode == 0, r.stderr
    assert _stored(db_url) == (f"file:{creds['sa']}", f"file:{creds['p8']}")
    with session_scope(engine_for(db_url)) as s:
        assert repo.pool_credentials(s, POOL, keyring=Keyring(())).apns_key == creds["p8_pem"]
    # a referenced file replaced by binary junk, then removed: the worker gets a SecretError
    # (a dead letter with the reason), never a raw decoding error
    Path(creds["p8"]).write_bytes(b"\xff\xfe\x00junk")
    with session_scope(engine_for(db_url)) as s, pytest.raises(SecretError, match="is not text"):
        repo.pool_credentials(s, POOL)
    os.remove(creds["p8"])
    with session_scope(engine_for(db_url)) as s, pytest.raises(SecretError, match="cannot read"):
        repo.pool_credentials(s, POOL)


def test_rekey_moves_every_pool_to_the_new_key_and_seals_old_plaintext(db_url, creds):
    assert _create(db_url, creds).returncode == 0
    second = "eu-west-1:0b6f3c9e-1d2a-4e5f-8a9b-0c1d2e3f4a5b"
    # a pool written in plain text by a version before encryption
    with engine_for(db_url).begin() as conn:
        conn.execute(text("INSERT INTO pools (id, apns_key, apns_key_id, apns_team_id, apns_topic, created_at, "
                          "updated_at) VALUES (:id, :k, 'ABC123DEFG', 'TEAM123456', 'com.x', :t, :t)"),
                     {"id": second, "k": creds["p8_pem"], "t": "2026-01-01 00:00:00"})
    assert json.loads(run_cli(db_url, "pool", "show", second).stdout)["apns"]["stored"].startswith("plaintext")
    fresh = new_key()
    # without the old key among the keys nothing opens: all or nothing, the store is unchanged
    before = (_stored(db_url), _stored(db_url, second))
    line = one_error_line(run_cli(db_url, "pool", "rekey", env=cli_env(db_url, PUSHSYNC_SECRET_KEY=fresh)), 2)
    assert POOL in line and "do not open" in line
    assert (_stored(db_url), _stored(db_url, second)) == before
    r = run_cli(db_url, "pool", "rekey", env=cli_env(db_url, PUSHSYNC_SECRET_KEY=f"{fresh},{TEST_SECRET_KEY}"))
    assert r.returncode == 0, r.stderr
    assert "3 secrets of 2 pools" in r.stdout
    only_new = Keyring((fresh,))
    with session_scope(engine_for(db_url)) as s:
        assert repo.pool_credentials(s, POOL, keyring=only_new).apns_key == creds["p8_pem"]
        assert repo.pool_credentials(s, second, keyring=only_new).apns_key == creds["p8_pem"]
    with engine_for(db_url).connect() as conn:
        assert all(v.startswith("fernet:") for v in conn.execute(text("SELECT apns_key FROM pools")).scalars())
    line = one_error_line(run_cli(db_url, "pool", "rekey", env=cli_env(db_url, PUSHSYNC_SECRET_KEY="")), 2)
    assert "PUSHSYNC_SECRET_KEY" in line


def test_events_of_a_pool_no_key_opens_are_dead_lettered_with_the_reason(engine, monkeypatch):
    with session_scope(engine) as s:
        repo.upsert_pool(s, POOL, apns={"key": "PEM", "key_id": "K", "team_id": "T", "topic": "t"},
                         keyring=Keyring((new_key(),)))
        dev = repo.register_device(s, POOL, IDENT, "APNS", "ab")
        repo.subscribe(s, POOL, IDENT, ["notes"], dev)
    res, letters = plan.IngestResult(), []
    with session_scope(engine) as s:
        sent = plan.micro_batch(s, [contract.event({"identityPoolId": POOL, "identityId": IDENT,
                                                    "datasetName": "notes", "syncCount": 1})],
                                held=set(), flushes=set(), credentials=PoolCache().credentials, batch_size=10,
                                redeliver_after=180, enqueued_at=None, res=res, letters=letters)
        repo.add_dead_letters(s, letters)
    assert sent == [] and res.dead_lettered == 1
    with session_scope(engine) as s:
        (dl,) = repo.list_dead_letters(s, 10)
    assert "do not open with any key of PUSHSYNC_SECRET_KEY" in dl["reason"]
    assert "PEM" not in json.dumps(dl)


def test_sqlite_store_and_its_wal_files_are_private(tmp_path):
    url = f"sqlite:///{tmp_path}/private.db"
    r = run_cli(url, "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert run_cli(url, "pool", "create", POOL).returncode == 0
    files = [p for p in tmp_path.iterdir() if p.name.startswith("private.db")]
    assert {p.name for p in files} >= {"private.db"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))
    # a store file made world-readable by hand is made private again when pushsync opens it
    (tmp_path / "private.db").chmod(0o644)
    assert run_cli(url, "pool", "show", POOL).returncode == 0
    assert stat.S_IMODE((tmp_path / "private.db").stat().st_mode) == 0o600
