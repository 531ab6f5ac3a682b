"""The served OpenAPI document holds: schemathesis generates requests from it (valid and invalid)
against a real server and finds no 500 and no answer outside the document. Also /healthz, /readyz
and the access log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IDENT, POOL
from tests.e2e.harness import new_identity

from .conftest import identity_token, make_key
from .harness import ApiServer, paths

EXAMPLES = int(os.environ.get("PUSHSYNC_API_SCHEMA_EXAMPLES", "30"))

# The path's pool is one the key may use, so that the requests get past authentication and reach
# the handlers.
CONFIG = """
[parameters]
"path.pool" = "{pool}"
"""


@pytest.fixture(scope="module")
def fast(pipe):
    env = {**pipe.env, "PUSHSYNC_API_KEY_RATE": "100000"}
    server = ApiServer(pipe.dir, env)
    yield server
    server.stop()


def _schemathesis(server, key: str, directory: Path, *options: str) -> subprocess.CompletedProcess:
    st = str(Path(sys.executable).with_name("st"))
    return subprocess.run(
        [st, *options[:2], "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {key}",
         # positive_data_acceptance wants every request the schema allows to succeed; ours may still be
         # refused by rules a schema cannot say (a device id must exist, a key must be PEM): those are 4xx.
         # missing_required_header wants 401 for a request without Authorization (hard-coded for that
         # header); Cognito Sync, and so the contract, answer 403 NotAuthorizedException, which
         # test_auth.py checks.
         "--exclude-checks", "positive_data_acceptance,missing_required_header", "--max-examples", str(EXAMPLES),
         "--seed", "1", "--no-color", *options[2:]],
        capture_output=True, text=True, timeout=900, cwd=directory)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(fast, pipe, tmp_path):
    key = make_key(pipe, POOL, "device,producer,admin")
    # valid and invalid requests on any path: most are refused at authentication (another pool)
    anywhere = _schemathesis(fast, key, tmp_path)
    assert anywhere.returncode == 0, anywhere.stdout[-6000:] + anywhere.stderr[-2000:]
    assert "Tested: 11" in anywhere.stdout, anywhere.stdout[-3000:]
    # valid requests on the key's own pool, so that they reach the handlers and the store (the pool
    # pinned, invalid-data mode would count the pool it did not get to change as accepted)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(pool=POOL))
    pinned = _schemathesis(fast, key, tmp_path, "--config-file", str(config), "--mode", "positive")
    assert pinned.returncode == 0, pinned.stdout[-6000:] + pinned.stderr[-2000:]
    assert "Tested: 11" in pinned.stdout, pinned.stdout[-3000:]


def test_the_document_lists_every_operation_and_error_type(api):
    doc = api.call("GET", "/openapi.json").json()
    ops = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {"RegisterDevice", "SubscribeToDataset", "UnsubscribeFromDataset", "SubscribeToAllDatasets",
            "GetIdentityPoolConfiguration", "SetIdentityPoolConfiguration", "PublishEvents", "GetIdentityTrail",
            "GetDatasetTrail"} <= ops
    types = set(doc["components"]["schemas"]["Error"]["properties"]["__type"]["enum"])
    assert {"InvalidParameterException", "NotAuthorizedException", "ResourceNotFoundException",
            "InvalidConfigurationException", "LimitExceededException", "TooManyRequestsException",
            "InternalErrorException"} <= types


def test_health_and_readiness(api, tmp_path, pipe):
    assert api.call("GET", "/healthz").json() == {"status": "ok"}
    # answers and errors end in a newline, so `curl` leaves the prompt on a line of its own
    assert api.call("GET", "/healthz").content == b'{"status":"ok"}\n'
    assert api.call("GET", "/no/such/path").content.endswith(b'"}\n')
    assert api.call("GET", "/readyz").json() == {"status": "ready", "store": "ok", "redis": "ok"}
    env = {**pipe.env, "PUSHSYNC_BROKER_URL": "redis://127.0.0.1:1/0"}
    cut_off = ApiServer(tmp_path, env)
    try:
        assert cut_off.call("GET", "/healthz").status_code == 200
        r = cut_off.call("GET", "/readyz")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert "redis unreachable" in r.json()["message"] and "store" not in r.json()["message"]
    finally:
        cut_off.stop()


def test_access_log_is_json_lines_without_keys_or_tokens(api, keys, secrets):
    ident = new_identity()
    tok = identity_token(secrets, identity=ident)
    api.call("POST", paths(POOL, ident)["register"], {"Platform": "GCM", "Token": "fcm-log-secret-token"}, tok)
    api.call("GET", paths(POOL, IDENT)["configuration"], cred=keys["admin"])
    api.call("GET", paths(POOL, IDENT)["configuration"], cred="psk_0000000000000000_" + "x" * 43)
    lines = api.access_lines()
    text = api.log_path.read_text()
    for secret in (tok, keys["admin"], keys["admin"].split("_", 2)[2], "fcm-log-secret-token", "x" * 43):
        assert secret not in text
    mine = [line for line in lines if ident in line["path"]]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["caller"] == f"identity {ident}"
    admin_id = keys["admin"].split("_")[1]
    assert any(line["caller"] == f"key {admin_id}" for line in lines)
    assert all({"time", "method", "path", "status", "ms"} <= set(line) for line in lines)
    for raw in text.splitlines():
        record = json.loads(raw)  # every line of the log is JSON, its time written as the workers write theirs
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), raw
