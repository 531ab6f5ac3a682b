"""Redis over TLS with a password (`rediss://`): the producer, a worker, the scheduler's retry
pump and the CLI all speak it, and the pushes arrive. The server is a redis-server of the
test's own with a certificate from a CA of the test's own, verified by every client."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import redis

from emulators.certs import ensure_material

from ..conftest import POOL
from .harness import Pipeline, new_identity, wait_for

PASSWORD = "tls-test-password-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tls_redis(tmp_path):
    material = ensure_material(tmp_path / "certs", "https://localhost:1/token")
    port = _free_port()
    (tmp_path / "redis").mkdir()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", material["cert"], "--tls-key-file", material["key"],
         "--tls-ca-cert-file", material["ca"], "--tls-auth-clients", "no", "--requirepass", PASSWORD,
         "--dir", str(tmp_path / "redis"), "--save", "", "--logfile", str(tmp_path / "redis" / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={material['ca']}"

    def up():
        try:
            return redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False
    wait_for(up, 10, what="redis-server with TLS")
    yield url, material, port
    proc.terminate()
    proc.wait(10)


def test_a_rediss_broker_with_a_password_carries_events_to_the_devices(tls_redis, tmp_path, emulator, well_behaved):
    url, material, port = tls_redis
    # the same server refuses a client that does not verify it against the CA, and one without the password
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_cert_reqs=required",
                             socket_connect_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(PASSWORD, "wrong-password-here"), socket_connect_timeout=2).ping()
    (tmp_path / "pipe").mkdir()
    pipe = Pipeline(tmp_path / "pipe", emulator, f"sqlite:///{tmp_path}/store.db", broker_url=url)
    try:
        pipe.create_pool(POOL)
        ident = new_identity()
        pipe.device(POOL, ident, "GCM", "fcm-over-tls")
        pipe.device(POOL, ident, "APNS", "abcdef0123")
        pipe.start_worker("-c", "1")
        pipe.start_scheduler()
        pipe.cli("publish", POOL, ident, "notes", "7")
        got = wait_for(lambda: (lambda p: p if len(p) >= 2 else None)(
            [r for r in emulator.pushes_for(ident) if r["status"] == 200]), 40, what="two pushes over rediss")
        assert {r["data"]["syncCount"] for r in got} == {"7"}
        # a retry is published on the same TLS connection: FCM answers 503 once
        emulator.fault(service="fcm", status=503, count=1)
        pipe.cli("publish", POOL, ident, "notes", "8")
        wait_for(lambda: any(r["status"] == 200 and r["data"]["syncCount"] == "8" and r["service"] == "fcm"
                             for r in emulator.pushes_for(ident)), 60, what="the retried FCM push")
        # the counters the worker keeps in the same Redis, read back by the CLI over TLS
        stats = json.loads(pipe.cli("stats", "--json").stdout)
        assert sum(stats["sent"].values()) >= 3 and stats["failed"], stats
    finally:
        pipe.stop_workers()
    assert Path(material["ca"]).exists()


@pytest.mark.parametrize("transport", ["curl", "aioapns"])
def test_a_ca_that_does_not_sign_the_apns_certificate_shows_as_such_in_stats_and_the_dead_letter(
        tmp_path, emulator, well_behaved, transport):
    """A worker whose PUSHSYNC_CA_FILE is not the CA of the APNs host's certificate: `stats`, the
    failure counter and the dead letter say the certificate was refused, on either transport (not
    "connection: MaxAttemptsExceeded" with the cause only in the log)."""
    other_ca = ensure_material(tmp_path / "other-ca", "https://localhost:1/token")["ca"]
    (tmp_path / "pipe").mkdir()
    pipe = Pipeline(tmp_path / "pipe", emulator, f"sqlite:///{tmp_path}/store.db", broker_db=13, extra_env={
        "PUSHSYNC_CA_FILE": other_ca, "PUSHSYNC_APNS_TRANSPORT": transport, "PUSHSYNC_MAX_ATTEMPTS": "1"})
    expected = "connection: TLS certificate verify failed: unable to get local issuer certificate"
    try:
        pipe.create_pool(POOL, fcm=False)
        ident = new_identity()
        pipe.device(POOL, ident, "APNS", "abcdef0123")
        pipe.start_worker("-c", "1")
        pipe.cli("publish", POOL, ident, "notes", "3")
        failed = wait_for(lambda: pipe.stats()["failed"].get("APNS"), 40, what="the refused APNs push counted")
        assert failed == {expected: 1}, failed
        assert f"({expected} 1)" in pipe.cli("stats").stdout
        letters = wait_for(pipe.dead_letters, 20, what="the push's dead letter")
        assert [d["reason"] for d in letters] == [f"retries exhausted: {expected}"], letters
        assert not emulator.pushes_for(ident)  # it never got past the handshake
    finally:
        pipe.stop_workers()
