"""`pushsync emulator` as a newcomer runs it: the same ports at each start in a --dir, a taken
port refused in one line, absolute paths in emulator.json, and an env file a shell (and compose)
loads. Real emulator processes on real ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from emulators.envfile import render
from emulators.options import pushsync_env
from emulators.ports import EmulatorError

from ..conftest import PUSHSYNC
from ..e2e.harness import free_port, wait_for
from .conftest import one_error_line

PORT_KEYS = ("fcm_url", "apns_production_url", "apns_sandbox_url", "control_url")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUSHSYNC_")}


class Running:
    """`pushsync emulator --dir DIR ...` until stop(); info: its emulator.json."""

    def __init__(self, directory: Path, *options: str):
        self.dir = directory
        self.log = directory.parent / f"{directory.name}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([PUSHSYNC, "emulator", "--dir", str(directory), "--quiet", *options],
                                         stdout=log, stderr=subprocess.STDOUT, env=_env())
        info = directory / "emulator.json"
        wait_for(lambda: info.exists() or self.proc.poll() is not None, 20, what="emulator start")
        assert self.proc.poll() is None, self.log.read_text()
        self.info = json.loads(info.read_text())

    def ports(self) -> dict[str, int]:
        return {k: int(self.info[k].rsplit(":", 1)[1]) for k in PORT_KEYS}

    def control_stats(self) -> dict:
        with urllib.request.urlopen(self.info["control_url"] + "/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def started():
    running: list[Running] = []

    def start(directory: Path, *options: str) -> Running:
        running.append(Running(directory, *options))
        return running[-1]
    yield start
    for emu in running:
        if emu.proc.poll() is None:
            emu.stop()


def _refused_start(directory: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([PUSHSYNC, "emulator", "--dir", str(directory), "--quiet", *options],
                          capture_output=True, text=True, timeout=30, env=_env())


def _held(port: int) -> socket.socket:
    """A listener of another process's kind on ``port`` (this test's own socket)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    return sock


def test_a_restart_in_the_same_dir_listens_on_the_same_ports(tmp_path, started):
    first = started(tmp_path / "emu")
    ports = first.ports()
    assert len(set(ports.values())) == 4
    kept = json.loads((tmp_path / "emu" / "ports.json").read_text())
    assert sorted(kept.values()) == sorted(ports.values())
    first.stop()
    again = started(tmp_path / "emu")
    assert again.ports() == ports
    assert again.info == first.info  # the same URLs, the same files
    assert "connections" in again.control_stats()  # and it answers there
    # a new free port for one service when asked, the others kept; the new one is kept from then on
    again.stop()
    moved = started(tmp_path / "emu", "--fcm-port", "0")
    assert moved.ports()["fcm_url"] != ports["fcm_url"]
    assert {k: v for k, v in moved.ports().items() if k != "fcm_url"} == {
        k: v for k, v in ports.items() if k != "fcm_url"}
    account = json.loads(Path(moved.info["service_account"]).read_text())
    assert account["token_uri"] == f"{moved.info['fcm_url']}/token"
    assert "FCM's token endpoint moved from" in moved.log.read_text()


def test_emulator_json_names_absolute_paths_that_exist(tmp_path, started, monkeypatch):
    monkeypatch.chdir(tmp_path)
    emu = started(Path("relative-dir"))
    for key in ("ca_file", "service_account", "apns_key", "dir", "pushes_log", "ports_file"):
        path = Path(emu.info[key])
        assert path.is_absolute() and path.exists(), (key, emu.info[key])
        assert path.is_relative_to(tmp_path / "relative-dir")


def test_a_kept_port_another_process_holds_is_refused_in_one_line(tmp_path, started):
    emu = started(tmp_path / "emu")
    apns = emu.ports()["apns_production_url"]
    emu.stop()
    holder = _held(apns)
    try:
        r = _refused_start(tmp_path / "emu")
        line = one_error_line(r, 1)
        assert f"port {apns} (APNs production)" in line and "--apns-port" in line and "--new-ports" in line, line
        assert not (tmp_path / "emu" / "emulator.json").exists()  # nothing says it is up
        # --new-ports takes other free ones, and keeps those
        fresh = started(tmp_path / "emu", "--new-ports")
        assert fresh.ports()["apns_production_url"] != apns
        assert json.loads((tmp_path / "emu" / "ports.json").read_text())["apns_production"] == \
            fresh.ports()["apns_production_url"]
    finally:
        holder.close()


def test_a_second_emulator_on_the_same_dir_is_refused_and_leaves_the_first_alone(tmp_path, started):
    first = started(tmp_path / "emu")
    r = _refused_start(tmp_path / "emu")
    assert "an emulator already running on this --dir?" in one_error_line(r, 1)
    assert json.loads((tmp_path / "emu" / "emulator.json").read_text()) == first.info
    assert "connections" in first.control_stats()


def test_an_explicit_port_that_is_taken_is_refused_in_one_line(tmp_path):
    port = free_port()
    holder = _held(port)
    try:
        r = _refused_start(tmp_path / "emu", "--control-port", str(port))
        line = one_error_line(r, 1)
        assert f"port {port} (control API, --control-port) is taken" in line, line
    finally:
        holder.close()


@pytest.mark.parametrize("value", ["abc", "70000", "-1"])
def test_a_port_that_is_not_a_port_is_bad_input(tmp_path, value):
    r = _refused_start(tmp_path / "emu", "--fcm-port", value)
    assert "not a port number" in one_error_line(r, 2)


def test_explicit_ports_are_used_and_kept(tmp_path, started):
    chosen = {"fcm_url": free_port(), "apns_production_url": free_port(), "apns_sandbox_url": free_port(),
              "control_url": free_port()}
    emu = started(tmp_path / "emu", "--fcm-port", str(chosen["fcm_url"]), "--apns-port",
                  str(chosen["apns_production_url"]), "--apns-sandbox-port", str(chosen["apns_sandbox_url"]),
                  "--control-port", str(chosen["control_url"]))
    assert emu.ports() == chosen
    emu.stop()
    assert started(tmp_path / "emu").ports() == chosen


def _loaded_by_bash(env_file: Path) -> dict[str, str]:
    script = f'set -a; . "{env_file}"; set +a; env -0'
    out = subprocess.run(["bash", "-c", script], env=_env(), capture_output=True, text=True, check=True).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if item)
    return {k: v for k, v in pairs if k.startswith("PUSHSYNC_")}


@pytest.mark.parametrize("dir_name", ["emu", "my emulator (dev)"])
def test_the_env_file_loads_in_a_shell_with_absolute_paths_that_exist(tmp_path, started, monkeypatch, dir_name):
    from pushsync.settings import load_settings

    monkeypatch.chdir(tmp_path)
    emu = started(Path(dir_name), "--env-file", "worker.env")
    env_file = tmp_path / "worker.env"
    assert emu.info["env_file"] == str(env_file)
    text = env_file.read_text()
    assert text.startswith("# written by `pushsync emulator --dir ")
    assert f"pushsync pool create POOL_ID --fcm-service-account '{tmp_path / dir_name}" in text \
        or f"--fcm-service-account {tmp_path / dir_name}/service-account.json" in text
    loaded = _loaded_by_bash(env_file)
    assert loaded == pushsync_env(emu.info)
    assert Path(loaded["PUSHSYNC_CA_FILE"]).is_absolute() and Path(loaded["PUSHSYNC_CA_FILE"]).is_file()
    settings = load_settings({**loaded, "PUSHSYNC_SECRET_KEY": os.environ["PUSHSYNC_SECRET_KEY"]})
    assert settings.fcm_url == emu.info["fcm_url"] and settings.ca_file == loaded["PUSHSYNC_CA_FILE"]
    # compose's env_file: KEY=VALUE lines, comments on lines of their own, no `export`
    for line in text.splitlines():
        assert line.startswith("#") or (line.split("=", 1)[0] in loaded and "export" not in line), line


def test_an_env_file_value_that_cannot_be_quoted_is_refused():
    info = {"dir": "/x", "fcm_url": "https://127.0.0.1:1", "apns_production_url": "https://127.0.0.1:2",
            "apns_sandbox_url": "https://127.0.0.1:3", "ca_file": "/tmp/it's/ca.pem",
            "service_account": "/x/sa.json", "apns_key": "/x/k.p8", "apns_key_id": "K", "apns_team_id": "T",
            "apns_topic": "t"}
    with pytest.raises(EmulatorError, match="PUSHSYNC_CA_FILE"):
        render(info)
    assert "PUSHSYNC_CA_FILE='/tmp/its dir/ca.pem'" in render({**info, "ca_file": "/tmp/its dir/ca.pem"})


def test_an_env_file_the_emulator_cannot_write_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    r = _refused_start(tmp_path / "emu", "--env-file", str(tmp_path / "file" / "worker.env"))
    assert "cannot write the env file" in one_error_line(r, 1)


def test_one_port_for_two_services_is_refused_before_listening(tmp_path, started):
    emu = started(tmp_path / "emu")
    fcm = emu.ports()["fcm_url"]
    emu.stop()
    # the kept FCM port asked for APNs too
    r = _refused_start(tmp_path / "emu", "--apns-port", str(fcm))
    line = one_error_line(r, 1)
    assert f"port {fcm} is asked for both FCM (--fcm-port) and APNs production (--apns-port)" in line, line
