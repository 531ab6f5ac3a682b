"""A real `pushsync api` (uvicorn) process for the API tests, and a small HTTP client for it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path

import httpx

from tests.conftest import PUSHSYNC
from tests.e2e.harness import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    def __init__(self, directory: Path, env: dict[str, str], *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"api-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PUSHSYNC, "api", "--port", str(self.port), *args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._up, 30, what="the API to answer /healthz")
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def call(self, method: str, path: str, body=None, cred: str | None = None, raw: bytes | None = None,
             headers: dict | None = None) -> httpx.Response:
        h = dict(headers or {})
        if cred is not None:
            h["Authorization"] = f"Bearer {cred}"
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if content is not None:
            h.setdefault("Content-Type", "application/json")
        return self.client.request(method, path, content=content, headers=h)

    def access_lines(self) -> list[dict]:
        self.log.flush()
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "method" in item:
                out.append(item)
        return out

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def paths(pool: str, identity: str, device: str = "", dataset: str = "notes") -> dict[str, str]:
    base = f"/identitypools/{pool}"
    return {
        "register": f"{base}/identity/{identity}/device",
        "subscribe": f"{base}/identities/{identity}/datasets/{dataset}/subscriptions/{device}",
        "subscribe_all": f"{base}/identities/{identity}/subscriptions/{device}",
        "configuration": f"{base}/configuration",
        "events": f"{base}/events",
    }


def error_type(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"__type", "message"}, body
    return body["__type"]
