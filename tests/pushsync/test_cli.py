"""Every CLI command through the real entry point (a subprocess), good and bad input."""

from __future__ import annotations

import json

import pytest

from ..conftest import IDENT, POOL, run_cli
from .conftest import one_error_line


def test_db_upgrade_is_idempotent(db_url):
    for _ in range(2):
        r = run_cli(db_url, "db", "upgrade")
        assert r.returncode == 0, r.stderr
        assert "revision 0007" in r.stdout


def test_commands_before_db_upgrade_say_so(tmp_path):
    r = run_cli(f"sqlite:///{tmp_path}/empty.db", "pool", "create", POOL)
    line = one_error_line(r, 1)
    assert "pushsync db upgrade" in line and f"sqlite:///{tmp_path}/empty.db (PUSHSYNC_DATABASE_URL)" in line


def test_a_sqlite_store_in_a_missing_directory_is_one_error_line(tmp_path):
    r = run_cli(f"sqlite:///{tmp_path}/no/such/dir/store.db", "pool", "show", POOL)
    assert "the store is unreachable or failing" in one_error_line(r, 1)


def test_bad_setting_names_the_variable(db_url):
    from ..conftest import cli_env

    r = run_cli(db_url, "pool", "show", POOL, env=cli_env(db_url, PUSHSYNC_BATCH_SIZE="zero"))
    assert one_error_line(r, 2).startswith("pushsync: PUSHSYNC_BATCH_SIZE:")


def test_pool_create_with_credentials_and_show_redacts_secrets(db_url, creds):
    r = run_cli(db_url, "pool", "create", POOL, "--fcm-service-account", creds["sa"], "--apns-key", creds["p8"],
                "--apns-key-id", "ABC123DEFG", "--apns-team-id", "TEAM123456", "--apns-topic", "com.example.app")
    assert r.returncode == 0, r.stderr
    assert "GCM, APNS" in r.stdout
    r = run_cli(db_url, "pool", "show", POOL)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["pushSync"] == {"GCM": True, "APNS": True}
    assert shown["apns"]["topic"] == "com.example.app" and shown["fcm"]["project_id"] == "demo-project"
    body = creds["rsa_pem"].splitlines()[1]
    assert body not in r.stdout and creds["p8_pem"].splitlines()[1] not in r.stdout
    assert "PRIVATE KEY" not in r.stdout
    # a second create updates in place
    r = run_cli(db_url, "pool", "create", POOL, "--apns-key", creds["p8"], "--apns-key-id", "ABC123DEFG",
                "--apns-team-id", "TEAM123456", "--apns-topic", "com.example.other")
    assert "updated" in r.stdout
    assert json.loads(run_cli(db_url, "pool", "show", POOL).stdout)["apns"]["topic"] == "com.example.other"


@pytest.mark.parametrize("args,field", [
    (["not-a-pool"], "identityPoolId"),
    ([POOL, "--apns-key-id", "ABC123DEFG"], "--apns-key"),
    ([POOL, "--fcm-service-account", "/no/such/file.json"], "--fcm-service-account"),
    ([POOL, "--fcm-rate", "fast"], "--fcm-rate"),
    ([POOL, "--fcm-rate", "0/min"], "--fcm-rate"),
    ([POOL, "--apns-window", "-5"], "--apns-window"),
    ([POOL, "--fcm-window", "a while"], "--fcm-window"),
])
def test_pool_create_bad_input_exits_2(db_url, args, field):
    r = run_cli(db_url, "pool", "create", *args)
    assert field in one_error_line(r, 2)


def test_pool_create_sets_a_window_per_platform_and_a_refused_one_writes_nothing(db_url):
    r = run_cli(db_url, "pool", "create", POOL, "--apns-window", "1200")
    assert r.returncode == 0 and "APNs window 1200 s" in r.stdout, r.stderr
    one_error_line(run_cli(db_url, "pool", "create", POOL, "--apns-window", "1e9", "--fcm-window", "5"), 2)
    shown = json.loads(run_cli(db_url, "pool", "show", POOL).stdout)["windowSeconds"]
    assert shown == {"APNS": 1200.0, "GCM": 1.0}  # the refused call wrote neither


def test_pool_create_sets_the_fcm_budget_and_a_refused_rate_writes_nothing(db_url):
    r = run_cli(db_url, "pool", "create", POOL, "--fcm-rate", "100/s")
    assert r.returncode == 0 and "FCM budget 6000 pushes a minute" in r.stdout, r.stderr
    assert json.loads(run_cli(db_url, "pool", "show", POOL).stdout)["fcmRatePerMinute"] == 6000
    one_error_line(run_cli(db_url, "pool", "create", POOL, "--fcm-rate", "-1"), 2)
    run_cli(db_url, "pool", "create", POOL)  # credentials again, the rate left as it was
    assert json.loads(run_cli(db_url, "pool", "show", POOL).stdout)["fcmRatePerMinute"] == 6000
    r = run_cli(db_url, "pool", "create", "us-east-1:00000000-0000-0000-0000-00000000abcd")
    assert json.loads(run_cli(db_url, "pool", "show", "us-east-1:00000000-0000-0000-0000-00000000abcd").stdout
                      )["fcmRatePerMinute"] == 600_000


def test_pool_create_refuses_wrong_key_files(db_url, creds, tmp_path):
    r = run_cli(db_url, "pool", "create", POOL, "--fcm-service-account", creds["p8"])
    assert "--fcm-service-account" in one_error_line(r, 2)
    r = run_cli(db_url, "pool", "create", POOL, "--apns-key", creds["sa"], "--apns-key-id", "ABC123DEFG",
                "--apns-team-id", "TEAM123456", "--apns-topic", "com.example.app")
    assert "--apns-key" in one_error_line(r, 2)
    r = run_cli(db_url, "pool", "create", POOL, "--apns-key", creds["p8"], "--apns-key-id", "short",
                "--apns-team-id", "TEAM123456", "--apns-topic", "com.example.app")
    assert "--apns-key-id" in one_error_line(r, 2)
    assert "unknown pool" in one_error_line(run_cli(db_url, "pool", "show", POOL), 1)


def test_pool_show_unknown_exits_1(db_url):
    assert "unknown pool" in one_error_line(run_cli(db_url, "pool", "show", POOL), 1)


def test_usage_errors_exit_2_with_one_line(db_url):
    assert one_error_line(run_cli(db_url, "device"), 2).startswith("pushsync:")
    assert one_error_line(run_cli(db_url, "nonsense"), 2).startswith("pushsync:")


def test_dlq_list_and_purge_older_than(store):
    from datetime import timedelta

    from pushsync.messages import DeadLetter as Letter
    from store import repo
    from store.db import engine_for, session_scope
    from store.models import DeadLetter, utcnow

    assert run_cli(store, "dlq", "list").stdout.strip() == "no dead letters"
    with session_scope(engine_for(store)) as s:
        repo.add_dead_letters(s, [Letter.event({"identityId": IDENT, "datasetName": "d", "syncCount": 1},
                                               "unknown pool", "x"),
                                  Letter.event({"identityId": IDENT}, "unknown pool", "y")])
        old = min(d["id"] for d in repo.list_dead_letters(s))
        s.get(DeadLetter, old).created_at = utcnow() - timedelta(days=3)
    listed = json.loads(run_cli(store, "dlq", "list", "--json").stdout)
    assert [d["reason"] for d in listed] == ["unknown pool: x", "unknown pool: y"]
    r = run_cli(store, "dlq", "purge", "--older-than", "2")
    assert r.returncode == 0 and "purged 1" in r.stdout
    assert [d["reason"] for d in json.loads(run_cli(store, "dlq", "list", "--json").stdout)] == ["unknown pool: y"]
    assert "purged 1" in run_cli(store, "dlq", "purge").stdout


def test_pool_create_refuses_an_http_token_uri(db_url, tmp_path, creds):
    account = json.loads(open(creds["sa"]).read())
    account["token_uri"] = "http://127.0.0.1:1/token"
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(account))
    r = run_cli(db_url, "pool", "create", POOL, "--fcm-service-account", str(path))
    assert "https://" in one_error_line(r, 2)


def test_dlq_list_shows_no_terminal_escapes(store):
    from pushsync.messages import DeadLetter as Letter
    from store import repo
    from store.db import engine_for, session_scope

    with session_scope(engine_for(store)) as s:
        repo.add_dead_letters(s, [Letter.event({"identityId": "\x1b[31m"}, "invalid event",
                                               "eventId \x1b[2J\x1b]0;owned\x07")])
    out = run_cli(store, "dlq", "list").stdout
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out


PUBLISH_BROKER = "redis://127.0.0.1:6379/6"
UNKNOWN = "us-east-1:00000000-0000-4000-8000-00000000dead"


def _queued_events() -> int:
    import redis

    from pushsync.queues import EVENTS_QUEUE

    return redis.Redis.from_url(PUBLISH_BROKER).llen(EVENTS_QUEUE)


def test_publish_to_a_pool_the_store_does_not_know_enqueues_nothing(db_url):
    import redis

    redis.Redis.from_url(PUBLISH_BROKER).flushdb()
    from ..conftest import cli_env

    env = cli_env(db_url, PUSHSYNC_BROKER_URL=PUBLISH_BROKER)
    assert run_cli(db_url, "db", "upgrade").returncode == 0
    r = run_cli(db_url, "publish", UNKNOWN, IDENT, "notes", "3", env=env)
    line = one_error_line(r, 1)
    assert f"unknown pool {UNKNOWN}" in line and "--no-check" in line and _queued_events() == 0
    # a producer without store access says so, and the event goes as before (to the dead letters)
    r = run_cli(db_url, "publish", UNKNOWN, IDENT, "notes", "3", "--no-check",
                env=cli_env("postgresql+psycopg://nobody@127.0.0.1:1/none", PUSHSYNC_BROKER_URL=PUBLISH_BROKER))
    assert r.returncode == 0 and "enqueued notes sync count 3" in r.stdout, r.stderr
    assert _queued_events() == 1
    assert run_cli(db_url, "pool", "create", POOL).returncode == 0
    r = run_cli(db_url, "publish", POOL, IDENT, "notes", "4", env=env)
    assert r.returncode == 0, r.stderr
    assert _queued_events() == 2


def test_publish_with_the_store_unreachable_enqueues_nothing_and_names_the_way_round():
    import redis

    redis.Redis.from_url(PUBLISH_BROKER).flushdb()
    from ..conftest import cli_env

    down = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    r = run_cli(down, "publish", POOL, IDENT, "notes", "3", env=cli_env(down, PUSHSYNC_BROKER_URL=PUBLISH_BROKER))
    line = one_error_line(r, 1)
    assert "store is unreachable" in line and "--no-check" in line and _queued_events() == 0


def test_version_names_the_installed_package():
    from importlib.metadata import version

    r = run_cli("sqlite://", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"pushsync {version('pushsync')}", r.stderr


def test_output_into_a_closed_pipe_ends_quietly(db_url):
    """`pushsync stats --json | head`: the reader is gone before the command writes."""
    import subprocess

    from ..conftest import PUSHSYNC, cli_env

    proc = subprocess.Popen([PUSHSYNC, "stats", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(db_url, PUSHSYNC_BROKER_URL=PUBLISH_BROKER))
    proc.stdout.close()
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_dlq_list_has_a_header_over_its_columns(db_url):
    from pushsync.messages import DeadLetter
    from store import repo
    from store.db import engine_for, session_scope

    assert run_cli(db_url, "db", "upgrade").returncode == 0
    with session_scope(engine_for(db_url)) as s:
        repo.add_dead_letters(s, [DeadLetter.event({"identityPoolId": POOL, "identityId": IDENT,
                                                    "datasetName": "notes", "syncCount": 2}, "unknown pool", "x")])
    lines = run_cli(db_url, "dlq", "list").stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "CREATED", "(UTC)", "KIND"] and "REASON" in lines[0]
    assert "unknown pool: x" in lines[1] and f"[{IDENT} notes 2]" in lines[1]
