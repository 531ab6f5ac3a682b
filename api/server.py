"""``pushsync api``: uvicorn serving ``api.app``; logs are JSON lines on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time


def iso_time(created: float) -> str:
    """The workers' time format (UTC, milliseconds), so one deployment's logs sort and read alike."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


class JsonLines(logging.Formatter):
    """Access lines are already JSON; other records become one JSON object each."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "pushsync.api.access":
            return record.getMessage()
        out = {"time": iso_time(record.created), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def log_setup() -> None:
    """Once per process (uvicorn's worker processes call it through ``create_app``)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonLines) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True


MAX_CONNECTIONS = 4096


def serve(host: str, port: int, workers: int = 1) -> int:
    import uvicorn

    log_setup()
    # uvicorn's own access log would be a second, plain-text line per request: ours is JSON
    from api.protocol import DeadlineProtocol

    # past MAX_CONNECTIONS open connections and requests, uvicorn answers 503 at once instead of
    # taking more than it can serve; each request's head has a deadline (api.protocol)
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, access_log=False,
                log_config=None, lifespan="off", timeout_graceful_shutdown=5, server_header=False,
                http=DeadlineProtocol, limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5)
    return 0
