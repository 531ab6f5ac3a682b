"""compose's `ha` profile: its redis, redis-replica and sentinel commands, run here outside
containers, fail over when the master is SIGKILLed."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess

import redis

from .e2e.harness import free_port, wait_for
from .test_compose import SERVICES


def test_the_ha_profile_fails_over_when_its_commands_run_here(tmp_path):
    """compose's redis, redis-replica and sentinel-1..3 commands, run here (each service's own port
    instead of 6379/26379, 127.0.0.1 for the service names, a directory for /data), with the Redis
    password: the sentinels find the replica, and when the master is SIGKILLed they promote it and
    a pushsync client that knows only the sentinels writes to the new master."""
    from pushsync.broker import redis_client
    from pushsync.settings import load_settings

    password = "ha-test-password-1"
    ports = {name: free_port() for name in ("redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")}

    def here(name: str, text: str) -> str:
        text = text.replace("${REDIS_PASSWORD:?set REDIS_PASSWORD}", password).replace("$$REDIS_PASSWORD", password)
        text = text.replace("redis 6379", f"127.0.0.1 {ports['redis']}").replace("port 26379", f"port {ports[name]}")
        text = re.sub(r"--replica-announce-ip \S+", "--replica-announce-ip 127.0.0.1", text)
        return text.replace("/data", str(tmp_path / name))

    procs = {}
    try:
        _start_topology(procs, ports, here, password, tmp_path)
        url = ";".join(f"sentinel://127.0.0.1:{ports[f'sentinel-{i}']}" for i in (1, 2, 3))
        settings = load_settings({"PUSHSYNC_BROKER_URL": url, "PUSHSYNC_BROKER_PASSWORD": password})
        sentinel = redis.Redis(port=ports["sentinel-1"], socket_timeout=1)
        wait_for(lambda: len(sentinel.sentinel_slaves("mymaster")) == 1
                 and len(sentinel.sentinel_sentinels("mymaster")) == 2, 30, 0.3, "the sentinels to find all")
        wait_for(lambda: redis_client(settings).set("before", "1"), 10, 0.2, "a write through the sentinels")
        wait_for(lambda: redis.Redis(port=ports["redis-replica"], password=password).get("before") == b"1", 10, 0.2,
                 "the replica to have it")
        procs["redis"].send_signal(signal.SIGKILL)
        procs["redis"].wait(10)
        # compose's down-after is 5 s: promotion within about 10 s
        wait_for(lambda: sentinel.sentinel_get_master_addr_by_name("mymaster")[1] == ports["redis-replica"],
                 40, 0.5, "the replica to be promoted")
        client = redis_client(settings)
        wait_for(lambda: client.set("after", "1"), 20, 0.5, "a write to the new master")
        assert client.get("before") == b"1"
        assert redis.Redis(port=ports["redis-replica"], password=password).get("after") == b"1"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _start_topology(procs: dict, ports: dict, here, password: str, tmp_path) -> None:
    for name in ("redis", "redis-replica"):
        (tmp_path / name).mkdir()
        argv = shlex.split(here(name, SERVICES[name]["command"]))
        procs[name] = subprocess.Popen([*argv, "--port", str(ports[name]), "--bind", "127.0.0.1",
                                        "--dir", str(tmp_path / name)], stdout=subprocess.DEVNULL)
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        (tmp_path / name).mkdir()
        svc = SERVICES[name]
        assert svc["profiles"] == ["ha"] and svc["entrypoint"] == ["sh", "-c"]
        procs[name] = subprocess.Popen(["sh", "-c", here(name, svc["command"][0])], stdout=subprocess.DEVNULL,
                                       env={**os.environ, "REDIS_PASSWORD": password})
