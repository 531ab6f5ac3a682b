"""The API when what it stands on fails: PostgreSQL cut off behind a proxy (503, then back by
itself), a pool without credentials for events, methods and paths that do not exist."""

from __future__ import annotations

import time

from tests.conftest import IDENT, PG_URL, POOL, _prepare_pg
from tests.e2e.harness import Pipeline
from tests.e2e.test_store_outage import CuttableProxy

from .conftest import make_key
from .harness import ApiServer, error_type, paths

NOCREDS = "ap-south-1:77777777-0000-4000-8000-000000000000"


def test_the_store_cut_off_is_503_with_retry_after_and_the_api_recovers(tmp_path, emulator):
    _prepare_pg()
    proxy = CuttableProxy(5432)
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    pipe = Pipeline(tmp_path, emulator, url, broker_db=3, extra_env={"PUSHSYNC_API_KEY_CACHE": "0"})
    pipe.create_pool(POOL)
    key = make_key(pipe, POOL, "device")
    server = ApiServer(tmp_path, pipe.env)
    body = {"Platform": "GCM", "Token": "fcm-outage"}
    try:
        assert server.call("POST", paths(POOL, IDENT)["register"], body, key).status_code == 200
        proxy.set_cut(True)
        time.sleep(0.2)
        started = time.monotonic()
        r = server.call("POST", paths(POOL, IDENT)["register"], body, key)
        assert r.status_code == 503 and error_type(r) == "ServiceUnavailableException", r.text
        assert r.headers["Retry-After"] == "5" and time.monotonic() - started < 15
        assert server.call("GET", "/readyz").status_code == 503
        proxy.set_cut(False)
        again = server.call("POST", paths(POOL, IDENT)["register"], body, key)
        assert again.status_code == 200, again.text
        assert server.call("GET", "/readyz").status_code == 200
    finally:
        server.stop()
        proxy.close()


def test_events_for_a_pool_without_credentials_are_invalid_configuration(api, pipe):
    pipe.cli("pool", "create", NOCREDS)
    key = make_key(pipe, NOCREDS, "producer")
    r = api.call("POST", paths(NOCREDS, IDENT)["events"], {"identityId": IDENT, "datasetName": "n", "syncCount": 1},
                 key)
    assert r.status_code == 400 and error_type(r) == "InvalidConfigurationException"


def test_unknown_paths_and_methods_answer_in_cognito_shape(api, keys):
    missing = api.call("GET", "/identitypools/x/nothing-here")
    assert missing.status_code == 404 and error_type(missing) == "ResourceNotFoundException"
    wrong = api.call("PUT", paths(POOL, IDENT, "00000000-0000-4000-8000-000000000000")["subscribe"], cred=keys["all"])
    assert wrong.status_code == 405 and error_type(wrong) == "MethodNotAllowedException"
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) == {"POST", "DELETE"}
    head = api.call("HEAD", "/healthz")
    assert head.status_code == 200
