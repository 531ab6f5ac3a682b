"""Producer processes for the end-to-end tests: a backend's own code, run as a process of its own."""

from __future__ import annotations

import json
import subprocess

from .harness import Pipeline


def start_producer(pipe: Pipeline, code: str, pool: str, identities, stderr=subprocess.PIPE) -> subprocess.Popen:
    """A producer process running ``code``, fed one event per identity (count 1 of "notes")."""
    import sys

    proc = subprocess.Popen([sys.executable, "-c", code], env=pipe.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    proc.stdin.write(json.dumps([{"identityPoolId": pool, "identityId": i, "datasetName": "notes", "syncCount": 1}
                                 for i in sorted(set(identities))]))
    proc.stdin.close()
    return proc
