"""A full run, then a search of everything it left behind for key material and device tokens.

The run: a pool created from the emulators' service account and .p8 key, devices on every
platform registered one by one and by import, events published by the CLI and the Python client,
pushes accepted, a token the service declares dead, a push refused for good (dead letter), a
poison event, `dlq list`, `pool show`, `stats`. Searched: every Redis key and value, every log
line of the worker, the scheduler, Flower and the metrics server, every CLI output, the
dead-letter store, the metrics page, Flower's API answers and a dump of the store. Not searched:
the pools' two encrypted columns (checked to hold only ``fernet:`` values) and ``devices.token``,
the one place a device token must be (APNs and FCM need it; a token alone lets nobody push)."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import redis

from ..conftest import POOL, PUSHSYNC, TEST_SECRET_KEY
from .harness import Pipeline, RedisServer, new_identity, wait_for
from .test_observability import _free_port

FLOWER_LOGIN = "ops:secret-scan-flower-password"


def _pem_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def _redis_everything(url: str) -> str:
    client = redis.Redis.from_url(url)
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        out.append(key.decode(errors="replace"))
        if kind == "string":
            out.append(client.get(key).decode(errors="replace"))
        elif kind == "list":
            out += [v.decode(errors="replace") for v in client.lrange(key, 0, -1)]
        elif kind == "hash":
            out += [f"{k.decode(errors='replace')}={v.decode(errors='replace')}"
                    for k, v in client.hgetall(key).items()]
        elif kind == "zset":
            out += [v.decode(errors="replace") for v in client.zrange(key, 0, -1)]
        elif kind == "set":
            out += [v.decode(errors="replace") for v in client.smembers(key)]
        elif kind == "stream":
            out += [json.dumps({k.decode(): v.decode(errors="replace") for k, v in fields.items()})
                    for _id, fields in client.xrange(key)]
    return "\n".join(out)


def _store_dump(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        for fcm, apns in conn.execute("SELECT fcm_service_account, apns_key FROM pools"):
            assert fcm.startswith("fernet:") and apns.startswith("fernet:")
        conn.execute("UPDATE pools SET fcm_service_account = 'checked', apns_key = 'checked'")
        conn.execute("UPDATE devices SET token = 'checked'")
        return "\n".join(conn.iterdump())  # the dump of the changed copy; nothing is committed
    finally:
        conn.rollback()
        conn.close()


def _get(url: str, auth: str | None = None) -> str:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError:  # not listening yet
        return ""


def _start_servers(pipe, tmp_path) -> tuple[list[subprocess.Popen], int, int]:
    port_metrics, port_flower = _free_port(), _free_port()
    procs = []
    for args, name in (([PUSHSYNC, "metrics", "--port", str(port_metrics)], "metrics"),
                       ([PUSHSYNC, "flower", "--port", str(port_flower)], "flower")):
        log = open(tmp_path / f"{name}.log", "w")
        procs.append(subprocess.Popen(args, env={**pipe.env, "FLOWER_BASIC_AUTH": FLOWER_LOGIN}, stdout=log,
                                      stderr=subprocess.STDOUT))
    wait_for(lambda: _get(f"http://127.0.0.1:{port_flower}/api/workers", FLOWER_LOGIN).startswith("{"), 30,
             what="Flower")
    return procs, port_metrics, port_flower


def _register(cli, emulator) -> tuple[str, dict, list[str]]:
    """A pool from the emulators' key files; three devices of one identity by the CLI, a dead
    token and one the service refuses for good by import. Returns (identity, devices, tokens)."""
    info = emulator.info
    cli("pool", "create", POOL, "--fcm-service-account", info["service_account"], "--apns-key", info["apns_key"],
        "--apns-key-id", info["apns_key_id"], "--apns-team-id", info["apns_team_id"],
        "--apns-topic", info["apns_topic"])
    a, b = new_identity(), new_identity()
    tokens = {"GCM": "fcm-" + "Zq9" * 40, "APNS": "a1" * 32, "APNS_SANDBOX": "b2" * 32}
    dead, refused = "c3" * 32, "fcm-refused-" + "Xy7" * 30
    emulator.fault(service="apns", token=dead, status=410, reason="Unregistered")
    emulator.fault(service="fcm", token=refused, status=400, reason="INVALID_ARGUMENT")
    devs = {}
    for plat, tok in tokens.items():
        devs[tok] = cli("device", "register", POOL, a, "--platform", plat, "--token", tok).stdout.strip()
        cli("subscribe", POOL, a, "notes", devs[tok])
    lines = [json.dumps({"identityPoolId": POOL, "identityId": b, "platform": plat, "token": tok,
                         "datasets": ["notes"]}) for plat, tok in (("APNS", dead), ("GCM", refused))]
    cli("device", "import", "-", input="\n".join(lines) + "\n")
    return a, b, devs, [*tokens.values(), dead, refused]


def _publish(pipe, cli, a, b) -> None:
    cli("publish", POOL, a, "notes", "5")
    cli("publish", POOL, b, "notes", "6")
    script = ("import sys; from pushsync.client import publish_many; publish_many([{'identityPoolId': sys.argv[1], "
              "'identityId': sys.argv[2], 'datasetName': 'notes', 'syncCount': 7}])")
    subprocess.run([str(Path(PUSHSYNC).with_name("python")), "-c", script, POOL, a], env=pipe.env, check=True,
                   timeout=60)
    # a poison event, as a producer that skips the client's checks sends it
    pipe.send_raw("pushsync.ingest", [{"identityPoolId": POOL, "identityId": a, "datasetName": "bad/name",
                                       "syncCount": 1}], "events")


def _secrets(info: dict, tokens: list[str]) -> dict[str, list[str]]:
    account = json.loads(Path(info["service_account"]).read_text())
    return {"the PUSHSYNC_SECRET_KEY": [TEST_SECRET_KEY],
            "the APNs key": _pem_lines(Path(info["apns_key"]).read_text()),
            "the service account key": _pem_lines(account["private_key"]),
            "a device token": tokens}


def test_no_key_material_or_full_device_token_anywhere_after_a_full_run(tmp_path, emulator, well_behaved):
    server = RedisServer(tmp_path / "redis")
    (tmp_path / "pipe").mkdir()
    pipe = Pipeline(tmp_path / "pipe", emulator, f"sqlite:///{tmp_path}/store.db", broker_url=server.url)
    outputs: list[str] = []
    procs: list[subprocess.Popen] = []

    def cli(*args, **kw):
        r = pipe.cli(*args, **kw)
        outputs.extend([r.stdout, r.stderr])
        return r

    try:
        a, b, devs, tokens = _register(cli, emulator)
        procs, port_metrics, port_flower = _start_servers(pipe, tmp_path)
        pipe.start_worker("-c", "2")
        pipe.start_scheduler()
        _publish(pipe, cli, a, b)
        # 5 and 7 may be coalesced (one run can take both messages): the last count is what must arrive
        wait_for(lambda: sum(1 for r in emulator.pushes_for(a) if r["status"] == 200 and r["data"]["syncCount"] == "7")
                 >= 3, 40, what="count 7 on a's three devices")
        wait_for(lambda: len(pipe.dead_letters()) >= 2, 40, what="the dead letters")
        for args in (("dlq", "list"), ("dlq", "list", "--json"), ("pool", "show", POOL), ("stats", "--json")):
            cli(*args)
        pages = [_get(f"http://127.0.0.1:{port_metrics}/metrics")]
        pages += [_get(f"http://127.0.0.1:{port_flower}{path}", FLOWER_LOGIN)
                  for path in ("/api/workers", "/api/tasks", "/api/queues/length")]
        assert "pushsync_pushes_sent_total" in pages[0] and "pushsync.ingest" in pages[2], pages[:3]
    finally:
        pipe.stop_workers()
        for p in procs:
            p.terminate()
            p.wait(10)
    haystacks = {"redis": _redis_everything(server.url), "cli": "\n".join(outputs), "pages": "\n".join(pages),
                 "logs": "\n".join(p.read_text(errors="replace") for p in [*pipe.dir.glob("*.log"),
                                                                            *tmp_path.glob("*.log")]),
                 "store": _store_dump(f"{tmp_path}/store.db")}
    server.stop()
    assert "ingested" in haystacks["logs"] and "delivered" in haystacks["logs"]
    found = [(what, where) for what, needles in _secrets(emulator.info, tokens).items() for needle in needles
             for where, hay in haystacks.items() if needle in hay]
    assert not found, found
    # the haystacks are the real thing: the run's ids and figures are in them
    assert devs[tokens[0]] in haystacks["store"] and a in haystacks["redis"] + haystacks["pages"]
    assert "INVALID_ARGUMENT" in haystacks["cli"]
