"""Worker and scheduler logs: one JSON object per line, or readable text in a terminal.

PUSHSYNC_LOG_FORMAT=json|text|auto (auto, the default: text when stderr is a terminal).
Each record carries the task's name and id when it comes from inside a task, and the
``extra`` fields pushsync passes (pool, platform, event_ids). Device tokens are never
logged; a field named ``token`` is cut to a short prefix should one ever be passed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

EXTRA_FIELDS = ("pool", "platform", "event_ids", "token")


def _task_context() -> dict:
    try:
        from celery._state import get_current_task

        task = get_current_task()
    except Exception:
        return {}
    if task is None or task.request is None or task.request.id is None:
        return {}
    return {"task": task.name, "task_id": task.request.id}


def short_token(token: str) -> str:
    """Tokens are secrets: logs show this prefix only."""
    return token[:8] + "…"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        out.update(_task_context())
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = short_token(value) if name == "token" and isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = _task_context()
        bits = [f"{k}={getattr(record, k)}" for k in EXTRA_FIELDS[:2] if getattr(record, k, None)]
        if ctx:
            bits.insert(0, f"{ctx['task']}[{ctx['task_id'][:8]}]")
        return f"{base} ({' '.join(bits)})" if bits else base


def wants_json() -> bool:
    mode = os.environ.get("PUSHSYNC_LOG_FORMAT", "auto").lower()
    if mode == "json":
        return True
    if mode == "text":
        return False
    return not sys.stderr.isatty()


def configure(loglevel: int | str = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if wants_json()
                         else TextFormatter("[%(asctime)s %(levelname)s %(processName)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loglevel if isinstance(loglevel, int) else logging.getLevelName(str(loglevel).upper()))
    # one line per push attempt from aioapns is noise at INFO
    logging.getLogger("aioapns").setLevel(logging.WARNING)


def install() -> None:
    """Take over Celery's logging set-up (worker and beat) with the formatters above."""
    from celery.signals import setup_logging

    @setup_logging.connect(weak=False)
    def _setup(loglevel=logging.INFO, **_kwargs):
        configure(loglevel or logging.INFO)
