"""docker-compose.yml: its promises, and every pushsync service's command run here, outside
containers, against the local services (no Docker engine runs on this machine)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from emulators.options import pushsync_env

from .conftest import ROOT, TEST_SECRET_KEY
from .e2e.harness import wait_for

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OURS = [name for name, svc in SERVICES.items() if svc.get("build") == "."]
BROKER_URL = "redis://127.0.0.1:6379/5"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compose_file_is_valid_for_docker_compose():
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (.ci/run installs the Debian package)")
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "REDIS_PASSWORD": "y", "FLOWER_BASIC_AUTH": "a:b",
           "PUSHSYNC_SECRET_KEY": TEST_SECRET_KEY}
    r = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # with every profile
    profiles = sorted({p for svc in SERVICES.values() for p in svc.get("profiles", [])})
    assert profiles == ["dev", "ha", "monitoring"]
    r = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"),
                        *[a for p in profiles for a in ("--profile", p)], "config", "--services"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and set(r.stdout.split()) == set(SERVICES), r.stderr
    # without the secrets it refuses to start rather than run with a default password
    for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "PUSHSYNC_SECRET_KEY"):
        bare = {k: v for k, v in env.items() if k != name}
        r = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], env=bare,
                           capture_output=True, text=True)
        assert r.returncode != 0 and f"set {name}" in r.stderr, (name, r.stderr)


def test_flower_metrics_and_the_api_are_published_on_loopback_only():
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert SERVICES["metrics"]["ports"] == ["127.0.0.1:9464:9464"]
    # the API too, unless the operator opts in with PUSHSYNC_API_BIND
    assert SERVICES["api"]["ports"] == ["${PUSHSYNC_API_BIND:-127.0.0.1}:8080:8080"]
    assert SERVICES["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert SERVICES["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    published = [name for name, svc in SERVICES.items() if svc.get("ports")]
    assert sorted(published) == ["api", "flower", "grafana", "metrics", "prometheus"]
    assert SERVICES["flower"]["command"][0] == "flower"  # `pushsync flower`: the login is checked first
    assert SERVICES["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def _env_example() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name] = value
    return out


def test_services_refuse_to_start_with_the_example_secrets(tmp_path):
    example = _env_example()
    assert set(example) == {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "PUSHSYNC_SECRET_KEY"}
    here = Here(tmp_path)
    # compose's own URLs, with the example's values in them
    env = {k: v for k, v in here.env.items() if not k.startswith("PUSHSYNC_")}
    base = SERVICES["worker"]["environment"]
    for name, value in example.items():
        env[name] = value
    for name in ("PUSHSYNC_DATABASE_URL", "PUSHSYNC_BROKER_PASSWORD", "PUSHSYNC_SECRET_KEY"):
        env[name] = re.sub(r"\$\{([A-Z_]+)[^}]*\}", lambda m: env[m.group(1)], base[name])
    env["PUSHSYNC_BROKER_URL"] = BROKER_URL
    for service in ("migrate", "worker", "scheduler", "metrics", "flower", "api"):
        r = subprocess.run(here.argv(service), env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (service, r.returncode, r.stdout, r.stderr)
        assert "placeholder" in r.stderr or "PUSHSYNC_SECRET_KEY" in r.stderr, (service, r.stderr)
    # with real secrets but a weak Flower password, Flower alone refuses
    good = {**here.env, "FLOWER_BASIC_AUTH": "ops:short"}
    r = subprocess.run(here.argv("flower"), env=good, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "shorter than 12" in r.stderr, r.stderr


def test_redis_keeps_what_it_is_given_and_secrets_come_from_the_environment():
    cmd = SERVICES["redis"]["command"]
    assert "--appendonly yes" in cmd and "--appendfsync everysec" in cmd and "--maxmemory-policy noeviction" in cmd
    assert "--requirepass ${REDIS_PASSWORD" in cmd
    assert any(v.startswith("postgres-data:") for v in SERVICES["postgres"]["volumes"])
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|AUTH)[\"']?\s*[:=]\s*[\"']?(?!\$\{)[A-Za-z0-9]", text.replace("# ", "")), \
        "a literal secret in the compose file"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER pushsync" in dockerfile and "slim" in dockerfile and "PASSWORD" not in dockerfile


def test_workers_scale_and_the_scheduler_does_not():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs neither
    assert SERVICES["scheduler"]["deploy"]["replicas"] == 1
    assert SERVICES["migrate"]["command"] == ["db", "upgrade"] and SERVICES["migrate"]["restart"] == "no"
    for name in ("worker", "scheduler", "flower", "metrics", "api"):
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert SERVICES[name]["restart"] == "unless-stopped"
    for name in ("redis", "postgres", "worker", "flower", "metrics", "api"):
        assert "healthcheck" in SERVICES[name], name
    assert set(SERVICES["emulator"]["profiles"]) == {"dev"} and set(SERVICES["demo-producer"]["profiles"]) == {"dev"}
    # the Redis password reaches every pushsync service, and no URL carries it
    env = SERVICES["worker"]["environment"]
    assert env["PUSHSYNC_BROKER_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    assert env["PUSHSYNC_BROKER_URL"] == "${PUSHSYNC_BROKER_URL:-redis://redis:6379/0}"


class Here:
    """Runs a compose service's command on this machine, as its container would."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.state = tmp / "state"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
        self.env.update({"PUSHSYNC_DATABASE_URL": f"sqlite:///{tmp}/compose.db", "PUSHSYNC_BROKER_URL": BROKER_URL,
                         "FLOWER_BASIC_AUTH": "ops:s3cret-but-long-enough",
                         "PUSHSYNC_SECRET_KEY": TEST_SECRET_KEY, "PATH": f"{BIN}:{os.environ['PATH']}"})
        self.ports: dict[str, int] = {}

    def argv(self, name: str) -> list[str]:
        svc = SERVICES[name]
        entry = svc.get("entrypoint", ["pushsync"])
        cmd = svc.get("command", ["worker"])
        # compose interpolates ${VAR...} first, then splits a string command
        cmd = shlex.split(self.interpolate(cmd)) if isinstance(cmd, str) else [self.interpolate(c) for c in cmd]
        out = []
        for arg in [*entry, *cmd]:
            arg = arg.replace("/state", str(self.state))
            # fixed container ports become free ports here; 0.0.0.0 becomes loopback
            m = re.fullmatch(r"(--[a-z-]*port=)?(\d{4})", arg)
            if m and int(m.group(2)) >= 1024:
                port = self.ports.setdefault(m.group(2), _free_port())
                arg = f"{m.group(1) or ''}{port}"
            # compose's service names do not resolve here: the emulator's public name is localhost
            if out and out[-1] == "--public-host":
                arg = "localhost"
            out.append("127.0.0.1" if arg == "0.0.0.0" else arg)
        if out[0] == "emulator":
            out.append("--quiet")
        return out

    def interpolate(self, text: str) -> str:
        def value(m: re.Match) -> str:
            name, op, rest = m.group(1), m.group(2), m.group(3) or ""
            if self.env.get(name):
                return self.env[name]
            if op == ":?":
                raise AssertionError(f"{name} is required: {rest}")
            return rest
        return re.sub(r"\$\{([A-Z_]+)(?:(:\?|:-)([^}]*))?\}", value, text)

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        return subprocess.Popen(self.argv(name), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.tmp, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()


def _http(url: str, auth: str | None = None) -> int | None:
    headers = {"Authorization": "Basic " + __import__("base64").b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _health_checks_pass(here: Here) -> None:
    """The worker's and the API's health checks, as compose runs them."""
    check = SERVICES["worker"]["healthcheck"]["test"]
    assert check[:1] == ["CMD"] and "--health" in check  # progress, not a ping (tests/e2e/test_health.py)
    r = subprocess.run(check[1:], env=here.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "healthy" in r.stdout, r.stdout + r.stderr
    # the API is ready when the store and Redis answer
    api_port = here.ports["8080"]
    wait_for(lambda: _http(f"http://127.0.0.1:{api_port}/healthz") == 200, 30, what="API")
    check = SERVICES["api"]["healthcheck"]["test"][1].replace("8080", str(api_port))
    r = subprocess.run(["sh", "-c", check], env=here.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr + here.log("api")


def test_every_service_command_is_a_real_entry_point(tmp_path):
    assert set(OURS) == {"migrate", "worker", "scheduler", "flower", "metrics", "api", "emulator", "demo-producer"}
    here = Here(tmp_path)
    redis.Redis.from_url(BROKER_URL).flushdb()
    r = subprocess.run(here.argv("migrate"), env=here.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "revision" in r.stdout, r.stderr
    procs = {}
    try:
        for name in ("emulator", "worker", "scheduler", "flower", "metrics", "api"):
            procs[name] = here.start(name)
        wait_for(lambda: (here.state / "emulator.json").exists(), 20, what="emulator")
        wait_for(lambda: "ready" in here.log("worker"), 40, what="worker ready")
        wait_for(lambda: "scheduler lock taken" in here.log("scheduler"), 30, what="scheduler")
        flower_port = here.ports["5555"]
        wait_for(lambda: _http(f"http://127.0.0.1:{flower_port}/api/workers") == 401, 30, what="Flower")
        assert _http(f"http://127.0.0.1:{flower_port}/api/workers", auth="ops:s3cret-but-long-enough") == 200
        metrics_port = here.ports["9464"]
        wait_for(lambda: _http(f"http://127.0.0.1:{metrics_port}/metrics") == 200, 20, what="metrics")
        _health_checks_pass(here)
        # the dev profile's producer, against the emulator: the pushes arrive
        info = json.loads((here.state / "emulator.json").read_text())
        here.env.update(pushsync_env(info))
        procs["worker"].send_signal(signal.SIGTERM)
        procs["worker"].wait(30)
        procs["worker"] = here.start("worker")  # again, now with the emulator's endpoints
        r = subprocess.run(here.argv("demo-producer"), env=here.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

        def pushes():
            with urllib.request.urlopen(info["control_url"] + "/requests", timeout=5) as resp:
                got = [q for q in json.loads(resp.read()) if q["status"] == 200]
            return got if len(got) >= 3 else None
        got = wait_for(pushes, 40, interval=0.5, what="the demo producer's pushes")
        assert {q["data"]["syncCount"] for q in got} >= {"3"}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.2)



def test_the_dev_override_points_every_service_at_the_emulator_it_runs():
    """`docker compose -f docker-compose.yml -f docker-compose.dev.yml --profile dev up` needs no hand edit."""
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "REDIS_PASSWORD": "y", "FLOWER_BASIC_AUTH": "a:b",
           "PUSHSYNC_SECRET_KEY": TEST_SECRET_KEY}
    r = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "-f",
                        str(ROOT / "docker-compose.dev.yml"), "--profile", "dev", "config"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    merged = yaml.safe_load(r.stdout)["services"]
    emulator = SERVICES["emulator"]["command"]
    port = {flag: emulator[emulator.index(flag) + 1] for flag in ("--fcm-port", "--apns-port", "--apns-sandbox-port")}
    want = {"PUSHSYNC_FCM_URL": f"https://emulator:{port['--fcm-port']}",
            "PUSHSYNC_APNS_PRODUCTION_URL": f"https://emulator:{port['--apns-port']}",
            "PUSHSYNC_APNS_SANDBOX_URL": f"https://emulator:{port['--apns-sandbox-port']}",
            "PUSHSYNC_CA_FILE": "/emulator/ca.pem"}
    for name in OURS:
        got = {k: merged[name]["environment"].get(k) for k in want}
        assert got == want, name
        # the secrets still come from the environment, not from the override
        assert merged[name]["environment"]["PUSHSYNC_SECRET_KEY"] == TEST_SECRET_KEY
    # the CA is where the emulator writes it: its state volume is what the others mount at /emulator
    assert "emulator-state:/state" in SERVICES["emulator"]["volumes"]
    assert "emulator-state:/emulator:ro" in COMPOSE["x-pushsync"]["volumes"]
    assert (ROOT / "emulators").is_dir() and "ca.pem" in (ROOT / "emulators" / "certs.py").read_text()
