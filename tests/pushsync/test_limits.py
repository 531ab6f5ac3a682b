"""Limits per identity and per import line: what exceeds them is refused with the rule named and
leaves the store as it was (through the real command line, on SQLite and PostgreSQL)."""

from __future__ import annotations

import json

from sqlalchemy import text

from store.db import engine_for, session_scope

from ..conftest import IDENT, IDENT2, POOL, cli_env, identity_of, run_cli, subscriptions_of
from .conftest import one_error_line


def _env(db_url, **limits):
    return cli_env(db_url, **{f"PUSHSYNC_{k.upper()}": str(v) for k, v in limits.items()})


def _register(db_url, env, ident, token, platform="GCM"):
    return run_cli(db_url, "device", "register", POOL, ident, "--platform", platform, "--token", token, env=env)


def test_devices_per_identity_refused_past_the_limit_and_a_move_into_a_full_identity_too(store):
    env = _env(store, max_devices_per_identity=2)
    first = [_register(store, env, IDENT, f"tok-{i}").stdout.strip() for i in range(2)]
    line = one_error_line(_register(store, env, IDENT, "tok-2"), 2)
    assert "PUSHSYNC_MAX_DEVICES_PER_IDENTITY" in line and "limit is 2" in line
    # the same token again is not a new device
    assert _register(store, env, IDENT, "tok-0").stdout.strip() == first[0]
    # a device of another identity cannot move into the full one, and stays where it was
    other = _register(store, env, IDENT2, "tok-9").stdout.strip()
    assert "PUSHSYNC_MAX_DEVICES_PER_IDENTITY" in one_error_line(_register(store, env, IDENT, "tok-9"), 2)
    with session_scope(engine_for(store)) as s:
        assert identity_of(s, other) == IDENT2
    shown = json.loads(run_cli(store, "pool", "show", POOL).stdout)
    assert shown["devices"]["GCM"]["active"] == 3
    # the default (100) lets the third one in
    assert _register(store, cli_env(store), IDENT, "tok-2").returncode == 0


def test_datasets_per_identity_counts_every_device_of_the_identity(store):
    env = _env(store, max_datasets_per_identity=3)
    a = _register(store, env, IDENT, "tok-a").stdout.strip()
    b = _register(store, env, IDENT, "tok-b").stdout.strip()
    for dev, ds in ((a, "one"), (a, "two"), (b, "two"), (b, "three")):
        r = run_cli(store, "subscribe", POOL, IDENT, ds, dev, env=env)
        assert r.returncode == 0, r.stderr
    line = one_error_line(run_cli(store, "subscribe", POOL, IDENT, "four", b, env=env), 2)
    assert "PUSHSYNC_MAX_DATASETS_PER_IDENTITY" in line and "4 datasets" in line
    with session_scope(engine_for(store)) as s:
        assert subscriptions_of(s, b) == ["three", "two"]
    # subscribing to one the identity has already is no new dataset
    assert run_cli(store, "subscribe", POOL, IDENT, "one", b, env=env).returncode == 0


def test_token_length_limit_is_configurable(store):
    line = one_error_line(_register(store, _env(store, max_token_length=16), IDENT, "x" * 17), 2)
    assert "PUSHSYNC_MAX_TOKEN_LENGTH" in line
    assert "PUSHSYNC_MAX_TOKEN_LENGTH" in one_error_line(
        run_cli(store, "pool", "show", POOL, env=_env(store, max_token_length=5000)), 2)


def test_import_refuses_lines_past_the_limits_by_number_and_keeps_the_rest(store):
    env = _env(store, max_devices_per_identity=3, max_datasets_per_line=2, max_datasets_per_identity=20)

    def line(ident, tok, ds):
        return json.dumps({"identityPoolId": POOL, "identityId": ident, "platform": "GCM", "token": tok,
                           "datasets": ds})

    lines = [line(IDENT, f"t{i}", ["notes"]) for i in range(5)]
    lines.append(line(IDENT2, "many", [f"d{i}" for i in range(20_000)]))
    lines.append(line(IDENT2, "ok", ["a", "b"]))
    r = run_cli(store, "device", "import", "-", input="\n".join(lines) + "\n", env=env)
    assert r.returncode == 1
    assert "imported 4 devices, 3 bad lines" in r.stdout
    bad = dict(b.split(": ", 1) for b in r.stderr.strip().splitlines() if b.startswith("line "))
    assert sorted(bad) == ["line 4", "line 5", "line 6"]
    assert "PUSHSYNC_MAX_DEVICES_PER_IDENTITY" in bad["line 4"] and "PUSHSYNC_MAX_DEVICES_PER_IDENTITY" in bad["line 5"]
    assert "20000 datasets on one line" in bad["line 6"] and "PUSHSYNC_MAX_DATASETS_PER_LINE" in bad["line 6"]
    with session_scope(engine_for(store)) as s:
        got = s.execute(text("SELECT identity_id, token FROM devices ORDER BY token")).all()
    assert [(i, t) for i, t in got] == [(IDENT2, "ok"), (IDENT, "t0"), (IDENT, "t1"), (IDENT, "t2")]
