"""A Redis Sentinel topology of a test's own: a master, a replica and three sentinels."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import redis

from .harness import free_port, wait_for


class SentinelCluster:
    """A master, a replica and three sentinels of the test's own (redis-server and redis-sentinel
    on free ports, each in its own directory), watching the master as ``mymaster`` with a quorum of
    2 and a 1 s down-after: a SIGKILLed master is replaced within a few seconds."""

    MASTER = "mymaster"

    def __init__(self, directory: Path, min_replicas_to_write: int = 0):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.ports = {"a": free_port(), "b": free_port()}
        extra = (["--min-replicas-to-write", str(min_replicas_to_write), "--min-replicas-max-lag", "5"]
                 if min_replicas_to_write else [])
        self.servers = {}
        for name, port in self.ports.items():
            d = directory / name
            d.mkdir()
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "",
                    "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", str(d / "redis.log"), *extra]
            if name == "b":
                args += ["--replicaof", "127.0.0.1", str(self.ports["a"])]
            self.servers[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # The replica syncs before any sentinel starts: a sentinel reads a replica's INFO every 10 s,
        # and one whose first read came before the sync waits another 10 s to see a good replica.
        wait_for(self._replica_synced, 30, 0.1, "the replica's first sync")
        self.sentinel_ports = [free_port() for _ in range(3)]
        for i, port in enumerate(self.sentinel_ports):
            conf = directory / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                            f"logfile {directory}/sentinel-{i}.log\n"
                            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.ports['a']} 2\n"
                            f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                            f"sentinel failover-timeout {self.MASTER} 5000\n")
            self.procs.append(subprocess.Popen(["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.STDOUT))
        # Up to 60 s: on a loaded machine (the full suite on two cores) 30 s was once too short.
        wait_for(self._ready, 60, 0.2, "the sentinels to see the replica and each other")

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[i], socket_timeout=1, socket_connect_timeout=1)

    def master_port(self) -> int | None:
        for i in range(3):
            try:
                host, port = self.sentinel(i).sentinel_get_master_addr_by_name(self.MASTER)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None

    def _replica_synced(self) -> bool:
        try:
            info = redis.Redis(port=self.ports["b"], socket_timeout=1).info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up"

    def _ready(self) -> bool:
        """Every sentinel knows the other two and sees the replica in sync (its own view, from the
        replica's INFO: a sentinel whose last INFO predates the first sync finds no good replica
        to promote when the master dies a moment later)."""
        try:
            link = redis.Redis(port=self.ports["b"]).info("replication").get("master_link_status")
            for i in range(3):
                s = self.sentinel(i)
                if len(s.sentinel_sentinels(self.MASTER)) < 2:
                    return False
                if not any(("is_slave" in r or "slave" in str(r.get("flags")))
                           and str(r.get("master-link-status")) == "ok" for r in s.sentinel_slaves(self.MASTER)):
                    return False
        except redis.RedisError:
            return False
        return link == "up"

    def kill_master(self) -> str:
        """SIGKILL the current master (a crash: no flush, connections cut); returns its name."""
        port = self.master_port()
        name = next(n for n, p in self.ports.items() if p == port)
        self.servers[name].send_signal(signal.SIGKILL)
        self.servers[name].wait(10)
        return name

    def stop(self) -> None:
        for proc in [*self.procs, *self.servers.values()]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.procs, *self.servers.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
