"""An HTTP/2 TLS sink for benchmarks: nginx answering like APNs and FCM, far faster than pushsync.

    APNs  POST /3/device/<token>                   -> 200, the request's apns-id echoed
    FCM   POST /token                              -> 200, a static OAuth2 access token
          POST /v1/projects/<p>/messages:send      -> 200, {"name": "projects/<p>/messages/1"}

Every request is logged as "<epoch seconds with ms> <status> <uri>", so a run's pushes are
counted, and timed from the first accepted to the last, from nginx's own clock. The Python
emulators are for correctness (faults, JWT and OAuth checks); this is for throughput only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from emulators.certs import DEMO_KEY_ID, DEMO_TEAM_ID, DEMO_TOPIC, ensure_material

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONF = """
{user}
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
worker_shutdown_timeout 1s;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    log_format bench '$msec $status $request_uri';
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
    http2_max_concurrent_streams 1000;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {dir}/access.log bench buffer=512k flush=200ms;
        default_type application/json;
{locations}
    }}
}}
"""

# the sink's answers, or (stalled) every request held: passed to a listener that never answers
ANSWER = """
        location /3/device/ {{
            add_header apns-id $http_apns_id always;
            return 200;
        }}
        location = /token {{
            return 200 '{{"access_token":"bench-token","expires_in":3600,"token_type":"Bearer"}}';
        }}
        location ~ ^/v1/projects/([^/]+)/messages:send$ {{
            return 200 '{{"name":"projects/$1/messages/1"}}';
        }}"""
STALL = """
        location / {{
            proxy_pass http://127.0.0.1:{hole};
            proxy_connect_timeout 3600s;
            proxy_read_timeout 3600s;
        }}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """``with Sink(dir) as sink``: nginx on a free port; ``sink.info`` is shaped like the
    emulators' emulator.json, so ``emulators.options.pushsync_env`` points pushsync at it."""

    def __init__(self, directory: Path, workers: int = 1):
        self.dir = Path(directory)
        self.workers = workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Sink:
        self.dir.mkdir(parents=True, exist_ok=True)
        url = f"https://127.0.0.1:{self.port}"
        paths = ensure_material(self.dir / "keys", f"{url}/token")
        self._paths = paths
        conf = self._write_conf(stalled=False)
        self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.05)
        self.info = {"fcm_url": url, "apns_production_url": url, "apns_sandbox_url": url, "ca_file": paths["ca"],
                     "service_account": paths["service_account"], "apns_key": paths["apns_key"],
                     "apns_key_id": DEMO_KEY_ID, "apns_team_id": DEMO_TEAM_ID, "apns_topic": DEMO_TOPIC,
                     "url": url}
        (self.dir / "sink.json").write_text(json.dumps(self.info))
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def _write_conf(self, stalled: bool) -> Path:
        conf = self.dir / "nginx.conf"
        # run as root (the benchmark's case here), nginx's workers would drop to nobody, who
        # may not enter a private temporary folder to reopen the log
        user = "user root;" if os.geteuid() == 0 else ""
        locations = STALL.format(hole=self._hole_port()) if stalled else ANSWER.format()
        conf.write_text(CONF.format(user=user, workers=self.workers, dir=self.dir, port=self.port,
                                    cert=self._paths["cert"], key=self._paths["key"], locations=locations))
        return conf

    def _hole_port(self) -> int:
        """A listener that takes connections (the kernel does) and never reads or answers."""
        if getattr(self, "_hole", None) is None:
            self._hole = socket.socket()
            self._hole.bind(("127.0.0.1", 0))
            self._hole.listen(4096)
        return self._hole.getsockname()[1]

    def stall(self, on: bool) -> None:
        """From now on every request is held unanswered (``on``), or answered again. nginx reloads:
        its old workers end their connections (HTTP/2 GOAWAY) within a second, so clients come back
        on new ones, which the new setting serves."""
        self._write_conf(stalled=on)
        self.proc.send_signal(1)  # SIGHUP: reload
        time.sleep(1.5)

    @property
    def log(self) -> Path:
        return self.dir / "access.log"

    def reset(self) -> None:
        """Start a new access log (nginx reopens it on SIGUSR1)."""
        self.log.unlink(missing_ok=True)
        self.proc.send_signal(10)
        deadline = time.monotonic() + 5
        while not self.log.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def pushes(self) -> list[tuple[float, int, str]]:
        """(time, status, uri) of each push request (token requests left out)."""
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[2] != "/token":
                out.append((float(parts[0]), int(parts[1]), parts[2]))
        return out

    def wait_for(self, expected: int, timeout: float = 600.0, quiet_for: float = 0.0) -> list[tuple[float, int, str]]:
        """Poll the log until ``expected`` pushes are in it (and, with ``quiet_for``, no more come)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.pushes()
            if len(got) >= expected:
                if quiet_for:
                    time.sleep(quiet_for)
                    got = self.pushes()
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(got)} of {expected} pushes reached the sink in {timeout:.0f} s")
            time.sleep(0.1)
