"""monitoring/: the alert rules pass promtool's checks and unit tests, every metric the rules and
the dashboard name is one `pushsync metrics` exports, and a real Prometheus scrapes the exporter
and loads the rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from worker.plan import IngestResult

from .conftest import PUSHSYNC, ROOT, TEST_SECRET_KEY
from .e2e.harness import RedisServer, free_port, wait_for

MON = ROOT / "monitoring"
RULES = yaml.safe_load((MON / "alerts.yml").read_text())
DASHBOARD = json.loads((MON / "grafana" / "dashboards" / "pushsync.json").read_text())


def _promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is not installed (scripts/services.sh installs the Debian package prometheus)")
    return subprocess.run(["promtool", *args], cwd=MON, capture_output=True, text=True, timeout=60)


def _expressions() -> list[str]:
    rules = [r["expr"] for g in RULES["groups"] for r in g["rules"]]
    targets = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    return rules + targets


def test_alert_rules_pass_promtool_check_and_unit_tests():
    for args in (("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml"),
                 ("check", "config", "prometheus.yml")):
        r = _promtool(*args)
        assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", (MON / "alerts_test.yml").read_text()))
    assert tested == {r["alert"] for g in RULES["groups"] for r in g["rules"]}  # every rule has a unit test


@pytest.fixture
def exporter(tmp_path):
    """`pushsync metrics` on a redis-server and a store of the test's own."""
    server = RedisServer(tmp_path / "redis")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}
    env.update({"PUSHSYNC_BROKER_URL": server.url, "PUSHSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
                "PUSHSYNC_SECRET_KEY": TEST_SECRET_KEY})
    subprocess.run([PUSHSYNC, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen([PUSHSYNC, "metrics", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: _get(url) is not None, 30, 0.2, "pushsync metrics")
    yield url, port
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    server.stop()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read().decode()
    except OSError:
        return None


def test_every_metric_the_rules_and_the_dashboard_name_is_exported(exporter):
    url, _ = exporter
    exported = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", _get(url), re.M):
        exported |= {name} | ({f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else set())
    named = {n for e in _expressions() for n in re.findall(r"\b(pushsync_[a-z_]+)", e)}
    assert named and named <= exported, sorted(named - exported)
    # the outcomes the rules and panels filter on are ones ingest reports
    outcomes = {o for e in _expressions() for o in re.findall(r'outcome="(\w+)"', e)}
    assert outcomes and outcomes <= set(IngestResult.__dataclass_fields__), outcomes


def test_prometheus_scrapes_the_exporter_and_loads_the_rules(exporter, tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (scripts/services.sh installs the Debian package)")
    _, metrics_port = exporter
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    config["rule_files"] = [str(MON / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def up() -> bool:
            body = _get(f"{api}/query?query=up")
            result = json.loads(body)["data"]["result"] if body else []
            return bool(result) and result[0]["value"][1] == "1"
        wait_for(up, 60, 0.5, "Prometheus to scrape pushsync metrics")
        groups = json.loads(_get(f"{api}/rules"))["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {r["alert"] for g in RULES["groups"]
                                                                   for r in g["rules"]}
        assert all(r["health"] != "err" for g in groups for r in g["rules"])
        body = json.loads(_get(f"{api}/query?query=pushsync_workers_alive"))
        assert body["data"]["result"][0]["value"][1] == "0"  # no worker runs here: the gauge says so
        wait_for(lambda: "PushsyncNoWorkers" in (_get(f"{api}/alerts") or ""), 20, 0.5,
                 "the no-worker alert to be pending")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_monitoring_files_are_the_ones_compose_mounts():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = [v.split(":")[0] for name in ("prometheus", "grafana") for v in compose[name]["volumes"]
              if v.startswith("./")]
    for m in mounts:
        assert (ROOT / m).exists(), m
    assert compose["prometheus"]["profiles"] == ["monitoring"] == compose["grafana"]["profiles"]
    assert Path(MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").exists()
    assert "metrics:9464" in (MON / "prometheus.yml").read_text()
