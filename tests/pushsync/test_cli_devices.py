"""Device and subscription commands through the real entry point: good and bad input, bulk
import, tokens of the contract's full length."""

from __future__ import annotations

import json

import pytest

from ..conftest import IDENT, IDENT2, POOL, run_cli, subscriptions_of
from .conftest import UUID_RE, one_error_line, register


def test_device_register_prints_the_id_alone_and_is_stable(store):
    first = run_cli(store, "device", "register", POOL, IDENT, "--platform", "APNS", "--token", "ABCDEF0123")
    assert first.returncode == 0 and UUID_RE.match(first.stdout.strip()) and first.stdout.count("\n") == 1
    again = run_cli(store, "device", "register", POOL, IDENT, "--platform", "APNS", "--token", "abcdef0123")
    assert again.stdout == first.stdout  # APNs tokens are stored lower-case
    assert register(store, platform="FCM", token="x") == register(store, platform="GCM", token="x")


@pytest.mark.parametrize("args,code,text", [
    ([POOL, IDENT, "--platform", "ADM", "--token", "t"], 2, "not supported"),
    ([POOL, IDENT, "--platform", "WNS", "--token", "t"], 2, "platform"),
    ([POOL, IDENT, "--platform", "APNS", "--token", "nothex"], 2, "token"),
    ([POOL, "bad", "--platform", "GCM", "--token", "t"], 2, "identityId"),
    (["bad", IDENT, "--platform", "GCM", "--token", "t"], 2, "identityPoolId"),
    ([POOL, IDENT, "--platform", "GCM", "--token", ""], 2, "token"),
    ([POOL, IDENT, "--token", "t"], 2, "--platform"),
    (["us-west-2:00000000-0000-0000-0000-000000000000", IDENT, "--platform", "GCM", "--token", "t"], 1,
     "unknown pool"),
])
def test_device_register_refuses_bad_input_with_one_line(store, args, code, text):
    r = run_cli(store, "device", "register", *args)
    assert text in one_error_line(r, code)
    assert r.stdout == ""


def test_device_unregister_removes_it_and_says_so(store):
    dev = register(store)
    assert run_cli(store, "device", "unregister", dev).returncode == 0
    assert "unknown device" in one_error_line(run_cli(store, "device", "unregister", dev), 1)
    assert "deviceId" in one_error_line(run_cli(store, "device", "unregister", "nope"), 2)
    # the token can be registered again and gets a new id
    assert register(store) != dev


def test_subscribe_unsubscribe_and_subscribe_all(store):
    from store.db import engine_for, session_scope

    a = register(store, token="a")
    b = register(store, token="b")
    for ds in ("contacts", "notes"):
        r = run_cli(store, "subscribe", POOL, IDENT, ds, a)
        assert r.returncode == 0 and "subscribed" in r.stdout
    assert "already" in run_cli(store, "subscribe", POOL, IDENT, "notes", a).stdout
    r = run_cli(store, "subscribe-all", POOL, IDENT, b)
    assert r.returncode == 0 and "2 datasets" in r.stdout
    c = register(store, token="c")
    r = run_cli(store, "subscribe-all", POOL, IDENT, c, "--datasets", "notes,photos")
    assert r.returncode == 0, r.stderr
    r = run_cli(store, "unsubscribe", POOL, IDENT, "notes", a)
    assert r.returncode == 0 and "unsubscribed" in r.stdout
    assert "was not" in run_cli(store, "unsubscribe", POOL, IDENT, "notes", a).stdout
    with session_scope(engine_for(store)) as s:
        assert subscriptions_of(s, a) == ["contacts"]
        assert subscriptions_of(s, b) == ["contacts", "notes"]
        assert subscriptions_of(s, c) == ["notes", "photos"]


@pytest.mark.parametrize("cmd", ["subscribe", "unsubscribe"])
def test_subscription_commands_refuse_bad_input(store, cmd):
    dev = register(store)
    assert "datasetName" in one_error_line(run_cli(store, cmd, POOL, IDENT, "bad/name", dev), 2)
    assert "deviceId" in one_error_line(run_cli(store, cmd, POOL, IDENT, "ds", "x"), 2)
    assert "identityId" in one_error_line(run_cli(store, cmd, POOL, "x", "ds", dev), 2)
    other = "00000000-0000-4000-8000-000000000000"
    assert "unknown device" in one_error_line(run_cli(store, cmd, POOL, IDENT, "ds", other), 1)
    # a device of another identity is refused, not silently subscribed
    assert "not registered to identity" in one_error_line(run_cli(store, cmd, POOL, IDENT2, "ds", dev), 1)


def test_subscribe_all_refuses_a_bad_subset(store):
    dev = register(store)
    r = run_cli(store, "subscribe-all", POOL, IDENT, dev, "--datasets", "ok,bad/one")
    assert "datasetName" in one_error_line(r, 2)


def test_device_import_imports_good_lines_and_names_bad_ones(store, tmp_path):
    lines = [
        {"identityPoolId": POOL, "identityId": IDENT, "platform": "GCM", "token": "g1", "datasets": ["a", "b"]},
        "this is not json",
        {"identityPoolId": POOL, "identityId": IDENT, "platform": "ADM", "token": "x"},
        {"identityPoolId": POOL, "identityId": IDENT, "platform": "APNS", "token": "AB12", "datasets": ["a"]},
        {"identityPoolId": "us-west-2:00000000-0000-0000-0000-000000000000", "identityId": IDENT,
         "platform": "GCM", "token": "g9"},
        {"identityPoolId": POOL, "identityId": IDENT2, "platform": "GCM", "token": "g2", "datasets": ["bad/x"]},
        {"identityPoolId": POOL, "identityId": IDENT2, "platform": "GCM", "token": "g1", "datasets": ["c"]},
    ]
    path = tmp_path / "devices.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    r = run_cli(store, "device", "import", str(path))
    assert r.returncode == 1
    assert "imported 3 devices, 4 bad lines" in r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("line ")]
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 3", "line 5", "line 6"]
    assert "not supported" in errors[1] and "unknown pool" in errors[2] and "datasetName" in errors[3]
    from store import repo
    from store.db import engine_for, session_scope

    g1 = register(store, ident=IDENT2, token="g1")
    with session_scope(engine_for(store)) as s:
        # g1 moved to IDENT2 on line 7, so it lost a and b and holds c only
        assert subscriptions_of(s, g1) == ["c"]
        apns = repo.resolve_many(s, [(POOL, IDENT, "a")])
        assert [row[4] for row in apns] == ["APNS"]


def test_device_import_from_stdin_and_missing_file(store):
    line = json.dumps({"identityPoolId": POOL, "identityId": IDENT, "platform": "GCM", "token": "s1"})
    r = run_cli(store, "device", "import", "-", input=line + "\n")
    assert r.returncode == 0 and "imported 1 device, 0 bad lines" in r.stdout
    assert "FILE" in one_error_line(run_cli(store, "device", "import", "/no/such.jsonl"), 2)


def test_device_import_takes_the_apis_spelling_and_shows_the_shape_of_a_line(store):
    api_spelled = json.dumps({"identityPoolId": POOL, "identityId": IDENT, "Platform": "GCM", "Token": "s2"})
    r = run_cli(store, "device", "import", "-", input=api_spelled + "\n")
    assert r.returncode == 0 and "imported 1 device, 0 bad lines" in r.stdout, r.stderr
    body_only = json.dumps({"Platform": "GCM", "Token": "s3"})  # a register body: the path's ids are missing
    r = run_cli(store, "device", "import", "-", input=body_only + "\n")
    error = next(line for line in r.stderr.splitlines() if line.startswith("line 1"))
    assert r.returncode == 1 and "identityPoolId: is required; a line is {" in error and '"platform"' in error


def test_a_4096_character_token_registers_and_imports(store, tmp_path):
    import secrets

    # the contract's limit (FCM tokens may be up to 4 kB); random, as real tokens are, because
    # PostgreSQL compresses a repetitive value until it fits its index (and not starting with "-",
    # which argparse would read as an option: one run in 64 did)
    long_token = "t" + secrets.token_urlsafe(3072)[:4095]
    first = register(store, token=long_token)
    assert register(store, token=long_token) == first
    lines = [json.dumps({"identityPoolId": POOL, "identityId": IDENT, "platform": "GCM",
                         "token": secrets.token_urlsafe(3072)[:4096], "datasets": ["a"]}) for _ in range(3)]
    r = run_cli(store, "device", "import", "-", input="\n".join(lines) + "\n")
    assert r.returncode == 0 and "imported 3 devices, 0 bad lines" in r.stdout, r.stderr
    too_long = run_cli(store, "device", "register", POOL, IDENT, "--platform", "GCM", "--token", "x" * 4097)
    assert "token" in one_error_line(too_long, 2)


def test_a_line_the_store_refuses_does_not_take_the_good_lines_of_its_chunk(store, monkeypatch):
    """A pool deleted while its lines wait in the chunk: the store refuses them (foreign key),
    and the other lines of the same chunk still go in."""
    from sqlalchemy import text

    from pushsync import settings
    from store import repo
    from store.db import engine_for, session_scope
    from store.imports import import_lines
    from store.models import Pool

    from ..conftest import POOL2

    assert run_cli(store, "pool", "create", POOL2).returncode == 0
    monkeypatch.setenv("PUSHSYNC_DATABASE_URL", store)
    settings.get_settings.cache_clear()

    def lines():
        yield json.dumps({"identityPoolId": POOL2, "identityId": IDENT, "platform": "GCM", "token": "doomed"})
        with session_scope(engine_for(store)) as s:
            s.delete(s.get(Pool, POOL2))
        for i in range(3):
            yield json.dumps({"identityPoolId": POOL, "identityId": IDENT, "platform": "GCM", "token": f"ok{i}",
                              "datasets": ["a"]})

    bad = []
    try:
        imported, n_bad = import_lines(lines(), on_bad=lambda n, msg: bad.append((n, msg)))
    finally:
        settings.get_settings.cache_clear()
    assert (imported, n_bad) == (3, 1)
    assert bad[0][0] == 1 and "the store refused it" in bad[0][1]
    with session_scope(engine_for(store)) as s:
        assert len(repo.known_datasets(s, POOL, IDENT)) == 1
        assert sorted(t for (t,) in s.execute(text("SELECT token FROM devices"))) == ["ok0", "ok1", "ok2"]
