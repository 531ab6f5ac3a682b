"""The API examples of the docs (docs/http-api.md, "Examples"), run as written (bash and curl)
against a real server, a worker and the emulators: each command succeeds, the push arrives, and the
last one shows Cognito's error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

from tests.conftest import POOL, ROOT
from tests.e2e.harness import new_identity, wait_for

from .conftest import identity_token, make_key


def _examples() -> str:
    text = (ROOT / "docs" / "http-api.md").read_text()
    block = re.search(r"<!-- api-examples:start -->\n```sh\n(.*?)```\n<!-- api-examples:end -->", text, re.S)
    assert block, "docs/http-api.md lost its API examples"
    return block.group(1)


def test_the_docs_curl_examples_work_and_the_push_arrives(api, pipe, secrets, emulator):
    assert shutil.which("curl"), "curl is needed (Debian package curl)"
    pipe.start_worker("-c", "1")
    try:
        ident = new_identity()
        env = {**os.environ, "API": api.url, "POOL": POOL, "IDENTITY": ident,
               "DEVICE_KEY": make_key(pipe, POOL, "device"), "PRODUCER_KEY": make_key(pipe, POOL, "producer"),
               "ADMIN_KEY": make_key(pipe, POOL, "admin"), "TOKEN": identity_token(secrets, identity=ident)}
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", _examples()], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        answers = [json.loads(line) for line in r.stdout.replace("}{", "}\n{").splitlines() if line.strip()]
        assert answers[:3] == [{}, {}, answers[2]] and "DeviceId" in answers[2]
        assert answers[3] == {"accepted": 1, "rejected": []}
        assert answers[4]["IdentityPoolId"] == POOL and "PRIVATE" not in r.stdout
        assert answers[5]["__type"] == "NotAuthorizedException"
        pushes = wait_for(lambda: emulator.pushes_for(ident), 60, what="the docs example's push")
        assert [(p["token"], p["body"]["data"]["syncCount"]) for p in pushes] == [("fcm-token-from-the-app", "42")]
    finally:
        pipe.stop_workers()
