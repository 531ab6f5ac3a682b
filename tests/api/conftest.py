"""One store, broker database 3, emulators and a `pushsync api` for the whole package (its tests
use identities of their own); keys and tokens made through the command line, as an operator
makes them."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import IDENT, POOL, POOL2
from tests.e2e.harness import Emulator, Pipeline

from .harness import ApiServer

BROKER_DB = 3


@pytest.fixture(scope="package")
def emulator(tmp_path_factory):
    emu = Emulator(tmp_path_factory.mktemp("emulator"))
    yield emu
    emu.stop()


@pytest.fixture(scope="package")
def pipe(tmp_path_factory, emulator):
    directory = tmp_path_factory.mktemp("api")
    p = Pipeline(directory, emulator, f"sqlite:///{directory}/store.db", broker_db=BROKER_DB,
                 extra_env={"PUSHSYNC_API_KEY_CACHE": "0", "PUSHSYNC_API_KEY_RATE": "100000",
                            "PUSHSYNC_API_IDENTITY_RATE": "100000"})
    p.create_pool(POOL)
    p.create_pool(POOL2)
    yield p
    p.stop_workers()
    redis.Redis.from_url(p.broker_url).flushdb()


@pytest.fixture(scope="package")
def api(pipe):
    server = ApiServer(pipe.dir, pipe.env)
    yield server
    server.stop()


def make_key(pipe: Pipeline, pool: str, scope: str) -> str:
    r = pipe.cli("apikey", "create", pool, "--scope", scope)
    return r.stdout.strip()


@pytest.fixture(scope="package")
def keys(pipe):
    """device, producer, admin and all-scope keys of POOL, and an all-scope key of POOL2."""
    out = {s: make_key(pipe, POOL, s) for s in ("device", "producer", "admin")}
    out["all"] = make_key(pipe, POOL, "device,producer,admin")
    out["other_pool"] = make_key(pipe, POOL2, "device,producer,admin")
    return out


@pytest.fixture(scope="package")
def secrets(pipe):
    return {pool: pipe.cli("token-secret", pool).stdout.strip() for pool in (POOL, POOL2)}


def identity_token(secrets: dict, pool: str = POOL, identity: str = IDENT, ttl: float = 600, **kw) -> str:
    from pushsync.tokens import sign_identity_token

    return sign_identity_token(secrets[pool], pool, identity, ttl, **kw)
